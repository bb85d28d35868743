"""
Several cameras on one ground grid, over DDS, checked against a projection of the test's own.

The expected grid of every camera is ray-cast here from the pose parameters and camera_info
(forward / left / up vectors of the camera body, a pinhole projection, the pixel under each
cell centre), not by semseg_ros.core.ground, and fused by the rule the node documents: every
camera whose newest frame is at most grid.max_age older than the newest frame, cell-wise
maximum, stamped with the newest frame.
"""

import math
import time

from conftest import claim_domain
from lifecycle_msgs.msg import State
from lifecycle_msgs.msg import Transition
from nav_msgs.msg import OccupancyGrid
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import GetParameters
from rcl_interfaces.srv import SetParameters
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.io.image import array_to_image
from sensor_msgs.msg import CameraInfo
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_node_features import call
from test_node_features import lifecycle
from test_node_features import service_client
from test_node_integration import Channels
from test_node_integration import diagnostics_status
from test_node_integration import Harness
from test_node_integration import start_node
from test_node_integration import stop_node
from test_node_integration import TIMEOUT
import yaml

WIDTH, HEIGHT, FOCAL = 160, 120, 100.0
CX, CY = WIDTH / 2, HEIGHT / 2
RESOLUTION, CELLS, ORIGIN, MAX_RANGE, MAX_AGE = 0.1, 120, -6.0, 5.5, 0.35
STEP_NS = 100_000_000  # 0.1 s between frame stamps
# x, y, z, roll, pitch, yaw: front looks ahead, left overlaps it (60 deg), rear looks back.
POSES = {
    'front': (0.3, 0.0, 1.2, 0.0, math.radians(15), 0.0),
    'left': (0.0, 0.25, 1.0, 0.05, math.radians(20), math.radians(60)),
    'rear': (-0.3, 0.0, 1.1, 0.0, math.radians(12), math.pi),
}
FIELDS = ('x', 'y', 'z', 'roll', 'pitch', 'yaw')


def write_model(folder):
    model = folder / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    classes = folder / 'rgb.yaml'
    classes.write_text(yaml.safe_dump({'name': 'rgb', 'classes': [
        {'id': 0, 'name': 'red', 'color': [200, 0, 0]},
        {'id': 1, 'name': 'green', 'color': [0, 200, 0], 'drivable': True},
        {'id': 2, 'name': 'blue', 'color': [0, 0, 200]}]}))
    return ['model.backend:=torchscript', f'model.weights:={model}', f'classes:={classes}']


def grid_params():
    return ['grid.enabled:=true', f'grid.resolution:={RESOLUTION}', f'grid.width:={CELLS}',
            f'grid.height:={CELLS}', f'grid.origin_x:={ORIGIN}', f'grid.origin_y:={ORIGIN}',
            f'grid.max_range:={MAX_RANGE}', f'grid.max_age:={MAX_AGE}']


def pose_params(names):
    return [f'camera_pose.{name}.{field}:={value!r}'
            for name in names for field, value in zip(FIELDS, POSES[name])]


def scene(camera_index, k):
    """Red (not drivable) above a row, green (drivable) below, one red block: unique per k."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    row = 70 + (7 * k + 11 * camera_index) % 35
    img[:row, :, 0] = 255
    img[row:, :, 1] = 255
    col = (23 * k + 40 * camera_index) % (WIDTH - 20)
    img[row + 5:, col:col + 20] = (255, 0, 0)
    return img


def camera_info(frame_id):
    info = CameraInfo(header=Header(frame_id=frame_id), width=WIDTH, height=HEIGHT,
                      distortion_model='plumb_bob')
    info.k = [FOCAL, 0.0, CX, 0.0, FOCAL, CY, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [FOCAL, 0.0, CX, 0.0, 0.0, FOCAL, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def ray_cast(pose, drivable):
    """Return the grid one camera sees: -1 unseen, 0 drivable, 100 not (own geometry)."""
    x0, y0, z0, roll, pitch, yaw = pose
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw),
                        -math.sin(pitch)])
    left0 = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up0 = np.cross(forward, left0)
    left = left0 * math.cos(roll) + up0 * math.sin(roll)  # turned about forward by roll
    up = up0 * math.cos(roll) - left0 * math.sin(roll)
    centres = ORIGIN + (np.arange(CELLS) + 0.5) * RESOLUTION
    gx, gy = np.meshgrid(centres, centres)  # rows run along y, columns along x
    d = np.stack([gx - x0, gy - y0, np.full_like(gx, -z0)], axis=-1)
    right_c, down_c, depth = -(d @ left), -(d @ up), d @ forward
    with np.errstate(divide='ignore', invalid='ignore'):
        u = FOCAL * right_c / depth + CX
        v = FOCAL * down_c / depth + CY
    seen = (depth > 1e-3) & (np.hypot(gx - x0, gy - y0) <= MAX_RANGE)
    seen &= (u >= -0.5) & (u < WIDTH - 0.5) & (v >= -0.5) & (v < HEIGHT - 0.5)
    out = np.full((CELLS, CELLS), -1, np.int8)
    cols = np.floor(u[seen] + 0.5).astype(int)
    rows = np.floor(v[seen] + 0.5).astype(int)
    out[seen] = np.where(drivable[rows, cols], 0, 100)
    return out


def expected(views):
    """Fuse {camera: (stamp ns, grid)}: fresh cameras only; return (grid, newest, names)."""
    newest = max(stamp for stamp, _ in views.values())
    fresh = sorted(n for n, (stamp, _) in views.items() if newest - stamp <= MAX_AGE * 1e9)
    return np.maximum.reduce([views[n][1] for n in fresh]), newest, fresh


def grid_cells(msg):
    return np.array(msg.data, np.int8).reshape(msg.info.height, msg.info.width)


def grid_stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class Rig:
    """Publishers of every camera, the grid subscription and the test's model of the views."""

    def __init__(self, harness, names):
        self.harness = harness
        self.names = names
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node = harness.node
        self.images = {n: node.create_publisher(Image, f'{n}/image', qos) for n in names}
        self.infos = {n: node.create_publisher(CameraInfo, f'{n}/camera_info', qos)
                      for n in names}
        self.grids = []
        node.create_subscription(OccupancyGrid, 'segmentation/drivable_grid', self.grids.append,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.views = {}  # what the node should hold: camera -> (stamp, grid)
        self.checked = 0
        self.known_cells = 0
        self.t0 = node.get_clock().now().nanoseconds

    def status(self, name, accept, timeout=TIMEOUT):
        return diagnostics_status(
            self.harness, lambda s: s.name.endswith(f': camera {name}') and accept(s), timeout)

    def grid_value(self, status):
        return next((kv.value for kv in status.values if kv.key == 'grid'), '')

    def send(self, name, k, stamp):
        header = Header(frame_id=f'{name}_optical')
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        img = scene(self.names.index(name), k)
        self.images[name].publish(array_to_image(img, 'rgb8', header))
        return img

    def step(self, name, k, stamp, expect_grid=True, wait=3.0):
        """Send one frame, wait for the grid it makes, check it; return the number of grids."""
        before = len(self.grids)
        for _ in range(5):
            img = self.send(name, k, stamp)
            end = time.monotonic() + wait
            while time.monotonic() < end and len(self.grids) == before:
                self.harness.executor.spin_once(timeout_sec=0.05)
            if len(self.grids) > before or not expect_grid:
                break
        if not expect_grid:
            assert len(self.grids) == before, 'a frame older than its camera view made a grid'
            return 0
        assert len(self.grids) > before, f'no grid after the frame of {name} ({k})'
        self.views[name] = (stamp, ray_cast(POSES[name], img[:, :, 1] == 255))
        want, newest, fresh = expected(self.views)
        for msg in self.grids[before:]:
            self.check(msg, want, newest, fresh)
        return len(self.grids) - before

    def check(self, msg, want, newest, fresh):
        got = grid_cells(msg)
        assert grid_stamp(msg) == newest, (grid_stamp(msg), newest)
        assert msg.header.frame_id == 'base_link'
        differ = int((got != want).sum())
        assert differ == 0, f'{differ} cells differ from the fusion of {fresh}'
        self.checked += 1
        self.known_cells += int((want != -1).sum())
        return fresh


def stamps_never_go_back(grids):
    stamps = [grid_stamp(g) for g in grids]
    return all(a <= b for a, b in zip(stamps, stamps[1:]))


@pytest.mark.parametrize('names', [('front', 'left'), ('front', 'left', 'rear')])
def test_every_grid_fuses_every_fresh_camera(tmp_path, names):
    domain = claim_domain()
    process = start_node(domain, *write_model(tmp_path), f'cameras:={list(names)}',
                         *grid_params(), *pose_params(names), 'stale_timeout:=60.0',
                         'diagnostics_period:=0.3')
    harness = Harness(domain, outputs=())
    rig = Rig(harness, names)
    try:
        # Configured with the grid; before camera_info every camera is WARN and says why.
        for name in names:
            status = rig.status(name, lambda s: 'camera_info' in s.message)
            assert status.level == b'\x01', status
            assert f'/{name}/camera_info' in status.message
        for _ in range(int(TIMEOUT / 0.3)):
            for name in names:
                rig.infos[name].publish(camera_info(f'{name}_optical'))
            harness.spin(0.3)
            ready = [rig.grid_value(rig.status(name, lambda s: True)) for name in names]
            if all(text.startswith('ready') for text in ready):
                break
        else:
            raise AssertionError(f'camera_info never taken: {ready}')
        stamp = rig.t0
        k = 0
        # Lockstep, one camera at a time: each grid holds every camera (all within max_age).
        for _ in range(3):
            for name in names:
                stamp += STEP_NS
                rig.step(name, k, stamp)
                k += 1
        assert expected(rig.views)[2] == sorted(names)
        # A frame older than the newest but newer than its camera's view joins the grid, which
        # keeps the newest stamp; one older than its own camera's view is not fused.
        late = stamp - STEP_NS // 2
        rig.step(names[0], k, late)
        k += 1
        rig.step(names[0], k, late - 10_000_000, expect_grid=False, wait=1.5)
        k += 1
        # The last camera stops: once its frame is older than max_age it drops out, and is
        # reported; its next frame brings it back.
        quiet = names[-1]
        for _ in range(5):
            for name in names[:-1]:
                stamp += STEP_NS
                rig.step(name, k, stamp)
                k += 1
        assert quiet not in expected(rig.views)[2]
        status = rig.status(quiet, lambda s: 'dropped from the fused grid' in s.message)
        assert status.level == b'\x01'
        stamp += STEP_NS
        rig.step(quiet, k, stamp)
        k += 1
        assert expected(rig.views)[2] == sorted(names)
        # All cameras at once (one batch or several): every grid is the fusion of each camera's
        # previous or new view, and the last one holds all new views.
        before = len(rig.grids)
        previous = dict(rig.views)
        new = {}
        stamp += STEP_NS
        for i, name in enumerate(names):
            img = rig.send(name, k + i, stamp + i * 1_000_000)
            new[name] = (stamp + i * 1_000_000, ray_cast(POSES[name], img[:, :, 1] == 255))
        last = stamp + (len(names) - 1) * 1_000_000
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and not any(grid_stamp(g) == last
                                                 for g in rig.grids[before:]):
            harness.spin(0.1)
        harness.spin(0.5)
        assert any(grid_stamp(g) == last for g in rig.grids[before:]), 'the batch made no grid'
        for msg in rig.grids[before:]:
            matches = 0
            for mask in range(1, 2 ** len(names)):
                views = {n: (new if mask >> i & 1 else previous)[n] for i, n in enumerate(names)}
                want, newest, fresh = expected(views)
                if grid_stamp(msg) == newest and (grid_cells(msg) == want).all():
                    rig.check(msg, want, newest, fresh)
                    matches += 1
                    break
            assert matches, 'a grid of the batch is no fusion of the latest camera views'
        rig.views = new
        assert (grid_cells(rig.grids[-1]) == expected(new)[0]).all()
        assert stamps_never_go_back(rig.grids)
    finally:
        harness.close()
        log = stop_node(process)
    assert process.returncode == 0 or process.returncode is not None
    assert f'camera {quiet}: dropped from the fused grid' in log, log
    assert f'camera {quiet}: back in the fused grid' in log, log
    print(f'{len(names)} cameras: {rig.checked} grids checked, {len(rig.grids)} received, '
          f'{rig.known_cells} seen cells matched ({rig.checked * CELLS * CELLS} cells in all)')


def param_value(value):
    if value is None:
        return ParameterValue(type=ParameterType.PARAMETER_NOT_SET)
    if isinstance(value, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    if isinstance(value, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)


def set_value(harness, name, value):
    client = service_client(harness, SetParameters, '/semseg/set_parameters')
    request = SetParameters.Request(parameters=[Parameter(name=name, value=param_value(value))])
    return call(harness, client, request).results[0]


def get_value(harness, name):
    client = service_client(harness, GetParameters, '/semseg/get_parameters')
    return call(harness, client, GetParameters.Request(names=[name])).values[0]


def test_pose_under_the_ground_and_bad_pose_values_are_refused(tmp_path):
    names = ('front', 'left')
    domain = claim_domain()
    process = start_node(domain, *write_model(tmp_path), f'cameras:={list(names)}',
                         *grid_params(), *[p for p in pose_params(names)
                                           if not p.startswith(('camera_pose.left.z:',
                                                                'camera_pose.front.y:'))],
                         'camera_pose.left.z:=-0.2', 'diagnostics_period:=0.3',
                         'stale_timeout:=5', 'camera_pose.front.y:=0')
    harness = Harness(domain, outputs=())
    try:
        status = diagnostics_status(harness, lambda s: 'configure failed' in s.message)
        assert status.level == b'\x02'
        assert 'camera_pose.left.z' in status.message and 'camera left' in status.message
        assert 'below the ground plane' in status.message
        assert process.poll() is None
        assert lifecycle(harness) == State.PRIMARY_STATE_UNCONFIGURED
        # Integers given at start-up to floating-point parameters are stored as doubles.
        for name in ('stale_timeout', 'camera_pose.front.y'):
            assert get_value(harness, name).type == ParameterType.PARAMETER_DOUBLE, name
        # Invalid values of a per-camera pose are refused with a reason naming it.
        for value, reason in (('abc', 'expected float'), (99999999, 'out'),
                              (99999.0, 'out'), (None, 'cannot be unset')):
            result = set_value(harness, 'camera_pose.left.x', value)
            assert not result.successful, value
            assert 'camera_pose.left.x' in result.reason and reason in result.reason, \
                result.reason
        assert get_value(harness, 'camera_pose.left.x').double_value == POSES['left'][0]
        # Integers are stored as doubles: a pose value and stale_timeout.
        assert set_value(harness, 'camera_pose.left.z', 1).successful
        value = get_value(harness, 'camera_pose.left.z')
        assert value.type == ParameterType.PARAMETER_DOUBLE and value.double_value == 1.0
        assert set_value(harness, 'stale_timeout', 3).successful
        value = get_value(harness, 'stale_timeout')
        assert value.type == ParameterType.PARAMETER_DOUBLE and value.double_value == 3.0
        # Fixed: configure and activate succeed with two cameras and the grid. The front
        # camera now looks 35 deg up: with its camera_info it sees no cell of the grid (WARN);
        # the left one has no camera_info (WARN).
        assert set_value(harness, 'camera_pose.front.pitch', -0.61).successful
        assert lifecycle(harness, Transition.TRANSITION_CONFIGURE) == State.PRIMARY_STATE_INACTIVE
        assert lifecycle(harness, Transition.TRANSITION_ACTIVATE) == State.PRIMARY_STATE_ACTIVE
        info = harness.node.create_publisher(CameraInfo, 'front/camera_info', 10)
        grids = []
        harness.node.create_subscription(OccupancyGrid, 'segmentation/drivable_grid',
                                         grids.append, 10)
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and 'sees no cell' not in ''.join(
                kv.value for a in harness.diagnostics[-3:] for s in a.status for kv in s.values):
            info.publish(camera_info('front_optical'))
            harness.spin(0.3)
        status = diagnostics_status(harness, lambda s: s.name.endswith('camera front')
                                    and 'sees no cell of the grid' in s.message)
        assert status.level == b'\x01', status
        status = diagnostics_status(harness, lambda s: s.name.endswith('camera left'))
        assert status.level == b'\x01' and 'waiting for camera_info' in status.message, status
        # Configured: a bad value is still named as bad (not only "takes effect on configure").
        for value, reason in (('abc', 'expected float'), (99999999, 'out'),
                              (None, 'cannot be unset'), (0.5, 'takes effect on configure')):
            result = set_value(harness, 'camera_pose.front.y', value)
            assert not result.successful, value
            assert 'camera_pose.front.y' in result.reason and reason in result.reason, \
                result.reason
        assert set_value(harness, 'stale_timeout', 4).successful
        value = get_value(harness, 'stale_timeout')
        assert value.type == ParameterType.PARAMETER_DOUBLE and value.double_value == 4.0
        assert process.poll() is None
    finally:
        harness.close()
        log = stop_node(process)
    assert 'camera_pose.left.z' in log and 'below the ground plane' in log, log

"""The node's ground grid over DDS: OccupancyGrid and obstacle cloud from camera_info + pose."""

import json
import math
import os

from conftest import claim_domain
from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
import numpy as np
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.core import ground
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.io import nav
from sensor_msgs.msg import CameraInfo
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from test_node_integration import Channels
from test_node_integration import diagnostics_status
from test_node_integration import diagnostics_values
from test_node_integration import Harness
from test_node_integration import start_node
from test_node_integration import stop_node
from test_node_integration import TIMEOUT
import yaml

WIDTH, HEIGHT = 160, 120


def scene():
    """Green (drivable) lower half, red upper half: the road ahead, walls beyond."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[:HEIGHT // 2 + 20, :, 0] = 255
    img[HEIGHT // 2 + 20:, :, 1] = 255
    return img


def camera_info(header):
    info = CameraInfo(header=header, width=WIDTH, height=HEIGHT, distortion_model='plumb_bob')
    f = 100.0
    info.k = [f, 0.0, WIDTH / 2, 0.0, f, HEIGHT / 2, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, WIDTH / 2, 0.0, 0.0, f, HEIGHT / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


POSE = ('camera_pose.z:=1.2', f'camera_pose.pitch:={math.radians(15)}')
# A stand-in for tf2_ros, which has no wheel here: lookups answer from a JSON file
# {"source -> target": [x, y, z, qx, qy, qz, qw]} and fail while a key is missing.
FAKE_TF2 = """
import json
import os

from geometry_msgs.msg import TransformStamped


class LookupException(Exception):
    pass


class Buffer:
    def lookup_transform(self, target, source, time):
        try:
            with open(os.environ['FAKE_TF_FILE']) as f:
                known = json.load(f)
        except (OSError, ValueError):
            known = {}
        key = source + ' -> ' + target
        if key not in known:
            raise LookupException(key + ' is not in the buffer')
        msg = TransformStamped()
        t = msg.transform
        (t.translation.x, t.translation.y, t.translation.z,
         t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w) = known[key]
        return msg


class TransformListener:
    def __init__(self, buffer, node):
        self.buffer = buffer
"""


def quaternion(rotation):
    """Return the unit quaternion of a proper 3x3 rotation matrix, as x, y, z, w."""
    r = np.asarray(rotation, float)
    w = math.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2.0
    x = math.copysign(math.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2.0,
                      r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2.0,
                      r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2.0,
                      r[1, 0] - r[0, 1])
    return x, y, z, w


def run_grid(tmp_path, pose=POSE, env=None, before_pose=None):
    """
    Run the node on the scene with camera_info; return (grid, clouds, free edge, log).

    before_pose: called once the grid waits for the camera's pose (TF), with the harness.
    """
    model = tmp_path / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    classes = tmp_path / 'rgb.yaml'
    classes.write_text(yaml.safe_dump({'name': 'rgb', 'classes': [
        {'id': 0, 'name': 'red', 'color': [200, 0, 0]},
        {'id': 1, 'name': 'green', 'color': [0, 200, 0], 'drivable': True},
        {'id': 2, 'name': 'blue', 'color': [0, 0, 200]}]}))
    domain = claim_domain()
    process = start_node(
        domain, 'model.backend:=torchscript', f'model.weights:={model}', f'classes:={classes}',
        'grid.enabled:=true', 'grid.resolution:=0.1', 'grid.width:=100', 'grid.height:=80',
        'grid.origin_x:=0.0', 'grid.origin_y:=-4.0', 'grid.max_range:=9.0', *pose,
        'diagnostics_period:=0.3', env=env)
    harness = Harness(domain, outputs=())
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    grids, clouds, free = [], [], []
    harness.node.create_subscription(OccupancyGrid, 'segmentation/drivable_grid',
                                     grids.append, qos)
    harness.node.create_subscription(PointCloud2, 'segmentation/obstacles', clouds.append, qos)
    harness.node.create_subscription(PointCloud2, 'segmentation/free_space', free.append, qos)
    info_pub = harness.node.create_publisher(CameraInfo, 'camera_info', qos)
    try:
        # Before camera_info: the grid says what it waits for, as a WARN of the camera, which
        # is named by its input topic.
        for _ in range(int(TIMEOUT / 0.5)):
            harness.send(scene(), 'rgb8')
            harness.spin(0.5)
            values = diagnostics_values(harness, 'grid', timeout=1.0) \
                if harness.diagnostics else {}
            if values.get('grid', '').startswith('waiting for camera_info'):
                break
        else:
            raise AssertionError('diagnostics never said the grid waits for camera_info')
        assert values['grid'] == 'waiting for camera_info on /camera_info'
        status = diagnostics_status(harness, lambda s: 'grid' in {kv.key for kv in s.values})
        assert status.name.endswith(': camera /image'), status.name
        assert status.level == DiagnosticStatus.WARN, status
        assert status.message == 'grid: waiting for camera_info on /camera_info', status.message
        assert not grids
        waited = before_pose is None
        for _ in range(int(TIMEOUT / 0.5)):
            header = Header(frame_id='camera_optical_frame',
                            stamp=harness.node.get_clock().now().to_msg())
            info_pub.publish(camera_info(header))
            harness.spin(0.2)
            sent = harness.send(scene(), 'rgb8', stamp=header.stamp,
                                frame_id='camera_optical_frame')
            harness.spin(0.5)
            if not waited and diagnostics_values(harness, 'grid')['grid'].startswith(
                    'waiting for the pose'):
                before_pose(harness)
                waited = True
            if waited and any(g.header.stamp == sent.stamp for g in grids) and clouds and free:
                break
        else:
            raise AssertionError('no grid came back after camera_info')
    finally:
        harness.close()
        log = stop_node(process)
    msg = next(g for g in grids if g.header.stamp == sent.stamp)
    return msg, clouds, free, log


def test_grid_and_obstacles(tmp_path):
    msg, clouds, free, log = run_grid(tmp_path)
    assert msg.header.frame_id == 'base_link'
    assert msg.info.width == 100 and msg.info.height == 80
    assert len(msg.data) == msg.info.width * msg.info.height
    assert msg.info.resolution == np.float32(0.1)
    assert msg.info.origin.position.x == 0.0 and msg.info.origin.position.y == -4.0
    cells = nav.msg_to_grid(msg)
    assert set(np.unique(cells)) <= {-1, 0, 100}
    # Looking 15 deg down from 1.2 m: the drivable band is the near ground, walls beyond it.
    free_rows, free_cols = np.nonzero(cells == 0)
    busy_rows, busy_cols = np.nonzero(cells == 100)
    assert free_cols.size and busy_cols.size, log
    assert free_cols.max() < busy_cols.max()
    assert (cells[:, :10] == -1).all()  # under and just ahead of the camera: not visible
    cloud = next(c for c in clouds)
    points = nav.cloud_to_points(cloud)
    assert cloud.header.frame_id == 'base_link' and len(points) > 0
    assert (points[:, 0] > 0).all()
    edge = nav.cloud_to_points(free[0])
    assert len(edge) > 0 and edge[:, 0].max() < points[:, 0].max()


def test_grid_from_tf_equals_the_grid_from_parameters(tmp_path):
    # camera_pose.source: tf looks the optical frame up in TF (here a stand-in for tf2_ros)
    # and must give the same grid as the same pose given as parameters.
    (tmp_path / 'tf2_ros').mkdir()
    (tmp_path / 'tf2_ros' / '__init__.py').write_text(FAKE_TF2)
    pose = ground.camera_pose(0.0, 0.0, 1.2, pitch=math.radians(15))
    tf_file = tmp_path / 'tf.json'
    env = {'FAKE_TF_FILE': str(tf_file),
           'PYTHONPATH': os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')])}
    seen = {}

    def publish_pose(harness):
        seen['waiting'] = diagnostics_values(harness, 'grid')['grid']
        tf_file.write_text(json.dumps({'camera_optical_frame -> base_link': [
            *pose[:3, 3].tolist(), *quaternion(pose[:3, :3])]}))

    (tmp_path / 'tf').mkdir()
    from_tf, _, _, log = run_grid(tmp_path / 'tf', ('camera_pose.source:=tf',), env,
                                  publish_pose)
    assert seen['waiting'] == 'waiting for the pose camera_optical_frame -> base_link (TF)'
    assert 'no transform camera_optical_frame -> base_link' in log
    (tmp_path / 'params').mkdir()
    from_params = run_grid(tmp_path / 'params')[0]
    cells = nav.msg_to_grid(from_tf)
    assert (cells == 0).any() and (cells == 100).any()
    assert np.array_equal(cells, nav.msg_to_grid(from_params))

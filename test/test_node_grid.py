"""The node's ground grid over DDS: OccupancyGrid and obstacle cloud from camera_info + pose."""

import math

from conftest import claim_domain
from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
import numpy as np
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
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


def test_grid_and_obstacles(tmp_path):
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
        'grid.origin_x:=0.0', 'grid.origin_y:=-4.0', 'grid.max_range:=9.0',
        'camera_pose.z:=1.2', f'camera_pose.pitch:={math.radians(15)}',
        'diagnostics_period:=0.3')
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
        for _ in range(int(TIMEOUT / 0.5)):
            header = Header(frame_id='camera_optical_frame',
                            stamp=harness.node.get_clock().now().to_msg())
            info_pub.publish(camera_info(header))
            harness.spin(0.2)
            sent = harness.send(scene(), 'rgb8', stamp=header.stamp,
                                frame_id='camera_optical_frame')
            harness.spin(0.5)
            if any(g.header.stamp == sent.stamp for g in grids) and clouds and free:
                break
        else:
            raise AssertionError('no grid came back after camera_info')
    finally:
        harness.close()
        log = stop_node(process)
    msg = next(g for g in grids if g.header.stamp == sent.stamp)
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

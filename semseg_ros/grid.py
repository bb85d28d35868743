"""
The node's ground grid: camera_info per camera, camera poses, the fused grid and obstacles.

Thin ROS wiring around `semseg_ros.core.ground`: each camera's lookup is rebuilt only when its
camera_info or pose changes; per frame the drivable masks are gathered into the grid, fused
across cameras, and published as nav_msgs/OccupancyGrid (`segmentation/drivable_grid`) and
sensor_msgs/PointCloud2 (`segmentation/obstacles`: non-drivable cells, for marking;
`segmentation/free_space`: the far edge of the drivable area, for clearing) with the image
stamp.
"""

import threading

from nav_msgs.msg import OccupancyGrid
from semseg_ros.core import ground
from semseg_ros.io import nav
from sensor_msgs.msg import CameraInfo
from sensor_msgs.msg import PointCloud2

GRID_TOPIC = 'segmentation/drivable_grid'
OBSTACLES_TOPIC = 'segmentation/obstacles'
FREE_SPACE_TOPIC = 'segmentation/free_space'


class GridError(RuntimeError):
    """The grid cannot be set up (e.g. TF poses without tf2_ros)."""


class CameraGround:
    """One camera's ground state: its model, pose and projector."""

    def __init__(self, pose):
        self.model = None
        self.pose = pose
        self.projector = None
        self.frame_id = ''


class GroundGrid:
    """Camera info subscriptions, poses and the fused grid of the node's cameras."""

    def __init__(self, node, settings, cameras, poses, qos):
        """Create the publishers; poses maps camera name -> 4x4 pose (parameters) or None."""
        self.node = node
        self.settings = settings
        self.spec = ground.GridSpec(**settings.grid)
        self.cameras = cameras
        self.state = {c.name: CameraGround(poses.get(c.name)) for c in cameras}
        self.lock = threading.Lock()
        self.grid_pub = node.create_lifecycle_publisher(OccupancyGrid, GRID_TOPIC, qos)
        self.cloud_pub = node.create_lifecycle_publisher(PointCloud2, OBSTACLES_TOPIC, qos)
        self.free_pub = node.create_lifecycle_publisher(PointCloud2, FREE_SPACE_TOPIC, qos)
        self.publishers = (self.grid_pub, self.cloud_pub, self.free_pub)
        self.subscriptions = []
        self.tf_buffer = None
        self.tf_timer = None
        self.tf_listener = None
        if settings.pose_source == 'tf':
            try:
                import tf2_ros
            except ImportError:
                raise GridError('camera_pose.source is tf but tf2_ros is not installed: '
                                'install ros-<distro>-tf2-ros or use '
                                'camera_pose.source: parameters') from None
            self.tf_buffer = tf2_ros.Buffer()
            self.tf_listener = tf2_ros.TransformListener(self.tf_buffer, node)
            self.tf_timer = node.create_timer(1.0, self._refresh_tf)

    def wanted(self):
        """Return True when the grid or one of the clouds has a subscriber."""
        return any(pub.get_subscription_count() > 0 for pub in self.publishers)

    def subscribe(self, qos):
        """Subscribe to each camera's camera_info."""
        for camera in self.cameras:
            self.subscriptions.append(self.node.create_subscription(
                CameraInfo, camera.prefix + 'camera_info',
                lambda msg, name=camera.name: self.on_camera_info(name, msg), qos))

    def unsubscribe(self):
        """Destroy the camera_info subscriptions."""
        for sub in self.subscriptions:
            self.node.destroy_subscription(sub)
        self.subscriptions = []

    def destroy(self):
        """Destroy subscriptions, publishers and the TF timer."""
        self.unsubscribe()
        for pub in self.publishers:
            self.node.destroy_lifecycle_publisher(pub)
        if self.tf_timer is not None:
            self.node.destroy_timer(self.tf_timer)

    def on_camera_info(self, name, msg):
        """Take a camera model; the lookup is rebuilt only if it changed."""
        try:
            model = ground.CameraModel.from_camera_info(msg)
        except ground.ProjectionError as exc:
            self.node.get_logger().error(f'camera {name}: unusable camera_info: {exc}',
                                         throttle_duration_sec=5.0)
            return
        with self.lock:
            state = self.state[name]
            state.model = model
            state.frame_id = msg.header.frame_id
            self._update(state)

    def _update(self, state):
        if state.model is None or state.pose is None:
            return
        if state.projector is None:
            state.projector = ground.GroundProjector(state.model, state.pose, self.spec)
        else:
            state.projector.update(camera=state.model, pose=state.pose)

    def _refresh_tf(self):
        """Look the camera poses up in TF (once a second, not per frame)."""
        for name, state in self.state.items():
            if not state.frame_id:
                continue
            try:
                t = self.tf_buffer.lookup_transform(
                    self.spec.frame_id, state.frame_id, rclpy_time_zero()).transform
            except Exception as exc:  # noqa: B902 - tf2 raises several lookup errors
                self.node.get_logger().warning(
                    f'camera {name}: no transform {state.frame_id} -> {self.spec.frame_id}: '
                    f'{exc}', throttle_duration_sec=5.0)
                continue
            pose = ground.pose_from_transform(
                (t.translation.x, t.translation.y, t.translation.z),
                (t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w))
            with self.lock:
                state.pose = pose
                self._update(state)

    def status(self):
        """Return a short text for diagnostics: ready, or what the grid waits for."""
        waiting = [name for name, s in self.state.items() if s.projector is None]
        if not waiting:
            return 'ok'
        what = []
        for name in waiting:
            state = self.state[name]
            if state.model is None:
                what.append(f'camera_info of {name}')
            elif state.pose is None:
                what.append(f'pose of {name} ({state.frame_id} -> {self.spec.frame_id})')
        return 'waiting for ' + ', '.join(what)

    def publish(self, items):
        """Project and fuse [(camera name, header, drivable mask)], publish grid and cloud."""
        grids = []
        latest = None
        with self.lock:
            for name, header, mask in items:
                projector = self.state[name].projector
                if projector is None:
                    continue
                grids.append(projector.project(mask))
                stamp = (header.stamp.sec, header.stamp.nanosec)
                if latest is None or stamp > (latest.stamp.sec, latest.stamp.nanosec):
                    latest = header
        if not grids:
            self.node.get_logger().warning(
                f'{GRID_TOPIC}: {self.status()}', throttle_duration_sec=5.0)
            return
        fused = grids[0] if len(grids) == 1 else ground.fuse(grids)
        if self.grid_pub.get_subscription_count() > 0:
            self.grid_pub.publish(nav.grid_to_msg(fused, self.spec, latest))
        if self.cloud_pub.get_subscription_count() > 0:
            points = ground.obstacle_points(fused, self.spec,
                                            boundary=self.settings.obstacles == 'boundary')
            self.cloud_pub.publish(nav.points_to_cloud(points, latest, self.spec.frame_id))
        if self.free_pub.get_subscription_count() > 0:
            points = ground.free_points(fused, self.spec, frontier=True)
            self.free_pub.publish(nav.points_to_cloud(points, latest, self.spec.frame_id))


def rclpy_time_zero():
    """Return rclpy Time 0 (the latest transform), imported lazily."""
    from rclpy.time import Time
    return Time()

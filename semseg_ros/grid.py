"""
The node's ground grid: camera_info per camera, camera poses, the fused grid and obstacles.

Thin ROS wiring around `semseg_ros.core.ground`: each camera's lookup is rebuilt only when its
camera_info or pose changes. Each camera keeps its latest projection (`CameraView`); every
processed frame replaces its camera's view, and the views of all cameras whose image stamp is
within `grid.max_age` of the newest one are fused into one grid, stamped with the newest
frame's header (so grid stamps never go backwards). It is published as nav_msgs/OccupancyGrid
(`segmentation/drivable_grid`) and sensor_msgs/PointCloud2 (`segmentation/obstacles`:
non-drivable cells, for marking; `segmentation/free_space`: the far edge of the drivable area,
for clearing). A camera whose view is too old drops out of the fusion until its next frame,
with a log line and a WARN in its diagnostics.
"""

import threading

from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
from rclpy.clock import Clock
from rclpy.clock import ClockType
from semseg_ros.core import ground
from semseg_ros.io import nav
from sensor_msgs.msg import CameraInfo
from sensor_msgs.msg import PointCloud2

GRID_TOPIC = 'segmentation/drivable_grid'
OBSTACLES_TOPIC = 'segmentation/obstacles'
FREE_SPACE_TOPIC = 'segmentation/free_space'


class GridError(RuntimeError):
    """The grid cannot be set up (e.g. TF poses without tf2_ros, a camera under the ground)."""


def stamp_ns(header):
    """Return a header's stamp in integer nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


class CameraView:
    """One camera's latest projection: the grid, its image stamp and header."""

    def __init__(self, cells, header):
        self.cells = cells
        self.header = header
        self.stamp = stamp_ns(header)


class CameraGround:
    """One camera's ground state: its model, pose, projector and latest view."""

    def __init__(self, pose, info_topic):
        self.model = None
        self.pose = pose
        self.projector = None
        self.frame_id = ''
        self.info_topic = info_topic
        self.refused = ''  # why the last camera_info / pose could not be used
        self.view = None
        self.dropped = False  # out of the fused grid (view too old); logged once per change
        self.out_of_order = 0  # frames older than the camera's view, not fused


class GroundGrid:
    """Camera info subscriptions, poses and the fused grid of the node's cameras."""

    def __init__(self, node, settings, cameras, poses, qos):
        """Create the publishers; poses maps camera name -> 4x4 pose (parameters) or None."""
        self.node = node
        self.settings = settings
        self.spec = ground.GridSpec(**settings.grid)
        self.max_age_ns = int(round(settings.grid_max_age * 1e9))
        self.cameras = cameras
        self.state = {}
        for camera in cameras:
            pose = poses.get(camera.name)
            if pose is not None:
                try:
                    ground.check_above_ground(pose, self.spec.ground_z)
                except ground.ProjectionError as exc:
                    raise GridError(f'camera {camera.name}: {exc}') from None
            self.state[camera.name] = CameraGround(
                pose, node.resolve_topic_name(camera.prefix + 'camera_info'))
        self.lock = threading.RLock()
        self.published = 0
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
            # Steady clock: with use_sim_time and no /clock a ROS-time timer never fires.
            self.tf_timer = node.create_timer(
                1.0, self._refresh_tf, clock=Clock(clock_type=ClockType.STEADY_TIME))

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
            self._update(name, state)

    def _update(self, name, state):
        """Build or update the camera's projector; a refused pose is logged and kept out."""
        if state.model is None or state.pose is None:
            return
        try:
            if state.projector is None:
                state.projector = ground.GroundProjector(state.model, state.pose, self.spec)
            else:
                state.projector.update(camera=state.model, pose=state.pose)
        except Exception as exc:  # noqa: B902 - ProjectionError, or any: never out of a callback
            state.refused = str(exc) if isinstance(exc, ground.ProjectionError) \
                else f'{type(exc).__name__}: {exc}'
            state.projector = None
            state.view = None
            self.node.get_logger().error(f'camera {name}: {state.refused}',
                                         throttle_duration_sec=5.0)
            return
        state.refused = ''
        if not len(state.projector.pixels[0]):
            self.node.get_logger().warning(
                f'camera {name}: {self._sees_nothing()}', throttle_duration_sec=5.0)

    @staticmethod
    def _sees_nothing():
        return ('sees no cell of the grid (looking above the horizon, or outside grid.* / '
                'grid.max_range): check the pose and the grid')

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
                self._update(name, state)

    def camera_status(self, name):
        """Return (DiagnosticStatus level, text) of one camera's part in the grid."""
        with self.lock:
            state = self.state[name]
            if state.refused:
                return DiagnosticStatus.ERROR, f'refused: {state.refused}'
            if state.model is None:
                return DiagnosticStatus.WARN, f'waiting for camera_info on {state.info_topic}'
            if state.pose is None:
                return DiagnosticStatus.WARN, (
                    f'waiting for the pose {state.frame_id} -> {self.spec.frame_id} (TF)')
            if state.projector is None:
                return DiagnosticStatus.WARN, 'waiting for its projection to be built'
            if not len(state.projector.pixels[0]):
                return DiagnosticStatus.WARN, self._sees_nothing()
            if state.view is None:
                return DiagnosticStatus.OK, 'ready, no frame projected yet'
            age = self._age(state)
            if age > self.max_age_ns:
                return DiagnosticStatus.WARN, self._dropped_text(age)
            return DiagnosticStatus.OK, f'fused ({age * 1e-9:.3f} s behind the newest frame)'

    def _dropped_text(self, age):
        return (f'dropped from the fused grid: its newest frame is {age * 1e-9:.3f} s older '
                f'than the newest (grid.max_age {self.max_age_ns * 1e-9:g} s)')

    def _newest(self):
        stamps = [s.view.stamp for s in self.state.values() if s.view is not None]
        return max(stamps) if stamps else None

    def _age(self, state):
        return self._newest() - state.view.stamp

    def _take(self, name, header, mask):
        """Project one frame into its camera's view; return True when the view changed."""
        state = self.state[name]
        if state.projector is None:
            return False
        stamp = stamp_ns(header)
        if state.view is not None and stamp < state.view.stamp:
            if state.view.stamp - stamp <= self.max_age_ns:
                state.out_of_order += 1  # an older frame than the one fused: keep the newer
                return False
            # The clock went back (a bag restarted, a simulator reset): start afresh.
            self.node.get_logger().warning(
                f'camera {name}: image stamp went back by {(state.view.stamp - stamp) * 1e-9:.3f}'
                ' s (clock reset?): the fused grid starts again from this frame')
            for other in self.state.values():
                other.view = None
                other.dropped = False
        state.view = CameraView(state.projector.project(mask), header)
        return True

    def _fuse(self):
        """Return (fused grid, header of the newest frame, names fused); log drop-outs."""
        newest = self._newest()
        fused, header, names = [], None, []
        for name, state in self.state.items():
            if state.view is None:
                continue
            age = newest - state.view.stamp
            fresh = age <= self.max_age_ns
            if fresh != (not state.dropped):
                state.dropped = not fresh
                if fresh:
                    self.node.get_logger().info(f'camera {name}: back in the fused grid')
                else:
                    self.node.get_logger().warning(f'camera {name}: {self._dropped_text(age)}')
            if not fresh:
                continue
            fused.append(state.view.cells)
            names.append(name)
            if state.view.stamp == newest and header is None:
                header = state.view.header
        cells = fused[0] if len(fused) == 1 else ground.fuse(fused)
        return cells, header, names

    def publish(self, items):
        """Project [(camera name, header, drivable mask)], fuse every fresh view, publish."""
        with self.lock:
            changed = False
            for name, header, mask in items:
                if self.state[name].projector is None:
                    self.node.get_logger().warning(
                        f'{GRID_TOPIC}: camera {name}: {self.camera_status(name)[1]}',
                        throttle_duration_sec=5.0)
                changed |= self._take(name, header, mask)
            if not changed:
                return
            fused, latest, _ = self._fuse()
            self.published += 1
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

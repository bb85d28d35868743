"""
The segmentation node: parameters -> Settings -> Segmenter; topics; one worker thread.

A managed (lifecycle) node. With `autostart` (the default) it configures and activates itself
at start-up; with `autostart: false` it waits for a lifecycle manager:

- configure: read and validate the parameters, load the model and class set, create the
  publishers. Any error leaves the node unconfigured with the reason (and what to do) in the
  log and in diagnostics; once fixed, configure again.
- activate: subscribe to the cameras and start the worker. With `lazy_input` (the default) a
  camera's input is subscribed only while one of its outputs has a subscriber (checked every
  0.2 s), so a node nobody listens to costs next to nothing.
- deactivate: unsubscribe, stop the worker, free cached GPU memory.
- cleanup: drop the model and the publishers.

Model parameters set on a configured node swap the model live: the new one is loaded beside the
running one and swapped in between two batches, and the set call answers with the outcome
(core/swap.py; the executor of semseg_ros.executor keeps frames flowing meanwhile).

Subscription callbacks only store the newest message per camera (a stale one is replaced and
counted as dropped); the worker (frames.py) takes the newest frames of all cameras, runs them
through the engine in one batch and publishes the outputs that someone subscribes to, each with
the input header unchanged.
"""

from concurrent.futures import ThreadPoolExecutor
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import FloatingPointRange
from rcl_interfaces.msg import IntegerRange
from rcl_interfaces.msg import ParameterDescriptor
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock
from rclpy.clock import ClockType
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from rclpy.subscription import Subscription
from rclpy.task import Future
from semseg_ros import diagnostics
from semseg_ros import guard
from semseg_ros.core import ground
from semseg_ros.core import memory
from semseg_ros.core import pipeline
from semseg_ros.core import settings as cfg
from semseg_ros.core import swap
from semseg_ros.diagnostics import CameraStats
from semseg_ros.diagnostics import WorkStats
from semseg_ros.executor import FramesInlineExecutor
from semseg_ros.frames import FrameWorker
from semseg_ros.grid import GroundGrid
from semseg_ros.guard import transition
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image
from std_msgs.msg import Header

OUTPUT_TOPICS = {
    'label': 'segmentation/label',
    'color': 'segmentation/color',
    'overlay': 'segmentation/overlay',
    'drivable': 'segmentation/drivable',
    'confidence': 'segmentation/confidence',
}
LABEL_INFO_TOPIC = 'segmentation/label_info'
# rclpy gives a two-argument callback the message info (Iron and later).
MESSAGE_INFO = hasattr(Subscription, 'CallbackType')
INPUT_CHECK_PERIOD = 0.2  # seconds between checks for output subscribers (lazy_input)
CHANGE_NOTES = {
    'configure': 'Takes effect on the next configure (or a restart).',
    'restart': 'Read-only: needs a restart.',
    'runtime': 'Can change at run time.',
    'swap': 'Can change at run time: the model is loaded beside the running one and swapped '
            'between frames; the set call answers once it runs (or failed, keeping the old one).',
}


def qos_profile(reliability, depth, latched=False):
    """Return a keep-last QoS profile with the given reliability name and depth."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                     else ReliabilityPolicy.BEST_EFFORT),
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                    else DurabilityPolicy.VOLATILE))


def descriptor(spec):
    """Return the ParameterDescriptor of a settings Spec."""
    text = spec.description
    if spec.choices:
        text += ' One of: ' + ', '.join(spec.choices) + '.'
    # dynamic_typing: settings.check validates types itself, with the parameter's name.
    desc = ParameterDescriptor(description=text, read_only=spec.read_only,
                               additional_constraints=CHANGE_NOTES[spec.change],
                               dynamic_typing=True)
    if spec.low is not None and spec.value_type is int:
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                           step=1)]
    elif spec.low is not None and spec.value_type is float:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                        to_value=float(spec.high), step=0.0)]
    return desc


def label_info_message(classes, header):
    """Return a vision_msgs/LabelInfo for the class set, or None without vision_msgs."""
    try:
        from vision_msgs.msg import LabelInfo
        from vision_msgs.msg import VisionClass
    except ImportError:
        return None
    msg = LabelInfo()
    msg.header = header
    msg.class_map = [VisionClass(class_id=i, class_name=name)
                     for i, name in enumerate(classes.names)]
    msg.threshold = 0.0
    return msg


class Camera:
    """One input: its publishers, its subscription and the newest unprocessed frame."""

    def __init__(self, node, namespace, settings):
        self.node = node
        self.namespace = namespace
        self.prefix = f'{namespace}/' if namespace else ''
        # The unnamed camera is named by its input topic (e.g. /image) in logs and diagnostics.
        self.name = namespace or node.resolve_topic_name(
            'image/compressed' if settings.input_transport == 'compressed' else 'image')
        self.pending = None
        self.subscription = None
        self.subscribed_at = None  # monotonic time of the last subscription
        self.stats = CameraStats()
        out_qos = qos_profile(settings.output_reliability, settings.output_depth)
        self.publishers = {
            name: node.create_lifecycle_publisher(Image, self.prefix + topic, out_qos)
            for name, topic in OUTPUT_TOPICS.items()}
        self.label_info = None

    def subscribe(self, settings):
        """Create the input subscription (raw or compressed)."""
        qos = qos_profile(settings.input_reliability, settings.input_depth)
        # rclpy since Iron passes the message info (publication sequence numbers) to a
        # two-argument callback; Humble's does not, and there frames lost are not counted.
        callback = self.on_image_info if MESSAGE_INFO else self.on_image
        if settings.input_transport == 'compressed':
            self.subscription = self.node.create_subscription(
                CompressedImage, self.prefix + 'image/compressed', callback, qos,
                callback_group=self.node.frames_group)
        else:
            self.subscription = self.node.create_subscription(
                Image, self.prefix + 'image', callback, qos,
                callback_group=self.node.frames_group)
        self.subscribed_at = time.monotonic()
        self.stats.count_sequence(None)  # frames sent while unsubscribed are not lost

    def unsubscribe(self):
        """Destroy the input subscription."""
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
            self.subscription = None

    def on_image(self, msg):
        """Keep only the newest message; count the one it replaces as dropped."""
        self.node.offer(self, msg)

    def on_image_info(self, msg, info):
        """on_image, counting the frames its publisher sent that never arrived."""
        single = self.subscription is not None and self.subscription.get_publisher_count() == 1
        self.node.offer(self, msg, info.get('publication_sequence_number') if single else None)

    def wanted(self, enabled):
        """Return the enabled outputs that have at least one subscriber."""
        return {name for name in enabled
                if self.publishers[name].get_subscription_count() > 0}

    def destroy(self):
        """Destroy publishers and subscription."""
        self.unsubscribe()
        for pub in self.publishers.values():
            self.node.destroy_lifecycle_publisher(pub)
        if self.label_info is not None:
            self.node.destroy_publisher(self.label_info)
        self.publishers = {}


class SegmentationNode(FrameWorker, LifecycleNode):
    """Semantic segmentation of camera images (a managed node; see the module docstring)."""

    def __init__(self, startup_errors=(), **kwargs):
        """Declare the parameters; startup_errors: invalid command-line values found by main."""
        super().__init__('semseg', **kwargs)
        startup_errors = list(startup_errors)
        for spec in cfg.PARAMETERS:
            try:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
            except ParameterException as exc:  # an override out of range (rclpy checks it)
                startup_errors.append(f'parameter {spec.name}: {exc}')
                self.declare_parameter(spec.name, spec.default, descriptor(spec),
                                       ignore_override=True)
        restart = {s.name: self.get_parameter(s.name).value
                   for s in cfg.PARAMETERS if s.change == 'restart'}
        try:
            self.settings = cfg.from_values(restart)
        except cfg.SettingsError as exc:
            startup_errors.append(str(exc))
            self.settings = cfg.from_values({})
        startup_errors += self._declare_camera_poses()
        if self.settings.retain_memory:
            # Before the torch thread exists, so that it shares the tuned arena.
            applied = memory.retain_freed_memory()
            self.get_logger().info(
                'malloc: ' + (', '.join(applied) + ' set (retain_memory)' if applied
                              else 'not glibc, retain_memory has no effect'))
        self.segmenter = None
        self.base_classes = None
        self.swapper = swap.ModelSwap()  # live model swap (core/swap.py)
        self.error = ''
        if startup_errors:
            self.error = 'invalid parameters at start-up: ' + '; '.join(startup_errors)
            self.get_logger().error(
                f'{self.error}. The node stays unconfigured: restart with valid values (or set '
                'them and trigger configure).')
        self.cameras = []
        self.grid = None
        self._active = False
        self._cond = threading.Condition()
        self._work = WorkStats()
        self._stop = True
        self._worker = None
        # Every torch call (build, warm-up, inference, freeing memory) runs on this one thread:
        # a second thread calling torch makes a second OpenMP pool, and two pools on few cores
        # slow inference down by a third (measured with benchmarks/e2e_bench.py).
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix='semseg_torch')
        self._closed = False
        self.add_pre_set_parameters_callback(self._doubles)
        # Integers given at start-up to floating-point parameters: stored as doubles as well
        # (read-only ones keep the type given; Settings reads them as floats).
        self.set_parameters([p for p in self.get_parameters(
            [s.name for s in cfg.PARAMETERS] + cfg.pose_parameter_names(self.settings.cameras))
            if p.type_ == Parameter.Type.INTEGER and cfg.spec_of(p.name).value_type is float
            and not cfg.spec_of(p.name).read_only])
        self.finished = Future()  # done after the shutdown transition: main() returns
        # Nothing fatal, nothing silent (semseg_ros/guard.py): transitions and callbacks.
        self.transition_guard = guard.TransitionGuard(
            self.get_logger(), self._report_error, guard.FaultPlan.from_env())
        self.callback_guard = guard.CallbackGuard(self.get_logger())
        self.callback_guard.guard_services(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # Frames and diagnostics go on while a parameter call (default group) waits for a
        # model swap (main spins with semseg_ros.executor).
        self.frames_group = MutuallyExclusiveCallbackGroup()
        # Steady-clock timers: with use_sim_time and no /clock, ROS-time timers never fire.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics,
                          callback_group=self.frames_group, clock=steady)
        self.create_timer(INPUT_CHECK_PERIOD, self._update_inputs, clock=steady)
        if self.settings.autostart and not self.error:
            self.trigger_configure()
            if self.segmenter is not None:
                self.trigger_activate()

    def _declare_camera_poses(self):
        """With several cameras, declare camera_pose.<camera>.<x..yaw>; return the errors."""
        errors = []
        for name in cfg.pose_parameter_names(self.settings.cameras):
            spec = cfg.spec_of(name)
            base = self.get_parameter(cfg.POSE_PREFIX + name.rsplit('.', 1)[1]).value
            try:
                self.declare_parameter(name, base, descriptor(spec))
            except ParameterException as exc:  # an override out of range (rclpy checks it)
                errors.append(f'parameter {name}: {exc}')
                self.declare_parameter(name, base, descriptor(spec), ignore_override=True)
        return errors

    def _camera_poses(self):
        """Return {camera name: 4x4 pose} from parameters ({} when poses come from TF)."""
        if self.settings.pose_source != 'parameters':
            return {}
        return {camera.name: ground.camera_pose(*self.settings.poses[camera.namespace])
                for camera in self.cameras}

    # Lifecycle transitions.
    def _read_settings(self):
        names = [spec.name for spec in cfg.PARAMETERS]
        names += cfg.pose_parameter_names(self.settings.cameras)
        return cfg.from_values({name: self.get_parameter(name).value for name in names})

    def _report_error(self, text):
        self.error = text

    @transition('configure')
    def on_configure(self, state):
        """Validate parameters, load the model and class set, create the publishers."""
        log = self.get_logger()
        try:
            self.settings = self._read_settings()
            self.segmenter = self._torch.submit(
                pipeline.build_segmenter, self.settings, log.info, log.warning).result()
            self.base_classes = pipeline.load_classes(self.settings, self.segmenter.model)[0]
        except Exception as exc:  # noqa: B902 - any failure must leave the node alive
            self.segmenter = None
            self.error = f'configure failed: {exc}'
            log.error(f'{self.error}. The node stays unconfigured; once that is fixed, '
                      f'configure it again (ros2 lifecycle set {self.get_fully_qualified_name()}'
                      ' configure) or restart it.')
            return TransitionCallbackReturn.FAILURE
        self.cameras = [Camera(self, name, self.settings) for name in self.settings.cameras]
        if self.settings.grid is not None:
            try:
                self.grid = GroundGrid(
                    self, self.settings, self.cameras, self._camera_poses(),
                    qos_profile(self.settings.output_reliability, self.settings.output_depth))
            except Exception as exc:  # noqa: B902 - any failure must leave the node alive
                self._release()
                self.error = f'configure failed: {exc}'
                log.error(self.error)
                return TransitionCallbackReturn.FAILURE
        self.error = ''
        self.swapper.track(self.segmenter, self.settings)
        self._publish_label_info()
        return super().on_configure(state)

    def _publish_label_info(self):
        """Publish the class set on label_info (latched); False without vision_msgs."""
        header = Header(stamp=self.get_clock().now().to_msg())
        msg = label_info_message(self.segmenter.classes, header)
        if msg is None:
            return False  # vision_msgs is not installed: class metadata stays in the YAML
        for camera in self.cameras:
            if camera.label_info is None:
                camera.label_info = self.create_publisher(
                    type(msg), camera.prefix + LABEL_INFO_TOPIC,
                    qos_profile('reliable', 1, latched=True))
            camera.label_info.publish(msg)
        return True

    @transition('activate')
    def on_activate(self, state):
        """Subscribe to the cameras (those with listeners, see lazy_input), start the worker."""
        result = super().on_activate(state)
        if self.grid is not None:
            self.grid.subscribe(qos_profile('best_effort', 1))
        self._active = True
        self._update_inputs()
        self._start_worker()
        return result

    @transition('deactivate')
    def on_deactivate(self, state):
        """Unsubscribe, stop the worker and free cached device memory."""
        self._active = False
        for camera in self.cameras:
            camera.unsubscribe()
        if self.grid is not None:
            self.grid.unsubscribe()
        self._stop_worker()
        self._free_device_memory()
        return super().on_deactivate(state)

    @transition('cleanup')
    def on_cleanup(self, state):
        """Drop the model and the publishers."""
        self._release()
        return super().on_cleanup(state)

    @transition('shutdown')
    def on_shutdown(self, state):
        """Stop everything; main() then ends the process (the finalized state is final)."""
        self._release()
        if not self.finished.done():
            self.finished.set_result(True)
        return super().on_shutdown(state)

    @transition('error')
    def on_error(self, state):
        """Release everything after an error in a transition."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self):
        self._active = False
        self._stop_worker()
        if self.grid is not None:
            self.grid.destroy()
            self.grid = None
        for camera in self.cameras:
            camera.destroy()
        self.cameras = []
        self.segmenter = None
        self.swapper.track(None, None)
        self._free_device_memory()

    def _free_device_memory(self):
        def empty_cache():
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if not self._closed:
            self._torch.submit(empty_cache).result()

    def _start_worker(self):
        self._stop = False
        self._worker = self._torch.submit(self._run)

    def _stop_worker(self):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker is not None:
            try:
                self._worker.result(timeout=10.0)
            except Exception as exc:  # noqa: B902 - report, never raise from a transition
                self.get_logger().error(f'worker stopped with {type(exc).__name__}: {exc}')
        self._worker = None
        for camera in self.cameras:
            camera.pending = None

    def _update_inputs(self):
        """Subscribe to the inputs somebody listens for and drop the others (lazy_input)."""
        if not self._active:
            return
        lazy = self.settings.lazy_input
        grid = self.grid is not None and self.grid.wanted()
        for camera in self.cameras:
            needed = not lazy or grid or bool(camera.wanted(self.settings.outputs))
            if needed and camera.subscription is None:
                camera.subscribe(self.settings)
            elif not needed and camera.subscription is not None:
                camera.unsubscribe()
                with self._cond:
                    camera.pending = None

    # Parameters.
    @staticmethod
    def _doubles(params):
        """Store an integer given to a floating-point parameter as a double (pre-set hook)."""
        out = []
        for param in params:
            spec = cfg.spec_of(param.name)
            if (spec is not None and spec.value_type is float
                    and param.type_ == Parameter.Type.INTEGER):
                param = Parameter(param.name, Parameter.Type.DOUBLE, float(param.value))
            out.append(param)
        return out

    def _on_set_parameters(self, params):
        changes = {p.name: p.value for p in params}
        configured = self.segmenter is not None
        try:
            for name, value in changes.items():
                spec = cfg.spec_of(name)
                if spec is None:
                    continue
                cfg.check(name, value)  # a bad value is named first, whatever the state
                if spec.change == 'configure' and configured and not self._unchanged(
                        name, value):
                    # A reload of the node's own values (ros2 param load of a dump) passes.
                    return SetParametersResult(
                        successful=False,
                        reason=f'{name} takes effect on configure: deactivate and clean up the '
                               'node first (or restart it)')
            if not configured:
                # Checked one by one: configure validates the whole set (e.g. width with height).
                return SetParametersResult(successful=True)
            values = {**self.settings.values, **changes}
            new = cfg.from_values({k: v for k, v in values.items()
                                   if cfg.spec_of(k) is not None})
            if swap.needs_swap(changes):
                return self._swap_model(new)
            if configured:
                if 'drivable_classes' in changes:
                    base = self.base_classes
                    self.segmenter.set_classes(
                        base.with_drivable(new.drivable_classes) if new.drivable_classes
                        else base)
                self.segmenter.set_overlay_alpha(new.overlay_alpha)
        except Exception as exc:  # noqa: B902 - a parameter service must never raise
            return SetParametersResult(successful=False, reason=str(exc))
        self.settings = new
        return SetParametersResult(successful=True)

    def _swap_model(self, new):
        """Load the model of settings `new` beside the running one and swap it in."""
        log = self.get_logger()

        def install(segmenter, base):  # called between two batches (core/swap.py)
            self.segmenter, self.base_classes, self.settings = segmenter, base, new

        result = self.swapper.swap(new, self.segmenter, install, log.info)
        if not result.ok:
            log.error(f'model swap failed after {result.seconds:.2f} s, the old model keeps '
                      f'running ({result.model}): {result.detail}')
            return SetParametersResult(
                successful=False,
                reason=f'model not swapped, the old one keeps running: {result.reason}')
        memory = f'; device memory {result.memory}' if result.memory else ''
        log.info(f'model swapped in after {result.seconds:.2f} s of loading: '
                 f'{result.model}{memory}')
        if result.classes_changed:
            try:
                published = self._publish_label_info()
            except Exception as exc:  # noqa: B902 - the swap itself succeeded
                published = False
                log.error(f'label_info not re-published: {exc}')
            log.info(f'class set changed: {result.classes}; ' + (
                'label_info re-published' if published else
                'no label_info (vision_msgs is not installed)'))
        return SetParametersResult(successful=True)

    def _unchanged(self, name, value):
        """Return True when value equals the parameter's current value (after checking)."""
        try:
            return cfg.check(name, value) == cfg.check(name, self.get_parameter(name).value)
        except Exception:  # noqa: B902 - an invalid value is a change; check() reports it
            return False

    # Diagnostics.
    def _publish_diagnostics(self):
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        name = self.get_fully_qualified_name()
        node_status = diagnostics.node_status(
            name, self.error, bool(self.cameras), guard.sim_clock_problem(self.get_clock()),
            self.callback_guard, self.get_parameter('model.backend').value)
        if node_status is not None:
            array.status.append(node_status)
        with self._cond:
            work = self._work.values(time.monotonic())
        for camera in list(self.cameras):
            array.status.append(diagnostics.camera_status(
                name, camera, self._cond, work, self._active, self.segmenter, self.settings,
                self.grid))
        seg, settings = self.segmenter, self.settings
        if seg is not None:
            array.status.append(
                diagnostics.model_status(name, seg, settings, self.swapper.report()))
        self.diagnostics.publish(array)

    def destroy_node(self):
        """Stop the worker thread, then destroy the node."""
        self._stop_worker()
        self._closed = True
        self._torch.shutdown(wait=False)
        return super().destroy_node()


def main(args=None):
    """Run the node; accepts standard --ros-args (params files, remaps)."""
    rclpy.init(args=args)
    node = SegmentationNode(startup_errors=cfg.check_command_line(
        sys.argv if args is None else args))
    # Frames and diagnostics (node.frames_group) go on while a parameter call waits for a
    # model swap.
    executor = FramesInlineExecutor(node.frames_group)
    try:
        # Until Ctrl-C, or the lifecycle shutdown transition; a failing callback is counted,
        # not fatal (semseg_ros/guard.py).
        node.callback_guard.spin(node, executor, until=node.finished)
        executor.wait_helper()  # the shutdown reply is sent before the node goes
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""
The segmentation node: parameters -> Settings -> Segmenter; topics; one worker thread.

Subscription callbacks only store the newest message per camera (a stale one is replaced and
counted as dropped); a worker thread takes the newest frames of all cameras, runs them through
the engine in one batch and publishes the outputs that someone subscribes to, each with the
input header unchanged.
"""

import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_msgs.msg import KeyValue
import numpy as np
from rcl_interfaces.msg import FloatingPointRange
from rcl_interfaces.msg import IntegerRange
from rcl_interfaces.msg import ParameterDescriptor
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.node import Node
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.core import classes as class_sets
from semseg_ros.core import settings as cfg
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.models import create_model
from semseg_ros.io.image import array_to_image
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import ImageError
from sensor_msgs.msg import Image

OUTPUT_TOPICS = {
    'label': 'segmentation/label',
    'color': 'segmentation/color',
    'overlay': 'segmentation/overlay',
    'drivable': 'segmentation/drivable',
    'confidence': 'segmentation/confidence',
}
OUTPUT_ENCODINGS = {'color': 'rgb8', 'overlay': 'rgb8', 'drivable': 'mono8',
                    'confidence': 'mono8'}
LATENCY_WINDOW = 200


def qos_profile(reliability, depth):
    """Return a keep-last QoS profile with the given reliability name and depth."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                     else ReliabilityPolicy.BEST_EFFORT))


def descriptor(spec):
    """Return the ParameterDescriptor of a settings Spec."""
    text = spec.description
    if spec.choices:
        text += ' One of: ' + ', '.join(spec.choices) + '.'
    desc = ParameterDescriptor(description=text, read_only=spec.read_only)
    if spec.low is not None and spec.value_type is int:
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                           step=1)]
    elif spec.low is not None and spec.value_type is float:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                        to_value=float(spec.high), step=0.0)]
    return desc


class CameraStats:
    """Counters and latency samples of one camera, for diagnostics."""

    def __init__(self):
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.skipped = 0  # no subscriber for any enabled output
        self.errors = 0
        self.last_error = ''
        self.latency = []  # stamp to publish, seconds
        self.window_start = time.monotonic()
        self.window_in = 0
        self.window_out = 0

    def add_latency(self, seconds):
        """Record one stamp-to-publish latency."""
        self.latency.append(seconds)
        if len(self.latency) > LATENCY_WINDOW:
            del self.latency[:len(self.latency) - LATENCY_WINDOW]


class Camera:
    """One input: its subscription, its publishers and the newest unprocessed frame."""

    def __init__(self, node, namespace, settings):
        self.node = node
        self.name = namespace or '/'
        prefix = f'{namespace}/' if namespace else ''
        self.pending = None
        self.stats = CameraStats()
        out_qos = qos_profile(settings.output_reliability, settings.output_depth)
        self.publishers = {
            name: node.create_publisher(Image, prefix + topic, out_qos)
            for name, topic in OUTPUT_TOPICS.items()}
        self.subscription = node.create_subscription(
            Image, prefix + 'image', self.on_image,
            qos_profile(settings.input_reliability, settings.input_depth))

    def on_image(self, msg):
        """Keep only the newest message; count the one it replaces as dropped."""
        self.node.offer(self, msg)

    def wanted(self, enabled):
        """Return the enabled outputs that have at least one subscriber."""
        return {name for name in enabled
                if self.publishers[name].get_subscription_count() > 0}


class SegmentationNode(Node):
    """Semantic segmentation of camera images."""

    def __init__(self, **kwargs):
        super().__init__('semseg', **kwargs)
        for spec in cfg.PARAMETERS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self.settings = None
        self.segmenter = None
        self.base_classes = None
        self.model_error = ''
        self._cond = threading.Condition()
        self._stop = False
        values = {spec.name: self.get_parameter(spec.name).value for spec in cfg.PARAMETERS}
        try:
            self.settings = cfg.from_values(values)
        except cfg.SettingsError as exc:
            self.get_logger().error(f'invalid parameters: {exc}')
            self.model_error = str(exc)
            self.settings = cfg.from_values(
                {k: v for k, v in values.items() if k.startswith(('qos.', 'diag'))})
        if not self.model_error:
            self._load_model()
        self.cameras = [Camera(self, '', self.settings)]
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run, name='semseg_worker', daemon=True)
        self._worker.start()

    # Set-up.
    def _load_model(self):
        s = self.settings
        log = self.get_logger()
        try:
            options = {'weights': s.weights}
            if s.backend in ('espnet', 'espnetv2'):
                options['download'] = s.download
            model = create_model(s.backend, **options)
            classes = class_sets.load(s.classes or model.class_set) if (
                s.classes or model.class_set) else class_sets.generic(model.num_classes)
            self.base_classes = classes
            if s.drivable_classes:
                classes = classes.with_drivable(s.drivable_classes)
            self.segmenter = Segmenter(
                model, classes, device=s.device, precision=s.precision,
                input_size=s.input_size, upsample=s.upsample, channels_last=s.channels_last,
                overlay_alpha=s.overlay_alpha, warmup=s.warmup)
        except Exception as exc:  # noqa: B902 - any load failure must leave the node alive
            self.model_error = f'{type(exc).__name__}: {exc}'
            log.error(f'cannot load the model (backend {s.backend!r}): {exc}. '
                      'Frames are dropped until the parameters are fixed and the node restarted.')
            return
        seg = self.segmenter
        size = 'frame size' if seg.input_size is None else '%dx%d' % seg.input_size
        drivable = [seg.classes.names[i] for i in seg.classes.drivable] or ['none']
        log.info(f'model {s.backend} ({model.name}) on {seg.device} {s.precision}, input {size}, '
                 f'{len(seg.classes)} classes from {seg.classes.source}, drivable: '
                 + ', '.join(drivable))

    def _on_set_parameters(self, params):
        changes = {p.name: p.value for p in params}
        try:
            for name, value in changes.items():
                spec = cfg.SPECS.get(name)
                if spec is not None and spec.read_only:
                    return SetParametersResult(
                        successful=False, reason=f'{name} is read-only: restart the node')
                cfg.check(name, value)
            new = cfg.from_values({**self.settings.values, **changes})
            if self.segmenter is not None:
                if 'drivable_classes' in changes:
                    base = self.base_classes
                    self.segmenter.set_classes(
                        base.with_drivable(new.drivable_classes) if new.drivable_classes
                        else base)
                self.segmenter.set_overlay_alpha(new.overlay_alpha)
        except (cfg.SettingsError, class_sets.ClassSetError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.settings = new
        return SetParametersResult(successful=True)

    # Frames.
    def offer(self, camera, msg):
        """Store msg as the camera's newest frame and wake the worker."""
        with self._cond:
            camera.stats.received += 1
            camera.stats.window_in += 1
            if camera.pending is not None:
                camera.stats.dropped += 1
            camera.pending = msg
            self._cond.notify()

    def _take(self):
        with self._cond:
            while not self._stop and all(c.pending is None for c in self.cameras):
                self._cond.wait(0.5)
            if self._stop:
                return []
            batch = [(c, c.pending) for c in self.cameras if c.pending is not None]
            for camera, _ in batch:
                camera.pending = None
            return batch

    def _fail(self, camera, text):
        camera.stats.errors += 1
        camera.stats.last_error = text
        self.get_logger().error(f'camera {camera.name}: {text}', throttle_duration_sec=2.0)

    def _run(self):
        while rclpy.ok() and not self._stop:
            batch = self._take()
            if batch:
                try:
                    self._process(batch)
                except Exception as exc:  # noqa: B902 - the worker must survive any frame
                    for camera, _ in batch:
                        self._fail(camera, f'processing failed: {type(exc).__name__}: {exc}')

    def _process(self, batch):
        seg = self.segmenter
        if seg is None:
            for camera, _ in batch:
                self._fail(camera, f'no model loaded ({self.model_error})')
            return
        enabled = self.settings.outputs
        jobs = []
        for camera, msg in batch:
            wanted = camera.wanted(enabled)
            if not wanted:
                camera.stats.skipped += 1  # nobody listens: no work
                continue
            try:
                array, color = image_to_array(msg)
            except ImageError as exc:
                self._fail(camera, f'bad image: {exc}')
                continue
            jobs.append((camera, msg, Frame(array, color), wanted))
        if not jobs:
            return
        wanted_all = set().union(*(w for _, _, _, w in jobs))
        results = seg.process([frame for _, _, frame, _ in jobs], wanted_all)
        label_encoding = seg.classes.label_encoding
        for (camera, msg, _, wanted), result in zip(jobs, results):
            for name in wanted:
                encoding = OUTPUT_ENCODINGS.get(name, label_encoding)
                camera.publishers[name].publish(
                    array_to_image(result[name], encoding, msg.header))
            self._count_output(camera, msg)

    def _count_output(self, camera, msg):
        stats = camera.stats
        stats.processed += 1
        stats.window_out += 1
        now = self.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        stats.add_latency((now - stamp) * 1e-9)

    # Diagnostics.
    def _publish_diagnostics(self):
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        seg = self.segmenter
        for camera in self.cameras:
            array.status.append(self._camera_status(camera, seg))
        self.diagnostics.publish(array)

    def _camera_status(self, camera, seg):
        with self._cond:
            stats = camera.stats
            elapsed = max(time.monotonic() - stats.window_start, 1e-6)
            in_rate = stats.window_in / elapsed
            out_rate = stats.window_out / elapsed
            stats.window_in = stats.window_out = 0
            stats.window_start = time.monotonic()
            latency = np.array(stats.latency) * 1000.0
        status = DiagnosticStatus()
        status.name = f'{self.get_fully_qualified_name()}: camera {camera.name}'
        status.hardware_id = str(seg.device) if seg else 'none'
        if seg is None:
            status.level = DiagnosticStatus.ERROR
            status.message = f'no model: {self.model_error}'
        elif stats.errors and stats.last_error:
            status.level = DiagnosticStatus.WARN
            status.message = f'errors: {stats.errors} (last: {stats.last_error})'
        else:
            status.level = DiagnosticStatus.OK
            status.message = 'ok'
        values = {
            'input rate (Hz)': f'{in_rate:.2f}',
            'output rate (Hz)': f'{out_rate:.2f}',
            'latency p50 (ms)': f'{np.percentile(latency, 50):.1f}' if latency.size else 'n/a',
            'latency p95 (ms)': f'{np.percentile(latency, 95):.1f}' if latency.size else 'n/a',
            'frames received': str(stats.received),
            'frames processed': str(stats.processed),
            'frames dropped': str(stats.dropped),
            'frames skipped (no subscriber)': str(stats.skipped),
            'errors': str(stats.errors),
            'device': str(seg.device) if seg else 'none',
            'model': self.settings.backend,
        }
        if seg is not None:
            values.update({f'{k} (ms)': f'{v * 1000.0:.1f}' for k, v in seg.timings.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def destroy_node(self):
        """Stop the worker thread, then destroy the node."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        return super().destroy_node()


def main(args=None):
    """Run the node; accepts standard --ros-args (params files, remaps)."""
    rclpy.init(args=args)
    node = SegmentationNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""
The node's frame worker: newest frame per camera in, engine, outputs published.

Subscription callbacks call ``offer``, which keeps the newest message per camera (a stale one
is replaced and counted as dropped). One worker thread (``_run``) takes the newest frames of
all cameras, decodes them, gives them to the engine in one batch and publishes the outputs that
someone subscribes to, each with the input header unchanged.

A mixin of SegmentationNode (node.py): it uses the node's ``_cond``, ``_stop``, ``_work``,
``cameras``, ``segmenter``, ``settings``, ``grid``, ``swapper``, context, clock and logger.
"""

import time

from semseg_ros.core.engine import Frame
from semseg_ros.io.image import array_to_image
from semseg_ros.io.image import compressed_to_array
from semseg_ros.io.image import compressed_to_tensor
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import ImageError
from semseg_ros.io.image import is_jpeg
from sensor_msgs.msg import CompressedImage

OUTPUT_ENCODINGS = {'color': 'rgb8', 'overlay': 'rgb8', 'drivable': 'mono8',
                    'confidence': 'mono8'}


class FrameWorker:
    """Take frames from the cameras, run the engine, publish the outputs (see the module)."""

    def offer(self, camera, msg, sequence=None):
        """Store msg as the camera's newest frame and wake the worker."""
        with self._cond:
            stats = camera.stats
            stats.count_sequence(sequence)
            stats.received += 1
            stats.window_in += 1
            stats.last_input = time.monotonic()
            if camera.pending is not None:
                stats.dropped += 1
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
        with self._cond:
            camera.stats.errors += 1
            camera.stats.error_streak += 1
            camera.stats.last_error = text
        self.get_logger().error(f'camera {camera.name}: {text}', throttle_duration_sec=2.0)

    def _run(self):
        while not self._stop:
            batch = self._take()
            if not batch:
                continue
            try:
                with self.swapper.batch():  # a model swap happens between two batches
                    self._process(batch)
            except Exception as exc:  # noqa: B902 - the worker must survive any frame
                if self._stop or not self.context.ok():
                    return  # shutting down: the context is gone, nothing to report
                for camera, _ in batch:
                    self._fail(camera, f'processing failed: {type(exc).__name__}: {exc}')

    def _decode(self, msg):
        limit = self.settings.max_input_pixels  # checked before decoding
        if isinstance(msg, CompressedImage):
            device = self.segmenter.device
            if device.type == 'cuda' and self.settings.decode_on_device and is_jpeg(msg):
                return compressed_to_tensor(msg, device, limit)  # nvjpeg: stays on the GPU
            return compressed_to_array(msg, limit)
        return image_to_array(msg, limit)

    def _process(self, batch):
        seg = self.segmenter
        if seg is None:
            return
        t0 = time.perf_counter()
        enabled = self.settings.outputs
        grid = self.grid if self.grid is not None and self.grid.wanted() else None
        jobs = []
        for camera, msg in batch:
            wanted = camera.wanted(enabled)
            if not wanted and grid is None:
                camera.stats.skipped += 1  # nobody listens: no work
                continue
            try:
                array, color = self._decode(msg)
            except ImageError as exc:
                self._fail(camera, f'bad image: {exc}')
                continue
            jobs.append((camera, msg, Frame(array, color), wanted))
        if not jobs:
            return
        compute = set().union(*(w for _, _, _, w in jobs))
        if grid is not None:
            compute.add('drivable')
        t1 = time.perf_counter()
        results = seg.process([frame for _, _, frame, _ in jobs], compute)
        t2 = time.perf_counter()
        label_encoding = seg.classes.label_encoding
        for (camera, msg, _, wanted), result in zip(jobs, results):
            for name in wanted & result.keys():  # confidence: absent for class-id models
                encoding = OUTPUT_ENCODINGS.get(name, label_encoding)
                camera.publishers[name].publish(
                    array_to_image(result[name], encoding, msg.header))
            self._count_output(camera, msg)
        if grid is not None:
            grid.publish([(camera.name, msg.header, result['drivable'])
                          for (camera, msg, _, _), result in zip(jobs, results)])
        t3 = time.perf_counter()
        seconds = dict(seg.timings, decode=t1 - t0, publish=t3 - t2, busy=t3 - t0)
        with self._cond:
            self._work.add(seconds, len(jobs))

    def _count_output(self, camera, msg):
        now = self.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self._cond:
            stats = camera.stats
            stats.processed += 1
            stats.window_out += 1
            stats.error_streak = 0
            stats.add_latency((now - stamp) * 1e-9)

"""
The node's frame worker: newest frame per camera in, engine, outputs published.

Subscription callbacks call ``offer``, which keeps the newest message per camera (a stale one
is replaced and counted as dropped). One worker thread (``_run``) takes the newest frames of
all cameras, decodes them, gives them to the engine in one batch and publishes the outputs that
someone subscribes to, each with the input header unchanged.

Where the engine overlaps (``Segmenter.overlaps``: a runtime other than torch on the CPU), the
forward of a batch runs on the engine's thread while this one publishes the batch before it,
so the runtime computes while torch postprocesses and DDS publishes. The model is held until
no batch is left open, so a model swap never leaves one behind.

A mixin of SegmentationNode (node.py): it uses the node's ``_cond``, ``_stop``, ``_work``,
``cameras``, ``segmenter``, ``settings``, ``grid``, ``swapper`` and logger.
"""

from collections import namedtuple
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

# A batch given to the engine: its segmenter, (camera, msg, wanted outputs) per frame, the
# ground grid to feed (or None), the engine's Pending and the decoding seconds.
Submitted = namedtuple('Submitted', ['segmenter', 'jobs', 'grid', 'pending', 'decode'])


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

    def _take(self, wait=True):
        with self._cond:
            while wait and not self._stop and all(c.pending is None for c in self.cameras):
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
            start = time.perf_counter()
            with self.swapper.batch():  # a model swap happens between two batches
                held = self._submit(batch)
                # Overlap: once its forward ends, the next frames (if any wait) are submitted
                # before the held batch is published. A waiting swap ends the chain.
                while (held is not None and held.segmenter.overlaps and not self._stop
                       and not self.swapper.waiting):
                    held.pending.wait()
                    new = self._submit(self._take(wait=False))
                    self._publish(held)
                    held, start = new, self._add_busy(start)
                if held is not None and self._stop:
                    held.pending.wait()  # stopping: its outputs are not published
                elif held is not None:
                    self._publish(held)
            self._add_busy(start)

    def _add_busy(self, start):
        """Count the worker's seconds since start as busy; return the time now."""
        now = time.perf_counter()
        with self._cond:
            self._work.add({'busy': now - start}, 0)
        return now

    def _failed(self, cameras, exc, what):
        if not self._stop and self.context.ok():  # shutting down: the context may be gone
            for camera in cameras:
                self._fail(camera, f'{what} failed: {type(exc).__name__}: {exc}')

    def _decode(self, msg):
        limit = self.settings.max_input_pixels  # checked before decoding
        if isinstance(msg, CompressedImage):
            device = self.segmenter.device
            if device.type == 'cuda' and self.settings.decode_on_device and is_jpeg(msg):
                return compressed_to_tensor(msg, device, limit)  # nvjpeg: stays on the GPU
            return compressed_to_array(msg, limit)
        return image_to_array(msg, limit)

    def _submit(self, batch):
        """Decode a batch and submit it to the engine; return a Submitted, or None."""
        seg = self.segmenter
        if seg is None or not batch:
            return None
        t0 = time.perf_counter()
        enabled = self.settings.outputs
        grid = self.grid if self.grid is not None and self.grid.wanted() else None
        jobs = []
        try:
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
                return None
            compute = set().union(*(w for _, _, _, w in jobs))
            if grid is not None:
                compute.add('drivable')
            decode = time.perf_counter() - t0
            pending = seg.submit([frame for _, _, frame, _ in jobs], compute)
        except Exception as exc:  # noqa: B902 - the worker must survive any frame
            self._failed([camera for camera, _ in batch], exc, 'processing')
            return None
        return Submitted(seg, [(c, m, w) for c, m, _, w in jobs], grid, pending, decode)

    def _publish(self, held):
        """Publish the outputs of a Submitted batch (waiting for its engine work)."""
        try:
            results = held.pending.result()
            start = time.perf_counter()
            label_encoding = held.segmenter.classes.label_encoding
            for (camera, msg, wanted), result in zip(held.jobs, results):
                for name in wanted & result.keys():  # confidence: absent for class-id models
                    encoding = OUTPUT_ENCODINGS.get(name, label_encoding)
                    camera.publishers[name].publish(
                        array_to_image(result[name], encoding, msg.header))
                self._count_output(camera, msg)
            if held.grid is not None:
                held.grid.publish([(camera.name, msg.header, result['drivable'])
                                   for (camera, msg, _), result in zip(held.jobs, results)])
        except Exception as exc:  # noqa: B902 - the worker must survive any frame
            self._failed([camera for camera, _, _ in held.jobs], exc, 'processing')
            return
        seconds = dict(held.pending.timings, decode=held.decode,
                       publish=time.perf_counter() - start)
        with self._cond:
            self._work.add(seconds, len(held.jobs))

    def _count_output(self, camera, msg):
        now = self.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self._cond:
            stats = camera.stats
            stats.processed += 1
            stats.window_out += 1
            stats.error_streak = 0
            stats.add_latency((now - stamp) * 1e-9)

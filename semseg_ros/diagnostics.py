"""
The node's diagnostics: per-camera counters, the worker's time, and the statuses built from them.

The node (semseg_ros/node.py) counts frames into CameraStats and batches into WorkStats, and
every diagnostics period turns them into DiagnosticStatus messages with the functions here:
one for the node itself (only when something is wrong), one per camera and one for the model.
"""

import time

from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_msgs.msg import KeyValue
import numpy as np
from semseg_ros.core import swap

LATENCY_WINDOW = 200
# Consecutive failed frames after which diagnostics report ERROR instead of WARN.
ERROR_STREAK = 5
CALLBACK_WARN_SECONDS = 60.0  # a failed callback keeps the node's status WARN this long


class CameraStats:
    """Counters and latency samples of one camera, for diagnostics."""

    def __init__(self):
        self.received = 0
        self.processed = 0
        self.dropped = 0
        # Frames the publisher sent that never reached the node's callback (replaced in the
        # DDS reader, or lost on the way): gaps in its publication sequence numbers.
        self.lost = 0
        self.sequenced = False  # a sequence number was seen (this rmw and rclpy give them)
        self.last_sequence = None
        self.skipped = 0  # no subscriber for any enabled output
        self.errors = 0
        self.error_streak = 0
        self.last_error = ''
        self.last_input = None  # monotonic time of the last frame
        self.latency = []  # stamp to publish, seconds
        self.window_start = time.monotonic()
        self.window_in = 0
        self.window_out = 0

    def count_sequence(self, sequence):
        """
        Count the frames missing before this one from its publication sequence number.

        None or 0 (unknown: several publishers, or an rmw without them) starts anew, as does
        a number that goes back (a restarted publisher).
        """
        if not sequence:
            self.last_sequence = None
            return
        self.sequenced = True
        if self.last_sequence is not None and sequence > self.last_sequence + 1:
            self.lost += sequence - self.last_sequence - 1
        self.last_sequence = sequence

    def add_latency(self, seconds):
        """Record one stamp-to-publish latency."""
        self.latency.append(seconds)
        if len(self.latency) > LATENCY_WINDOW:
            del self.latency[:len(self.latency) - LATENCY_WINDOW]


class WorkStats:
    """Where the worker thread's time goes: cumulative seconds per stage, and a busy window."""

    STAGES = ('decode', 'preprocess', 'inference', 'postprocess', 'publish')

    def __init__(self):
        self.totals = dict.fromkeys(self.STAGES + ('busy',), 0.0)
        self.frames = 0
        self.window = dict.fromkeys(self.STAGES + ('busy',), 0.0)
        self.window_frames = 0
        self.window_start = time.monotonic()

    def add(self, seconds, frames):
        """Add one batch: seconds per stage (and 'busy', the whole batch) for `frames` frames."""
        for key, value in seconds.items():
            self.totals[key] += value
            self.window[key] += value
        self.frames += frames
        self.window_frames += frames

    def values(self, now):
        """Return the diagnostics values and start a new window."""
        elapsed = max(now - self.window_start, 1e-6)
        values = {'worker busy (%)': f'{100.0 * min(self.window["busy"] / elapsed, 1.0):.0f}'}
        if self.window_frames:
            values.update({f'{k} (ms/frame)': f'{1000.0 * self.window[k] / self.window_frames:.1f}'
                           for k in self.STAGES})
        values.update({f'{k} total (s)': f'{v:.3f}' for k, v in self.totals.items()})
        values['frames total'] = str(self.frames)
        self.window = dict.fromkeys(self.window, 0.0)
        self.window_frames = 0
        self.window_start = now
        return values


def key_values(values):
    """Return a dict of strings as a list of KeyValue."""
    return [KeyValue(key=k, value=v) for k, v in values.items()]


def node_status(node_name, error, configured, clock, callbacks, backend):
    """
    Return the node's own status, or None when configured and nothing to report.

    clock: the simulated-clock problem ('' when none); callbacks: the node's CallbackGuard.
    """
    failing = callbacks.recent(CALLBACK_WARN_SECONDS)
    if configured and not (error or clock or failing):
        return None
    status = DiagnosticStatus(name=f'{node_name}: node', hardware_id='none')
    if error:
        status.level, status.message = DiagnosticStatus.ERROR, error
    elif not configured:
        status.level, status.message = DiagnosticStatus.WARN, 'unconfigured'
    elif clock:
        status.level, status.message = DiagnosticStatus.WARN, clock
    else:  # a callback failed lately
        status.level = DiagnosticStatus.WARN
        status.message = f'{callbacks.count} callbacks failed (last: {callbacks.last})'
    values = {'model': backend, 'clock': clock or 'ok'}
    values.update(callbacks.values())
    status.values = key_values(values)
    return status


def camera_status(node_name, camera, lock, work, active, seg, settings, grid):
    """
    Return the status of one camera (a node.Camera).

    lock guards the camera's counters; work: the worker's values (WorkStats.values); active:
    whether the node is active; seg: the segmenter or None; grid: the GroundGrid or None.
    """
    now = time.monotonic()
    with lock:
        stats = camera.stats
        elapsed = max(now - stats.window_start, 1e-6)
        in_rate = stats.window_in / elapsed
        out_rate = stats.window_out / elapsed
        stats.window_in = stats.window_out = 0
        stats.window_start = now
        latency = np.array(stats.latency) * 1000.0
        last_input = stats.last_input
    status = DiagnosticStatus()
    status.name = f'{node_name}: camera {camera.name}'
    status.hardware_id = str(seg.device) if seg else 'none'
    subscribed = camera.subscription is not None
    # Stale counts from the newer of the last frame and the (re)subscription.
    since = max(last_input or 0.0, camera.subscribed_at or 0.0)
    if stats.error_streak >= ERROR_STREAK:
        status.level = DiagnosticStatus.ERROR
        status.message = f'{stats.error_streak} frames failed in a row: {stats.last_error}'
    elif not active:
        status.level = DiagnosticStatus.WARN
        status.message = 'inactive'
    elif not subscribed:
        status.level = DiagnosticStatus.OK
        status.message = 'idle: no subscriber, input not subscribed (lazy_input)'
    elif now - since > settings.stale_timeout:
        status.level = DiagnosticStatus.WARN
        status.message = 'stale: no input' if last_input is None or last_input < since \
            else f'stale: no input for {now - last_input:.1f} s'
    elif stats.error_streak:
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
        'input subscribed': str(subscribed).lower(),
        'errors': str(stats.errors),
        'last error': stats.last_error,
        'device': str(seg.device) if seg else 'none',
        'model': settings.backend,
        'runtime': seg.runtime.summary() if seg else 'none',
    }
    if stats.sequenced:  # absent where the publisher's sequence numbers are unknown
        values['frames lost before the node'] = str(stats.lost)
    values.update(work)  # the worker's time, shared by all cameras of the node
    if grid is not None:
        level, values['grid'] = grid.camera_status(camera.name)
        values['grids published'] = str(grid.published)
        if level > status.level:  # a grid waiting or refused is never 'ok'
            status.level, status.message = level, f'grid: {values["grid"]}'
    status.values = key_values(values)
    return status


def model_status(node_name, seg, settings, report):
    """Return the model's status; report: (level name, message, values) of ModelSwap.report."""
    level, message, values = report
    values.update({'backend': settings.backend, 'weights': settings.weights,
                   'classes': swap.class_summary(seg.classes)})
    return DiagnosticStatus(
        name=f'{node_name}: model', hardware_id=str(seg.device),
        level=getattr(DiagnosticStatus, level), message=message, values=key_values(values))

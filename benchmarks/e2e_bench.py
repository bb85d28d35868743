"""
End to end through DDS: publisher process -> node process(es) -> subscriber process.

Every participant runs in its own process, as on a robot: a publisher sends camera frames
(sensor_msgs/Image rgb8, or CompressedImage jpeg), the node (`python -m semseg_ros.node` with
config/semseg.yaml and -p overrides) segments them, a subscriber receives the outputs and the
node's /diagnostics. Per configuration (frame size, raw or compressed input, model, one camera /
three cameras in one node / three single-camera nodes) it reports:

- full speed: the publisher keeps `--window` frames (default 2) in flight per camera and sends
  the next one as soon as the subscriber has received all subscribed outputs of an earlier one
  (the subscriber acknowledges each stamp to the publisher through a pipe). With 2 in flight the
  node always has the next frame waiting when it finishes one, so it never idles and never has
  to drop, and the publisher spends no CPU on frames the node would throw away. Throughput =
  outputs received per second; latency = input header stamp (set at publish) to the receipt of
  the last subscribed output, which at full speed includes one frame of queueing by design.
- fixed rate: `--rate` Hz per camera (default `auto`: half the full-speed rate just measured,
  so frames do not queue); this latency is the one compared with the limits.
- work with no subscribers: node CPU while frames are published at `--idle-rate` Hz and nobody
  subscribes to any output (and with no input at all, for reference); with `lazy_input` (the
  node's default) the node does not even subscribe to its input then, so 0 frames arrive.
- node CPU (utime + stime from /proc/<pid>/stat over the full-speed phase, 100 % = one core),
  peak RSS (VmHWM), the node's own 'frames dropped' (from /diagnostics) and published - received.

Every node configuration runs once per entry of `--runtimes` (default `torch auto`): `torch`,
`onnxruntime`, `openvino`, `tensorrt`, `auto` (node parameter model.runtime), `bf16`
(model.runtime auto, precision bf16: OpenVINO where the CPU has bf16 units) or `int8`
(model.runtime openvino, precision int8, calibrated on `--calibration-folder`, checked on
`--validation-folder` when given). The node's own account of its runtime (`/diagnostics`
'runtime') is reported with each row.

Beside it, in the same run: the bare model forward (in a fresh process set up like the node:
its malloc settings, one thread for all torch work; no other process running; the model input
the node uses, batch 1 or 3; the runtime entry of the row, set up by the engine as in the node,
and timed on what the engine calls: the model's `logits`; right before and right after each
node run, the faster is the row's own limit). Each row is compared with the bare forward of its
own runtime and with the fastest bare forward of any runtime entry of the same precision (fp32,
bf16 or int8: the same labels) measured in the run for the same model, input and batch, and its
frames/s with the `torch` entry of the same configuration.
Runtime exports and int8 models go to $SEMSEG_ROS_EXPORT_CACHE (default build/runtimes here),
shared by the nodes and the bare forward, so each is made once. And the DDS transport of the
same images with no node in between (an echo process that answers each image with prebuilt
output images of the same sizes: publisher -> echo -> subscriber), for each Fast DDS profile of
`--dds-profiles`; the nodes run with `--node-dds-profile` (default config/fastdds_shm.xml).

    python benchmarks/e2e_bench.py [--sizes 480x360 1280x720 1920x1080]
        [--models espnet espnetv2] [--transport raw compressed] [--cameras 1 3 3x1]
        [--runtimes torch onnxruntime openvino auto bf16 int8] [--calibration-folder DIR]
        [--validation-folder MODEL=DATASET] [--seconds 10] [--markdown docs/PERFORMANCE.md]

Weights: the published files from $SEMSEG_ROS_CACHE (default ../shared/assets/models beside the
repository, when present); otherwise random weights in a TorchScript file written here (the
output says which; TorchScript files do not export to ONNX, so the other runtimes fall back to
torch). `--models tiny` is a one-layer random model for smoke tests, saved as a torch.export
archive, which every runtime can run.
"""

import argparse
import array
import collections
import contextlib
import json
import multiprocessing
import os
from pathlib import Path
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings

from bench_common import ASSETS
from bench_common import default_cache
from bench_common import machine
from bench_common import PARAMS
from bench_common import qos
from bench_common import ROOT
from bench_common import ros_start
from bench_common import ros_stop
from bench_common import SHM_PROFILE
from bench_common import write_section
import cv2
import numpy as np

MARK_BEGIN = '<!-- e2e_bench:begin -->'
MARK_END = '<!-- e2e_bench:end -->'
WEIGHT_FILES = {'espnet': 'espnet_p_2_q_8_camvid.pth',
                'espnetv2': 'espnetv2_s_2.0_city_1024x512.pth'}
OUTPUT_ENCODINGS = {'label': 'mono8', 'color': 'rgb8', 'overlay': 'rgb8', 'drivable': 'mono8',
                    'confidence': 'mono8'}
CAMERA_MODES = {'1': (1, 1), '3': (3, 1), '3x1': (3, 3)}  # mode: (cameras, nodes)
CAMERA_LABELS = {'1': '1', '3': '3 in 1 node', '3x1': '3 nodes'}
NODE_TIMEOUT = 180.0  # node start-up (imports, model load, warm-up) on a busy machine
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
RUNTIME_ENTRIES = ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'auto', 'bf16', 'int8')
EXPORT_CACHE = ROOT / 'build' / 'runtimes'  # as the Makefile: the shared folder is read-only
SETUP_TIMEOUT = 1800.0  # a bare forward that exports, races or quantizes the model first


# Helpers shared by the processes.
def camera_names(count):
    """Return the camera namespaces cam0, cam1, ..."""
    return [f'cam{i}' for i in range(count)]


def source_frame(width, height):
    """Return an RGB test frame: a CamVid image when the shared assets exist, else a pattern."""
    folder = ASSETS / 'camvid_val' / 'images'
    files = sorted(folder.glob('*.png')) if folder.is_dir() else []
    if files:
        bgr = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(bgr[:, :, ::-1])
    from semseg_ros.tools.camera_source import synthetic_frame
    frame = synthetic_frame(7, width, height)
    noise = np.random.default_rng(0).integers(0, 24, frame.shape, np.uint8)
    return frame + noise  # some texture, so JPEG sizes look like a camera's


def stamp_ns(header):
    """Return a header stamp in nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


# Publisher process.
def input_message(spec):
    """Build the input message (Image rgb8 or CompressedImage jpeg) of the spec's size."""
    from semseg_ros.io.image import array_to_image
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import Header
    frame = source_frame(spec['width'], spec['height'])
    if spec['transport'] == 'raw':
        return array_to_image(frame, 'rgb8', Header(frame_id='camera'))
    ok, jpeg = cv2.imencode('.jpg', frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    msg = CompressedImage()
    msg.header.frame_id = 'camera'
    msg.format = 'rgb8; jpeg compressed bgr8'
    msg.data = array.array('B', jpeg.tobytes())
    return msg


def publisher_main(control, acks, spec):
    """
    Publish frames to <camera>/image (or image/compressed) on commands from the orchestrator.

    Commands: ('rate', hz, seconds), ('window', frames, seconds, timeout), ('probe', period)
    until ('stop',), ('quit',). Each finished command answers ('done', [(camera, stamp_ns)]).
    `acks` brings (camera, stamp_ns) from the subscriber for every frame whose outputs arrived.
    """
    from sensor_msgs.msg import CompressedImage, Image
    context, node, _ = ros_start(spec['domain'], 'e2e_publisher')
    msg = input_message(spec)
    kind = Image if spec['transport'] == 'raw' else CompressedImage
    suffix = 'image' if spec['transport'] == 'raw' else 'image/compressed'
    pubs = [node.create_publisher(kind, f'{cam}/{suffix}', qos(True, 1))
            for cam in camera_names(spec['cameras'])]

    def publish(index):
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        pubs[index].publish(msg)
        return now

    def drain(timeout=0.0):
        done = []
        while acks.poll(timeout):
            done.append(acks.recv())
            timeout = 0.0
        return done

    control.send(('ready', len(msg.data)))
    while True:
        cmd = control.recv()
        drain()
        if cmd[0] == 'quit':
            break
        published = []
        if cmd[0] == 'rate':
            hz, seconds = cmd[1], cmd[2]
            start = time.monotonic()
            for tick in range(max(1, int(seconds * hz))):
                wait = start + tick / hz - time.monotonic()
                if wait > 0:
                    drain(wait)
                    wait = start + tick / hz - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                published += [(i, publish(i)) for i in range(len(pubs))]
            drain()
        elif cmd[0] == 'window':
            window, seconds, timeout = cmd[1], cmd[2], cmd[3]
            end = time.monotonic() + seconds
            flying = [{} for _ in pubs]  # stamp -> monotonic publish time
            last = [0.0] * len(pubs)
            recent = collections.deque([0.05], maxlen=20)  # round trips, s
            while True:
                now = time.monotonic()
                # Two frames sent back to back would meet in the node's keep-last-1 input
                # queue and the first would be lost: space them by a fraction of a round trip.
                gap = min(0.5, max(0.005, 0.3 * statistics.median(recent)))
                for i, stamps in enumerate(flying):
                    for stamp in [s for s, t in stamps.items() if now - t > timeout]:
                        del stamps[stamp]  # lost, or very late: do not wait for it
                    if now < end and len(stamps) < window and (not stamps or now - last[i] >= gap):
                        stamp = publish(i)
                        last[i] = stamps[stamp] = time.monotonic()
                        published.append((i, stamp))
                if now >= end:
                    break
                # Sleep until an acknowledgement comes, or the next thing to do: the end, a
                # frame's timeout, or the gap before a free slot may be filled.
                wake = end
                for i, stamps in enumerate(flying):
                    if stamps:
                        wake = min(wake, min(stamps.values()) + timeout)
                    if len(stamps) < window:
                        wake = min(wake, last[i] + gap if stamps else now)
                for i, stamp in drain(max(0.0, wake - time.monotonic())):
                    sent = flying[i].get(stamp)
                    if sent is not None:
                        recent.append(time.monotonic() - sent)
                    # Outputs come in order: older frames still in flight were dropped (or
                    # are late); free their slots so the node never runs dry.
                    for older in [s for s in flying[i] if s <= stamp]:
                        del flying[i][older]
        elif cmd[0] == 'probe':
            while not control.poll(cmd[1]):
                published += [(i, publish(i)) for i in range(len(pubs))]
                drain()
            control.recv()  # ('stop',)
        control.send(('done', published))
    ros_stop(context, node)


# Subscriber process.
def subscriber_main(control, acks, spec):
    """
    Receive the outputs and /diagnostics; acknowledge every complete frame to the publisher.

    Commands: ('subscribe', [outputs]), ('unsubscribe',), ('collect',) -> ('records', [(camera,
    stamp_ns, receipt_ns)], {status name: {key: value}}), ('quit',).
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    context, node, executor = ros_start(spec['domain'], 'e2e_subscriber')
    records = []
    partial = {}
    diagnostics = {}
    subs = []
    wanted = []

    def on_output(camera, name, msg):
        now = time.time_ns()
        key = (camera, stamp_ns(msg.header))
        got = partial.setdefault(key, set())
        got.add(name)
        if len(got) == len(wanted):
            del partial[key]
            records.append((camera, key[1], now))
            acks.send(key)

    def on_diagnostics(msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            values['level'] = int.from_bytes(status.level, 'little') \
                if isinstance(status.level, bytes) else int(status.level)
            values['message'] = status.message
            diagnostics[status.name] = values

    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, qos(True, 50))
    control.send(('ready',))
    while True:
        # Outputs are handled (and acknowledged) as they arrive; commands wait up to 50 ms.
        executor.spin_once(timeout_sec=0.05)
        if not control.poll():
            continue
        cmd = control.recv()
        if cmd[0] == 'quit':
            break
        if cmd[0] == 'subscribe':
            wanted = list(cmd[1])
            for camera, cam in enumerate(camera_names(spec['cameras'])):
                for name in wanted:
                    subs.append(node.create_subscription(
                        Image, f'{cam}/segmentation/{name}',
                        lambda msg, c=camera, n=name: on_output(c, n, msg), qos(True, 10)))
            control.send(('ok',))
        elif cmd[0] == 'unsubscribe':
            for sub in subs:
                node.destroy_subscription(sub)
            subs = []
            control.send(('ok',))
        elif cmd[0] == 'collect':
            control.send(('records', records, dict(diagnostics)))
            records = []
    ros_stop(context, node)


# Echo process: the transport with no node in between.
def echo_main(control, spec):
    """Answer every input image with prebuilt output images of the same size and header."""
    from semseg_ros.io.image import array_to_image
    from sensor_msgs.msg import CompressedImage, Image
    context, node, executor = ros_start(spec['domain'], 'e2e_echo')
    h, w = spec['height'], spec['width']
    replies = {name: array_to_image(np.zeros((h, w, 3 if enc == 'rgb8' else 1), np.uint8), enc)
               for name, enc in OUTPUT_ENCODINGS.items() if name in spec['outputs']}
    kind = Image if spec['transport'] == 'raw' else CompressedImage
    suffix = 'image' if spec['transport'] == 'raw' else 'image/compressed'
    for cam in camera_names(spec['cameras']):
        pubs = {name: node.create_publisher(Image, f'{cam}/segmentation/{name}', qos(True, 1))
                for name in replies}

        def answer(msg, pubs=pubs):
            for name, reply in replies.items():
                reply.header = msg.header
                pubs[name].publish(reply)

        node.create_subscription(kind, f'{cam}/{suffix}', answer, qos(False, 1))
    control.send(('ready',))
    while not control.poll():
        executor.spin_once(timeout_sec=0.05)
    ros_stop(context, node)


# The profiled node: a CPU-time-weighted stack sampler around semseg_ros.node.main.
class Sampler(threading.Thread):
    """
    Sample the Python stacks of all threads and weight each sample by that thread's CPU time.

    Every `interval` seconds the CPU time each Python thread used since the previous sample
    (from its pthread CPU clock) is charged to the line it is executing (self) and to every
    function on its stack (inclusive). Native threads (torch intra-op pool, DDS) are reported
    from /proc/self/task. No extra package needed; py-spy gives the same view from outside.
    """

    def __init__(self, window=None, interval=0.005):
        super().__init__(name='e2e_sampler', daemon=True)
        self.interval = interval
        self.window = window  # files <window>.start / .stop delimit the sampled window
        self.done = threading.Event()
        self.reset()

    def reset(self):
        """Forget everything sampled so far."""
        self.self_time = collections.Counter()
        self.total_time = collections.Counter()
        self.thread_time = collections.Counter()
        self.start_wall = time.monotonic()
        self.start_tasks = task_times()
        self.end_wall = self.end_tasks = None

    def _sampling(self, state):
        """Follow the window files: 'wait' -> 'on' -> 'off'."""
        if self.window is None or state == 'off':
            return state
        if state == 'wait' and Path(f'{self.window}.start').exists():
            self.reset()
            return 'on'
        if state == 'on' and Path(f'{self.window}.stop').exists():
            self.end_wall, self.end_tasks = time.monotonic(), task_times()
            return 'off'
        return state

    def run(self):
        """Sample until stopped."""
        last = {}
        state = 'on' if self.window is None else 'wait'
        count = 0
        while not self.done.wait(self.interval):
            count += 1
            if count % 10 == 0:
                state = self._sampling(state)
            if state == 'off':
                continue
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == self.ident:
                    continue
                try:
                    cpu = time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
                except (OSError, ValueError):
                    continue
                delta = cpu - last.get(ident, cpu)
                last[ident] = cpu
                if delta <= 0:
                    continue
                thread = names.get(ident, str(ident))
                self.thread_time[thread] += delta
                code = frame.f_code
                self.self_time[(thread, f'{short(code.co_filename)}:{frame.f_lineno} '
                                        f'{code.co_name}')] += delta
                seen = set()
                while frame is not None:
                    code = frame.f_code
                    key = f'{short(code.co_filename)}:{code.co_name}'
                    if key not in seen:
                        seen.add(key)
                        self.total_time[(thread, key)] += delta
                    frame = frame.f_back

    def report(self, top=25):
        """Return the profile as text."""
        wall = (self.end_wall or time.monotonic()) - self.start_wall
        tasks = self.end_tasks or task_times()
        native = collections.Counter()
        for tid, (name, ticks) in tasks.items():
            native[name] += ticks - self.start_tasks.get(tid, (name, 0))[1]
        process = sum(native.values()) / CLOCK_TICKS
        python = sum(self.thread_time.values()) * 1e-9
        lines = [f'wall {wall:.1f} s, process CPU {process:.1f} s ({100 * process / wall:.0f} % '
                 f'of one core); Python threads {python:.1f} s', '',
                 'CPU by OS thread name (all threads, /proc/self/task):']
        lines += [f'  {ticks / CLOCK_TICKS:8.2f} s  {name}'
                  for name, ticks in native.most_common(12)]
        lines += ['', 'CPU by Python thread:']
        lines += [f'  {ns * 1e-9:8.2f} s  {name}' for name, ns in self.thread_time.most_common()]
        for title, counter in (('inclusive (function)', self.total_time),
                               ('self (line)', self.self_time)):
            lines += ['', f'Top {top} {title}, % of all Python-thread CPU:']
            for (thread, key), ns in counter.most_common(top):
                lines.append(f'  {100 * ns * 1e-9 / max(python, 1e-9):5.1f} %  '
                             f'[{thread}] {key}')
        return '\n'.join(lines) + '\n'


def short(filename):
    """Return a file name relative to site-packages or the repository."""
    for marker in ('site-packages/', str(ROOT) + '/', 'lib/python3'):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def task_times():
    """Return {tid: (thread name, utime + stime ticks)} of this process's threads."""
    result = {}
    for task in Path('/proc/self/task').iterdir():
        try:
            name = (task / 'comm').read_text().strip()
            fields = (task / 'stat').read_text().rsplit(')', 1)[1].split()
            result[task.name] = (name, int(fields[11]) + int(fields[12]))
        except (OSError, IndexError, ValueError):
            continue
    return result


def profiled_node(out, ros_args):
    """Run semseg_ros.node.main under the Sampler and write the report to `out`."""
    from semseg_ros import node
    sampler = Sampler(window=out)
    sampler.start()
    try:
        return node.main(['semseg_node'] + ros_args)
    finally:
        sampler.done.set()
        sampler.join()
        Path(out).write_text(sampler.report())


# Process statistics.
def proc_stat(pid):
    """Return (utime, stime, minor faults) of a process, times in ticks (0s when gone)."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return np.array([int(fields[11]), int(fields[12]), int(fields[7])], np.int64)
    except (OSError, IndexError, ValueError):
        return np.zeros(3, np.int64)


def peak_rss_mb(pid):
    """Return VmHWM (peak resident memory) of a process in MiB."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return float('nan')


class CpuMeter:
    """CPU % (100 = one core) of a set of processes between start() and stop()."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.sys = self.faults = float('nan')

    def _sample(self):
        return sum((proc_stat(p) for p in self.pids), np.zeros(3, np.int64))

    def start(self):
        """Take the first sample."""
        self.t0 = time.monotonic()
        self.s0 = self._sample()

    def stop(self):
        """Return the CPU % since start(); .sys (kernel CPU %) and .faults (per s) too."""
        wall = max(time.monotonic() - self.t0, 1e-6)
        user, system, faults = self._sample() - self.s0
        self.sys = 100.0 * system / CLOCK_TICKS / wall
        self.faults = faults / wall
        return 100.0 * (user + system) / CLOCK_TICKS / wall


# Models and the bare forward.
def cache_dir(args):
    """Return the folder searched for the published weights."""
    return Path(args.cache or default_cache() or ASSETS / 'models')


def tiny_module():
    """Return the smoke-test model: a random 3 -> 12 channel 3x3 convolution (CamVid)."""
    import torch
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 12, 3, padding=1).eval()


def model_spec(name, width, height, args):
    """
    Return how the node and the bare forward get model `name` for frames of width x height.

    A dict: backend, weights (file), weights_kind ('published' or 'random ...'), input (the
    (w, h) the model runs at) and params (the node's -p overrides).
    """
    from semseg_ros.core.models import torchscript
    from semseg_ros.core.models.espnet import CAMVID_PREPROCESS
    from semseg_ros.core.models.espnetv2 import PREPROCESS as CITY_PREPROCESS
    work = Path(args.workdir)
    if name == 'espnet':
        native = args.espnet_input == 'native'
        size = CAMVID_PREPROCESS.input_size if native else (width, height)
        div = CAMVID_PREPROCESS.size_divisor
    elif name == 'espnetv2':
        size, div = CITY_PREPROCESS.input_size, CITY_PREPROCESS.size_divisor
    else:
        size, div = (width, height), 1
    size = tuple(-(-v // div) * div for v in size)
    published = cache_dir(args) / WEIGHT_FILES.get(name, '-')
    if name in WEIGHT_FILES and published.is_file():
        backend, weights, kind = name, str(published), 'published'
    elif name == 'tiny':
        backend, kind = 'export', 'random (torch.export archive written by the script)'
        weights = work / f'tiny_random_{size[0]}x{size[1]}.pt2'
        if not weights.is_file():
            weights.parent.mkdir(parents=True, exist_ok=True)
            write_tiny_model(weights)
        weights = str(weights)
    else:
        backend, kind = 'torchscript', 'random (TorchScript written by the script)'
        weights = work / f'{name}_random_{size[0]}x{size[1]}.pt'
        if not weights.is_file():
            weights.parent.mkdir(parents=True, exist_ok=True)
            write_random_model(name, size, weights, torchscript)
        weights = str(weights)
    params = [f'model.backend:={backend}', f'model.weights:={weights}', 'model.download:=false']
    if name == 'espnet' or name == 'tiny':
        params += [f'model.input_width:={size[0]}', f'model.input_height:={size[1]}']
    return {'name': name, 'backend': backend, 'weights': weights, 'weights_kind': kind,
            'input': size, 'params': params}


def write_tiny_model(path):
    """Write the smoke-test model as a torch.export archive (TorchScript does not export)."""
    from semseg_ros.core.models import export as program
    from semseg_ros.core.models.base import Preprocess
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program.save(tiny_module(), str(path), num_classes=12, preprocess=Preprocess(),
                     class_set='camvid')


def write_random_model(name, size, path, torchscript):
    """Write a random-weight TorchScript file of ESPNet or ESPNetv2 traced at `size` (w, h)."""
    import torch
    from semseg_ros.core.models.espnet import ESPNet
    from semseg_ros.core.models.espnetv2 import ESPNetv2
    torch.manual_seed(0)
    model = (ESPNet() if name == 'espnet' else ESPNetv2()).eval()
    classes, pre, class_set = model.num_classes, model.preprocess, model.class_set
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter('ignore')
        scripted = torch.jit.trace(model, torch.zeros(1, 3, size[1], size[0]),
                                   check_trace=False)
    torchscript.save(scripted, str(path), num_classes=classes, preprocess=pre,
                     class_set=class_set)


def load_model(spec, device):
    """Return (model, torch device) of a model spec, as the node loads it."""
    from semseg_ros.core.engine import select_device
    from semseg_ros.core.models import create_model
    dev = select_device(device)
    options = {'weights': spec['weights']}
    if spec['backend'] != 'torchscript':
        options['download'] = False
    return create_model(spec['backend'], **options).eval().to(dev), dev


def runtime_setup(entry, args, model=''):
    """
    Return how a --runtimes entry runs: a dict of runtime, precision, int8 and params.

    int8 (the Int8Plan fields of precision int8, else None) and params (the node's -p
    overrides) come from --calibration-folder and the model's --validation-folder entry.
    """
    setup = {'entry': entry, 'runtime': entry, 'precision': 'fp32', 'int8': None,
             'params': [f'model.runtime:={entry}']}
    if entry == 'bf16':
        setup.update(runtime='auto', precision='bf16',
                     params=['model.runtime:=auto', 'precision:=bf16'])
    if entry != 'int8':
        return setup
    folders = {'calibration_folder': args.calibration_folder,
               'validation_folder': args.validation_folder.get(model, '')}
    setup.update(runtime='openvino', precision='int8', int8=folders,
                 params=['model.runtime:=openvino', 'precision:=int8'])
    setup['params'] += [f'int8.{k}:={v}' for k, v in folders.items() if v]
    return setup


def bare_forward(model, dev, size, batch, budget=3.0):
    """Return the median ms of model(batch) on a random (batch, 3, h, w) input (engine_bench)."""
    import torch
    w, h = size
    x = torch.randn(batch, 3, h, w, device=dev)

    def once():
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        return (time.perf_counter() - start) * 1000.0

    first = once()
    repeat = int(min(15, max(2, budget * 1000.0 / max(first, 1e-3))))
    return statistics.median(once() for _ in range(repeat))


def bare_forward_main(spec_text, batch, device, setup_text=''):
    """
    Print the bare forward of a model spec as JSON, in a process set up like the node's.

    A fresh process with the node's malloc settings (retain_memory) and one thread doing all
    torch work: the limit does not inherit this long-lived process's allocator or OpenMP state.
    The model runs on the runtime of the setup (runtime_setup; default torch), prepared by the
    engine as in the node; what is timed is what the engine calls with upsample 'logits'. JSON:
    {'ms', 'runtime': the engine's runtime summary}, or {'skip': why} when the runtime cannot
    run the model here (the node would refuse it too).
    """
    from semseg_ros.core.engine import Segmenter
    from semseg_ros.core.memory import retain_freed_memory
    from semseg_ros.core.runtimes import Reporter, RuntimeSetupError
    from semseg_ros.tools.model import class_set_of
    retain_freed_memory()
    warnings.filterwarnings('ignore', category=FutureWarning)
    spec = json.loads(spec_text)
    setup = json.loads(setup_text) if setup_text else {'runtime': 'torch', 'precision': 'fp32'}
    model, dev = load_model(spec, device)
    size = tuple(spec['input'])

    def note(line):
        print(line, file=sys.stderr, flush=True)

    try:
        segmenter = Segmenter(model, class_set_of(model), device=dev,
                              precision=setup['precision'], input_size=size,
                              runtime=setup['runtime'], warmup=False, int8=setup.get('int8'),
                              report=Reporter(note, note))
    except RuntimeSetupError as exc:
        print(json.dumps({'skip': str(exc)}))
        return 0
    forward = getattr(segmenter.model, 'logits', segmenter.model)
    print(json.dumps({'ms': bare_forward(forward, dev, size, int(batch)),
                      'runtime': segmenter.runtime.summary()}))
    return 0


# The orchestrator.
class Child:
    """A spawned helper process with a control pipe."""

    def __init__(self, target, *args):
        ctx = multiprocessing.get_context('spawn')
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child,) + args, daemon=True)
        self.process.start()
        self.reply = None

    def ready(self, timeout=120.0):
        """Wait for the child's first message ('ready', ...) and return self."""
        self.reply = self.wait(timeout)
        return self

    @property
    def pid(self):
        """Return the process id."""
        return self.process.pid

    def send(self, *cmd):
        """Send a command without waiting."""
        self.conn.send(cmd)

    def wait(self, timeout):
        """Return the next message of the child; raise when none comes in time."""
        if not self.conn.poll(timeout):
            raise RuntimeError(f'{self.process.name}: no answer in {timeout:.0f} s')
        return self.conn.recv()

    def call(self, *cmd, timeout=60.0):
        """Send a command and return its answer."""
        self.send(*cmd)
        return self.wait(timeout)

    def close(self):
        """Ask the child to quit, then make sure it is gone."""
        if self.process.is_alive():
            try:
                self.conn.send(('quit',))
            except (OSError, BrokenPipeError):
                pass
            self.process.join(10.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)


class Nodes:
    """The semseg node process(es) of one configuration."""

    def __init__(self, args, spec, size, transport, mode, env, log_name):
        cameras, nodes = CAMERA_MODES[mode]
        base = ['--ros-args', '--params-file', str(PARAMS),
                '-p', f'device:={args.device}', '-p', 'diagnostics_period:=0.5',
                '-p', f'input_transport:={transport}']
        for param in spec['params'] + args.node_params:
            base += ['-p', param]
        commands = []
        if nodes == 1 and cameras > 1:
            cams = ','.join(camera_names(cameras))
            commands.append(base + ['-p', f'cameras:=[{cams}]'])
        else:
            commands += [base + ['-r', f'__ns:=/{cam}'] for cam in camera_names(nodes)]
        self.logs = []
        self.processes = []
        self.profiles = []
        logdir = Path(args.workdir) / 'logs'
        logdir.mkdir(parents=True, exist_ok=True)
        for i, command in enumerate(commands):
            if args.profile_nodes:
                out = Path(args.profile_nodes) / f'{log_name}_node{i}.txt'
                out.parent.mkdir(parents=True, exist_ok=True)
                for edge in ('start', 'stop'):
                    Path(f'{out}.{edge}').unlink(missing_ok=True)
                cmd = [sys.executable, str(Path(__file__).resolve()), '--profiled-node',
                       str(out)] + command
                self.profiles.append(out)
            else:
                cmd = [sys.executable, '-m', 'semseg_ros.node'] + command
            log = open(logdir / f'{log_name}_node{i}.log', 'w')
            self.logs.append(log)
            self.processes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT))
        self.cameras = cameras

    @property
    def pids(self):
        """Return the process ids."""
        return [p.pid for p in self.processes]

    def profile_window(self, edge):
        """Tell the samplers of profiled nodes to start or stop ('start', 'stop')."""
        for out in self.profiles:
            Path(f'{out}.{edge}').touch()

    def check(self):
        """Raise with the log tail when a node has exited."""
        for process, log in zip(self.processes, self.logs):
            if process.poll() is not None:
                log.flush()
                tail = Path(log.name).read_text()[-2000:]
                raise RuntimeError(f'node exited with {process.returncode}:\n{tail}')

    def peak_rss(self):
        """Return the summed VmHWM of the nodes in MiB."""
        return sum(peak_rss_mb(pid) for pid in self.pids)

    def stop(self):
        """SIGINT the nodes (they write their profiles) and wait for them."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(15.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
        for log in self.logs:
            log.close()


def percentiles(values):
    """Return (p50, p95, p99) of values, NaN when empty."""
    if not values:
        return (float('nan'),) * 3
    return tuple(float(np.percentile(values, q)) for q in (50, 95, 99))


class Run:
    """Publisher + subscriber (+ nodes or echo) of one configuration, and its phases."""

    def __init__(self, args, domain, cameras, size, transport, env):
        self.args = args
        spec = {'domain': domain, 'cameras': cameras, 'width': size[0], 'height': size[1],
                'transport': transport, 'outputs': args.outputs}
        self.spec = spec
        ctx = multiprocessing.get_context('spawn')
        ack_reader, ack_writer = ctx.Pipe(duplex=False)
        with patched_environ(env):
            self.sub = Child(subscriber_main, ack_writer, spec)
            self.pub = Child(publisher_main, ack_reader, spec)
        self.sub.ready()
        self.input_bytes = self.pub.ready().reply[1]
        self.records = []
        self.diagnostics = {}

    def collect(self):
        """Fetch new records and the latest diagnostics from the subscriber."""
        _, records, diagnostics = self.sub.call('collect')
        self.records += records
        self.diagnostics.update(diagnostics)
        return records

    def pump(self, seconds, check=None):
        """Collect for `seconds` (and run check() between collections)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            self.collect()
            if check is not None:
                check()

    def publish(self, *cmd, check=None, during=None):
        """Run a publisher command, collecting meanwhile; return the published stamps."""
        self.pub.send(*cmd)
        if during is not None:
            during()
        while not self.pub.conn.poll(0.2):
            self.collect()
            if check is not None:
                check()
        reply = self.pub.conn.recv()
        return reply[1]

    def probe(self, check=None, timeout=NODE_TIMEOUT):
        """Send a frame every 0.3 s until every camera got an answer; return the latency."""
        self.pub.send('probe', 0.3)
        end = time.monotonic() + timeout
        seen = set()
        latency = []
        while len(seen) < self.spec['cameras']:
            if time.monotonic() > end:
                raise RuntimeError('no output arrived: the node (or echo) never answered')
            for camera, stamp, receipt in self.collect():
                seen.add(camera)
                latency.append((receipt - stamp) * 1e-9)
            if check is not None:
                check()
            time.sleep(0.1)
        self.pub.call('stop')
        return max(latency)

    def phase(self, cmd, check=None, meter=None):
        """Run one measured phase; return its metrics."""
        before = dict(self.diagnostics)
        start_index = len(self.records)
        t0 = time.time_ns()
        harness = CpuMeter([self.pub.pid, self.sub.pid, os.getpid()])
        harness.start()
        if meter is not None:
            meter.start()
        published = self.publish(*cmd, check=check)
        t1 = time.time_ns()
        cpu = meter.stop() if meter is not None else float('nan')
        sys_cpu = meter.sys if meter is not None else float('nan')
        faults = meter.faults if meter is not None else float('nan')
        harness_cpu = harness.stop()
        wanted = set(published)
        # Grace: wait for frames still in flight (late reliable retransmissions included).
        got = {(c, s) for c, s, _ in self.records[start_index:]}
        lat = [(r - s) * 1e-9 for c, s, r in self.records[start_index:] if (c, s) in wanted]
        grace = max(self.args.grace, 2.5 * (statistics.median(lat) if lat else 1.0))
        end = time.monotonic() + grace
        settle = time.monotonic() + 0.7  # one more diagnostics period
        while time.monotonic() < max(end if not wanted <= got else 0, settle):
            time.sleep(0.1)
            got |= {(c, s) for c, s, _ in self.collect()}
        records = [r for r in self.records[start_index:] if (r[0], r[1]) in wanted]
        latencies = [(r - s) * 1e-6 for _, s, r in records]
        in_window = sum(1 for _, _, r in self.records[start_index:] if t0 <= r <= t1)
        seconds = (t1 - t0) * 1e-9
        return {'throughput': in_window / seconds, 'seconds': seconds,
                'latency_ms': percentiles(latencies), 'published': len(wanted),
                'received': len(records), 'lost': len(wanted) - len(records),
                'node_dropped': diag_delta(before, self.diagnostics, 'frames dropped'),
                'cpu': cpu, 'sys_cpu': sys_cpu, 'faults_per_s': faults,
                'harness_cpu': harness_cpu,
                'work': work_split(before, self.diagnostics, in_window / seconds)}

    def close(self):
        """Stop publisher and subscriber."""
        self.pub.close()
        self.sub.close()


@contextlib.contextmanager
def patched_environ(env):
    """Replace os.environ (inherited by spawned children) inside the block."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def diag_delta(before, after, key):
    """Return the summed increase of a diagnostics counter over the camera statuses."""
    total = 0
    for name, values in after.items():
        if key in values:
            try:
                total += int(values[key]) - int(before.get(name, {}).get(key, 0))
            except ValueError:
                pass
    return total


WORK_STAGES = ('decode', 'preprocess', 'inference', 'postprocess', 'publish', 'busy')


def work_totals(diagnostics):
    """Return {node: {stage: seconds, 'frames': n}} from the nodes' cumulative work values."""
    nodes = {}
    for name, values in diagnostics.items():
        if 'frames total' not in values:
            continue
        node = name.split(': camera', 1)[0]  # each camera status repeats its node's totals
        try:
            nodes[node] = dict({k: float(values[f'{k} total (s)']) for k in WORK_STAGES},
                               frames=int(values['frames total']))
        except (KeyError, ValueError):
            pass
    return nodes


def work_split(before, after, throughput):
    """
    Return where the nodes' worker threads spent a phase: ms per frame of each stage, and busy.

    busy_pct = the share of the time the worker was processing (mean over the nodes) at the
    phase's output rate; the rest it waited for a frame or for the GIL between frames.
    """
    start, end = work_totals(before), work_totals(after)
    if not end:
        return {}
    delta = {k: sum(end[n][k] - start.get(n, {}).get(k, 0.0) for n in end)
             for k in WORK_STAGES + ('frames',)}
    frames = max(delta['frames'], 1)
    split = {k: 1000.0 * delta[k] / frames for k in WORK_STAGES}
    split['busy_pct'] = 100.0 * split['busy'] * 1e-3 * throughput / len(end)
    split['frames'] = delta['frames']
    return split


def work_text(split):
    """Return 'decode/pre/inf/post/publish ms, busy %' of a work split, or '-'."""
    if not split:
        return '-'
    ms = '/'.join(fmt(split[k], 0 if split[k] >= 10 else 1) for k in WORK_STAGES[:-1])
    return f'{ms}; {fmt(split["busy_pct"], 0)} %'


def child_env(args, domain, profile):
    """Return the environment of every ROS process of a configuration."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain)
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    env.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    env.setdefault('ROS_LOG_DIR', str(ROOT / 'build' / 'ros_log'))
    # The nodes and the bare forward share one export cache: each export is made once.
    env.setdefault('SEMSEG_ROS_EXPORT_CACHE', str(EXPORT_CACHE))
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    for var in ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE'):
        env.pop(var, None)
        if profile != 'none':
            env[var] = str(Path(profile).resolve())  # Fast DDS 2.x / 3.x names
    return env


def node_child_env(args, domain, profile):
    """Return the environment of a node process: child_env plus --node-env."""
    env = child_env(args, domain, profile)
    env.update(item.split('=', 1) for item in args.node_env)
    return env


class Skipped(Exception):
    """A configuration that cannot run here (the reason is reported, the run goes on)."""


class Bench:
    """The whole benchmark: configurations, limits, tables."""

    def __init__(self, args):
        self.args = args
        self.domains = list(range(args.domains[0], args.domains[1] + 1))
        self.domain_index = 0
        self.nodes_rows = []
        self.echo_rows = []
        self.forward = {}  # (weights, input, batch, runtime entry) -> [ms]
        self.bare_runtimes = {}  # the same keys -> the runtime summary of the bare forward
        self.weights = {}
        self.log = print
        self.failures = []
        self.skipped = []

    def domain(self):
        """Return the next ROS domain id (a fresh one per configuration)."""
        domain = self.domains[self.domain_index % len(self.domains)]
        self.domain_index += 1
        return domain

    def bare(self, spec, batch, setup):
        """Measure the bare forward ms of a model spec, batch and runtime now; keep the sample."""
        env = node_child_env(self.args, self.domains[0], 'none')
        cmd = [sys.executable, str(Path(__file__).resolve()), '--bare-forward',
               json.dumps(spec), str(batch), self.args.device, json.dumps(setup)]
        key = (spec['weights'], spec['input'], batch, setup['entry'])
        # The first one of a runtime may export, race or quantize the model (then cached).
        timeout = NODE_TIMEOUT + 120 if key in self.forward else SETUP_TIMEOUT
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f'bare forward failed: {done.stderr[-1500:]}')
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if 'skip' in result:
            raise Skipped(result['skip'])
        self.forward.setdefault(key, []).append(result['ms'])
        self.bare_runtimes[key] = result['runtime']
        return result['ms']

    def echo(self, size, transport, cameras, profile):
        """Measure publisher -> echo -> subscriber for one size, transport and camera count."""
        args = self.args
        domain = self.domain()
        env = child_env(args, domain, profile)
        with patched_environ(env):
            echo = Child(echo_main, {'domain': domain, 'cameras': cameras, 'width': size[0],
                                     'height': size[1], 'transport': transport,
                                     'outputs': args.outputs})
        run = Run(args, domain, cameras, size, transport, env)
        echo.ready()
        try:
            run.sub.call('subscribe', args.outputs)
            first = run.probe()
            run.publish('window', args.window, max(1.0, 1.5 * first), 5.0)
            run.pump(min(3.0, 1.5 * first))
            full = run.phase(('window', args.window, args.seconds, 5.0),
                             meter=CpuMeter([echo.pid]))
            rate = args.echo_rate or max(1.0, 0.5 * full['throughput'] / cameras)
            fixed = run.phase(('rate', rate, args.seconds))
        finally:
            echo.close()
            run.close()
        row = {'size': size, 'transport': transport, 'cameras': cameras, 'profile': profile,
               'input_bytes': run.input_bytes, 'full': full, 'rate': rate, 'fixed': fixed}
        self.echo_rows.append(row)
        self.log(f'  echo {size_text(size)} {transport} x{cameras} [{profile_name(profile)}]: '
                 f'{full["throughput"]:.1f}/s, fixed {rate:.1f} Hz p50 '
                 f'{fixed["latency_ms"][0]:.1f} ms, lost {full["lost"]}+{fixed["lost"]}')
        return row

    def node(self, model, size, transport, mode, profile, entry='torch'):
        """Measure one node configuration on one --runtimes entry."""
        args = self.args
        spec = model_spec(model, size[0], size[1], args)
        self.weights[model] = spec['weights_kind']
        setup = runtime_setup(entry, args, model)
        if entry == 'int8' and not args.calibration_folder:
            raise Skipped('int8 needs frames to calibrate on: give --calibration-folder')
        cameras, count = CAMERA_MODES[mode]
        batch = cameras if count == 1 else 1
        forward_before = self.bare(spec, batch, setup)  # the limit right before and after
        domain = self.domain()
        env = child_env(args, domain, profile)
        name = f'{model}_{size_text(size)}_{transport}_{mode}_{entry}'
        node_spec = dict(spec, params=spec['params'] + setup['params'])
        nodes = Nodes(args, node_spec, size, transport, mode,
                      node_child_env(args, domain, profile), name)
        run = None
        try:
            run = Run(args, domain, cameras, size, transport, env)
            end = time.monotonic() + NODE_TIMEOUT
            while sum(1 for v in run.diagnostics.values() if 'frames received' in v) < cameras:
                if time.monotonic() > end:
                    raise RuntimeError('the node published no camera diagnostics')
                nodes.check()
                run.pump(0.3)
            meter = CpuMeter(nodes.pids)
            meter.start()
            run.pump(args.idle_seconds, nodes.check)
            quiet_cpu = meter.stop()
            before = dict(run.diagnostics)
            idle = []

            def idle_window():
                run.pump(1.0)
                meter.start()
                run.pump(args.idle_seconds)
                idle.append(meter.stop())

            run.publish('rate', args.idle_rate, args.idle_seconds + 1.5, check=nodes.check,
                        during=idle_window)
            run.pump(0.7)
            idle_cpu = idle[0]
            idle_frames = diag_delta(before, run.diagnostics, 'frames received')
            idle_out = diag_delta(before, run.diagnostics, 'frames processed')
            run.sub.call('subscribe', args.outputs)
            first = run.probe(nodes.check)
            run.publish('window', args.window, max(1.0, 1.5 * first), 5.0 + 3 * first,
                        check=nodes.check)
            run.pump(min(3.0, 1.5 * first), nodes.check)  # let the warm-up frames drain
            timeout = max(5.0, 4 * first)
            nodes.profile_window('start')
            full = run.phase(('window', args.window, args.seconds, timeout), nodes.check,
                             CpuMeter(nodes.pids))
            nodes.profile_window('stop')
            rate = args.rate if args.rate != 'auto' else \
                max(0.1, 0.5 * full['throughput'] / cameras)
            rate = float(rate)
            fixed = run.phase(('rate', rate, max(args.seconds, 3.0 / rate)), nodes.check,
                              CpuMeter(nodes.pids))
            device = next((v.get('device') for v in run.diagnostics.values() if 'device' in v),
                          args.device)
            chosen = sorted({v['runtime'] for v in run.diagnostics.values() if 'runtime' in v})
            rss = nodes.peak_rss()
        finally:
            if run is not None:
                run.close()
            nodes.stop()
        # The faster of the two: the one least disturbed by other load on the machine.
        forward = min(forward_before, self.bare(spec, batch, setup))
        bare_runtime = self.bare_runtimes[(spec['weights'], spec['input'], batch, entry)]
        row = {'model': model, 'weights': spec['weights_kind'], 'input': spec['input'],
               'weights_file': spec['weights'], 'runtime': entry,
               'node_runtime': '; '.join(chosen), 'bare_runtime': bare_runtime,
               'size': size, 'transport': transport, 'mode': mode, 'cameras': cameras,
               'nodes': count, 'profile': profile, 'batch': batch, 'forward_ms': forward,
               'bare_rate': 1000.0 * batch / forward, 'full': full, 'rate': rate, 'fixed': fixed,
               'quiet_cpu': quiet_cpu, 'idle_cpu': idle_cpu, 'idle_frames': idle_frames,
               'idle_outputs': idle_out, 'rss_mb': rss, 'device': device,
               'profiles': [str(p) for p in nodes.profiles]}
        self.nodes_rows.append(row)
        f = full['latency_ms']
        self.log(f'  node {model} {size_text(size)} {transport} {CAMERA_LABELS[mode]} '
                 f'runtime {entry}: node {row["node_runtime"] or "?"}; bare forward '
                 f'{bare_runtime}')
        self.log(f'  node {model} {size_text(size)} {transport} {CAMERA_LABELS[mode]} '
                 f'{entry}: '
                 f'{full["throughput"]:.2f}/s (bare forward {row["bare_rate"]:.2f}/s), p50 '
                 f'{f[0]:.0f} ms; fixed {rate:.2f} Hz p50 {fixed["latency_ms"][0]:.0f} ms; '
                 f'CPU {full["cpu"]:.0f} % (kernel {full["sys_cpu"]:.0f} %, '
                 f'{full["faults_per_s"]:.0f} page faults/s; publisher + subscriber + this '
                 f'process '
                 f'{full["harness_cpu"]:.0f} %), idle {idle_cpu:.1f} % ({idle_frames} frames in); '
                 f'RSS {rss:.0f} MiB; worker per frame decode/pre/inf/post/publish ms, '
                 f'busy: {work_text(full["work"])}')
        return row

    def run(self):
        """Run every configuration asked for."""
        args = self.args
        for size in args.sizes:
            for transport in args.transport:
                counts = sorted({CAMERA_MODES[m][0] for m in args.cameras})
                if not args.no_echo:
                    for profile in args.dds_profiles:
                        for cameras in counts:
                            self.guard(self.echo, size, transport, cameras, profile)
                for model in [] if args.echo_only else args.models:
                    for mode in args.cameras:
                        for entry in args.runtimes:
                            self.guard(self.node, model, size, transport, mode,
                                       args.node_dds_profile, entry)

    def guard(self, function, *params):
        """Run one configuration; a failure is reported and the benchmark goes on."""
        try:
            return function(*params)
        except Skipped as exc:
            self.log(f'  skipped {function.__name__}{params}: {exc}')
            self.skipped.append(f'{function.__name__} {params}: {exc}')
            return None
        except Exception as exc:  # noqa: B902 - one broken configuration must not end the run
            self.log(f'  FAILED {function.__name__}{params}: {type(exc).__name__}: {exc}')
            self.failures.append(f'{function.__name__} {params}: {exc}')
            return None


def size_text(size):
    """Return 'WxH'."""
    return f'{size[0]}x{size[1]}'


def profile_name(profile):
    """Return a short name of a Fast DDS profile argument."""
    return 'default' if profile == 'none' else Path(profile).name


def fmt(value, digits=1):
    """Format a number, '-' for NaN."""
    if value is None or value != value:
        return '-'
    return f'{value:.{digits}f}'


def ms_text(value):
    """Format milliseconds: two decimals below 1 ms (small models), else one."""
    return fmt(value, 2 if value < 1.0 else 1)


def lat_text(values, digits=0):
    """Return 'p50 / p95 / p99'."""
    return ' / '.join(fmt(v, digits) for v in values)


def lost_text(full, fixed):
    """Return 'lost/published; lost/published' of the full-speed and fixed-rate phases."""
    return (f'{full["lost"]}/{full["published"]}; {fixed["lost"]}/{fixed["published"]}')


def runtime_text(entry, summary):
    """Return 'entry -> runtime run' from a runtime summary (entry alone when they agree)."""
    if not summary:
        return entry
    name = summary.split(' ', 1)[0]
    if entry == 'int8' and name == 'openvino':
        name += ' int8' if ', int8: ' in summary else ' fp32 (int8 refused)'
    elif 'fell back' in summary:
        name += ' (fell back)'
    return entry if name == entry else f'{entry} -> {name}'


def precision_of(entry):
    """Return the precision of a runtime entry (bf16 and int8 give other labels than fp32)."""
    return entry if entry in ('bf16', 'int8') else 'fp32'


def compare_rows(bench):
    """
    Return every node row's runtime comparison as a dict (also used by the markdown).

    own: the row's bare forward (its runtime, right before and after it); fastest: the fastest
    bare forward sample of any runtime entry of the same precision in the run for the same
    model file, input and batch (the limit with the same labels: an fp32 row is not held to a
    bf16 forward); torch: the row's frames/s over that of the torch entry of the same
    configuration.
    """
    fastest = {}
    for key, samples in bench.forward.items():
        group = key[:3] + (precision_of(key[3]),)
        best = fastest.get(group)
        if best is None or min(samples) < best[0]:
            fastest[group] = (min(samples), runtime_text(key[3], bench.bare_runtimes.get(key)))
    torch_rate = {(r['model'], r['size'], r['transport'], r['mode']): r['full']['throughput']
                  for r in bench.nodes_rows if r['runtime'] == 'torch'}
    rows = []
    for r in bench.nodes_rows:
        rate = r['full']['throughput']
        best_ms, best_entry = fastest.get(
            (r['weights_file'], r['input'], r['batch'], precision_of(r['runtime'])),
            (r['forward_ms'], r['runtime']))
        reference = torch_rate.get((r['model'], r['size'], r['transport'], r['mode']))
        rows.append({
            'model': r['model'], 'input': r['input'], 'size': r['size'],
            'transport': r['transport'], 'mode': r['mode'], 'batch': r['batch'],
            'runtime': r['runtime'], 'node_runtime': r['node_runtime'],
            'bare_runtime': r['bare_runtime'], 'throughput': rate,
            'own_ms': r['forward_ms'], 'own_ratio': rate / r['bare_rate'],
            'fastest_ms': best_ms, 'fastest_runtime': best_entry,
            'fastest_ratio': rate * best_ms / (1000.0 * r['batch']),
            'torch_speedup': rate / reference if reference else float('nan')})
    return rows


def target_text(value, target, digits=0, scale=100.0, unit=' %'):
    """Return a ratio with its unit and ' ok' / ' missed' against the target."""
    if value != value:
        return '-'
    return (f'{fmt(scale * value, digits)}{unit} '
            + ('ok' if value >= target else 'missed'))


def nodes_table(rows):
    """Return the markdown table of the node configurations."""
    lines = ['| model (input) | frame | input | cameras | runtime (node) | full speed out/s | '
             'full speed p50 / p95 / p99 ms | fixed rate Hz | fixed p50 / p95 / p99 ms | lost / '
             'published (full; fixed) | node dropped | node CPU % (kernel) | no-subscriber '
             'CPU % (frames in) | '
             'peak RSS MiB | node worker per frame at full speed: decode / pre / inference / '
             'post / publish ms; busy % |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        full, fixed = r['full'], r['fixed']
        lines.append(
            f'| {r["model"]} ({size_text(r["input"])}) | {size_text(r["size"])} | '
            f'{r["transport"]} | {CAMERA_LABELS[r["mode"]]} | '
            f'{runtime_text(r["runtime"], r["node_runtime"])} | {fmt(full["throughput"], 2)} | '
            f'{lat_text(full["latency_ms"])} | {fmt(r["rate"], 2)} | '
            f'{lat_text(fixed["latency_ms"])} | {lost_text(full, fixed)} | '
            f'{full["node_dropped"] + fixed["node_dropped"]} | '
            f'{fmt(full["cpu"], 0)} ({fmt(full["sys_cpu"], 0)}) | {fmt(r["idle_cpu"])} '
            f'({r["idle_frames"]}) | '
            f'{fmt(r["rss_mb"], 0)} | {work_text(full["work"])} |')
    return '\n'.join(lines)


def runtimes_table(bench):
    """Return the markdown table of every node row against the bare forwards of the runtimes."""
    lines = ['| model (input) | frame | input | cameras | runtime (node) | full speed out/s | '
             'own-runtime bare forward ms (runtime) | node / own-runtime bare forward | '
             'fastest bare forward ms (runtime) | node / fastest bare forward (target >= 85 %) '
             '| node out/s vs torch (target >= 1.5 x) |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in compare_rows(bench):
        speedup = ('reference' if r['runtime'] == 'torch' else
                   target_text(r['torch_speedup'], 1.5, 2, 1.0, ' x'))
        lines.append(
            f'| {r["model"]} ({size_text(r["input"])}) | {size_text(r["size"])} | '
            f'{r["transport"]} | {CAMERA_LABELS[r["mode"]]} | '
            f'{runtime_text(r["runtime"], r["node_runtime"])} | {fmt(r["throughput"], 2)} | '
            f'{ms_text(r["own_ms"])} ({runtime_text(r["runtime"], r["bare_runtime"])}) | '
            f'{fmt(100.0 * r["own_ratio"], 0)} % | {ms_text(r["fastest_ms"])} '
            f'({r["fastest_runtime"]}) | {target_text(r["fastest_ratio"], 0.85)} | '
            f'{speedup} |')
    return '\n'.join(lines)


def runtime_notes(bench):
    """Return the runtimes the nodes reported in /diagnostics, one line per model and entry."""
    seen = {}
    for r in bench.nodes_rows:
        key = (r['model'], size_text(r['input']), r['runtime'])
        seen.setdefault(key, r['node_runtime'] or '(no report)')
    return '\n'.join(f'- {model} ({size}), {entry}: {summary}'
                     for (model, size, entry), summary in seen.items())


def limits_tables(bench):
    """Return the markdown tables of the limits: bare forward and transport."""
    lines = ['| model | model input | batch | runtime | bare forward ms (median of n, min - '
             'max) | bare forward frames/s |', '|---|---|---|---|---|---|']
    order = sorted(bench.forward, key=lambda k: (k[1], k[2], Path(k[0]).name,
                                                 RUNTIME_ENTRIES.index(k[3])))
    for key in order:
        samples = bench.forward[key]
        weights, size, batch, entry = key
        model = Path(weights).name.split('_')[0]
        ms = statistics.median(samples)
        lines.append(f'| {model} | {size_text(size)} | {batch} | '
                     f'{runtime_text(entry, bench.bare_runtimes.get(key))} | {ms_text(ms)} '
                     f'(n = {len(samples)}, {ms_text(min(samples))} - '
                     f'{ms_text(max(samples))}) | '
                     f'{fmt(1000.0 * batch / ms, 2)} |')
    if bench.echo_rows:
        lines += ['', '| frame | input | message | cameras | Fast DDS profile | echo full speed '
                  'out/s | echo p50 / p95 / p99 ms (fixed rate) | lost / published (full; '
                  'fixed) |',
                  '|---|---|---|---|---|---|---|---|']
        for r in bench.echo_rows:
            lines.append(
                f'| {size_text(r["size"])} | {r["transport"]} | '
                f'{r["input_bytes"] / 1e6:.2f} MB | {r["cameras"]} | '
                f'{profile_name(r["profile"])} | {fmt(r["full"]["throughput"])} | '
                f'{lat_text(r["fixed"]["latency_ms"], 1)} | '
                f'{lost_text(r["full"], r["fixed"])} |')
    return '\n'.join(lines)


def ratio_rows(bench):
    """Return the target checks as rows of dicts (also used by the markdown)."""
    rows = []
    echo = {(r['size'], r['transport'], r['cameras'], r['profile']): r
            for r in bench.echo_rows}
    by_key = {(r['model'], r['size'], r['transport'], r['mode'], r['runtime']): r
              for r in bench.nodes_rows}
    compared = {(c['model'], c['size'], c['transport'], c['mode'], c['runtime']): c
                for c in compare_rows(bench)}
    for (model, size, transport, mode, entry), r in by_key.items():
        if mode != '1':
            continue
        c = compared[(model, size, transport, mode, entry)]
        bare_rate = r['bare_rate']
        transport_row = echo.get((size, transport, 1, r['profile']))
        transport_ms = transport_row['fixed']['latency_ms'][0] if transport_row else float('nan')
        limit = 1.1 * (r['forward_ms'] + transport_ms)
        batched = by_key.get((model, size, transport, '3', entry))
        separate = by_key.get((model, size, transport, '3x1', entry))
        rows.append({
            'model': model, 'size': size, 'transport': transport, 'runtime': entry,
            'node_runtime': r['node_runtime'], 'throughput_ratio': r['full']['throughput']
            / bare_rate, 'fastest_ratio': c['fastest_ratio'],
            'fastest_runtime': c['fastest_runtime'], 'torch_speedup': c['torch_speedup'],
            'p50': r['fixed']['latency_ms'][0], 'forward_ms': r['forward_ms'],
            'transport_ms': transport_ms, 'latency_limit': limit,
            'batched': batched['full']['throughput'] if batched else float('nan'),
            'separate': separate['full']['throughput'] if separate else float('nan'),
            'idle_cpu': r['idle_cpu'], 'quiet_cpu': r['quiet_cpu'],
            'idle_rate': bench.args.idle_rate})
    return rows


def ratios_table(bench):
    """Return the markdown table of the ratios the issue asks for."""
    lines = ['| model | frame | input | runtime (node) | node / fastest bare forward '
             'throughput (target >= 85 %) | node p50 vs 1.1 x (own-runtime forward + transport) '
             'ms | 3 cameras in 1 node vs 3 nodes, outputs/s | no-subscriber CPU % (frames in / '
             'no input) |',
             '|---|---|---|---|---|---|---|---|']
    for r in ratio_rows(bench):
        if r['latency_limit'] != r['latency_limit']:  # NaN: no transport measured
            ok = 'n/a (no transport run)'
        else:
            ok = 'ok' if r['p50'] <= r['latency_limit'] else 'missed'
        target = r['size'] in ((480, 360), (1280, 720))
        met = (' ok' if r['fastest_ratio'] >= 0.85 else ' missed') if target else ''
        batch = (f'{fmt(r["batched"], 2)} vs {fmt(r["separate"], 2)} '
                 f'({fmt(r["batched"] / r["separate"], 2)} x)'
                 if r['batched'] == r['batched'] and r['separate'] == r['separate'] else '-')
        lines.append(
            f'| {r["model"]} | {size_text(r["size"])} | {r["transport"]} | '
            f'{runtime_text(r["runtime"], r["node_runtime"])} | '
            f'{100 * r["fastest_ratio"]:.0f} %{met} | {fmt(r["p50"], 0)} vs '
            f'{fmt(r["latency_limit"], 0)} (= 1.1 x ({fmt(r["forward_ms"], 0)} + '
            f'{fmt(r["transport_ms"], 1)})) {ok} | {batch} | '
            f'{fmt(r["idle_cpu"])} at {fmt(r["idle_rate"], 0)} Hz / {fmt(r["quiet_cpu"])} |')
    return '\n'.join(lines)


def worker_table(nodes_rows, ratios):
    """
    Return the markdown table of where each one-camera row's time goes, from the results.

    With the worker busy all the time at full speed, node ms per frame = the sum of its
    stages: the forward in the node plus its own work; 'node / its own forward' compares the
    node's output rate with the forward it ran (free of the machine's drift between the node
    and the bare-forward processes). At the fixed rate the latency should be the worker's time
    for the frame plus the transport.
    """
    transport = {(r['model'], tuple(r['size']), r['transport']): r['transport_ms']
                 for r in ratios}
    lines = ['| model | frame | input | runtime (node) | node ms per frame (1000 / out/s) | '
             'worker busy | forward in the node ms | node / its own forward throughput | bare '
             'forward ms (own runtime) | own work ms (decode + pre + post + publish; share of '
             'the forward) | fixed-rate p50 ms | worker ms per frame at fixed rate + transport '
             'ms |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in nodes_rows:
        full, fixed = r['full'].get('work') or {}, r['fixed'].get('work') or {}
        if r['mode'] != '1' or not full or not r['full']['throughput']:
            continue
        own = sum(full[k] for k in ('decode', 'preprocess', 'postprocess', 'publish'))
        moved = transport.get((r['model'], tuple(r['size']), r['transport']), float('nan'))
        lines.append(
            f'| {r["model"]} | {size_text(r["size"])} | {r["transport"]} | '
            f'{runtime_text(r.get("runtime", "torch"), r.get("node_runtime"))} | '
            f'{fmt(1000.0 / r["full"]["throughput"], 0)} | {fmt(full["busy_pct"], 0)} % | '
            f'{fmt(full["inference"], 0)} | '
            f'{fmt(full["inference"] * r["full"]["throughput"] / 10.0, 0)} % | '
            f'{fmt(r["forward_ms"], 0)} | {fmt(own)} '
            f'({fmt(100.0 * own / full["inference"], 0)} %) | '
            f'{fmt(r["fixed"]["latency_ms"][0], 0)} | '
            f'{fmt(fixed.get("busy", float("nan")), 0)} + {fmt(moved, 1)} |')
    return '\n'.join(lines)


def report(bench, command, minutes, load):
    """Return the markdown report of a run."""
    args = bench.args
    weights = ', '.join(f'{k}: {v}' for k, v in bench.weights.items()) or 'none'
    devices = sorted({r['device'] for r in bench.nodes_rows}) or [args.device]
    calibration = ''
    if 'int8' in args.runtimes:
        checks = ', '.join(f'{m}: {f}' for m, f in args.validation_folder.items())
        calibration = (f' (int8: calibration {args.calibration_folder or "none"}, validation '
                       f'{checks or "-"}; other models: fp32 labels on held-out frames)')
    text = [
        f'Command: `{command}` ({minutes:.1f} min).',
        '',
        f'Machine: {machine(args.device)}; node device: {", ".join(devices)}; load average '
        f'before the run {load}. Weights: {weights}. Outputs subscribed: '
        f'{", ".join(args.outputs)}. Node processes: Fast DDS profile '
        f'{profile_name(args.node_dds_profile)}'
        + (f', environment {" ".join(args.node_env)}' if args.node_env else '')
        + (f', parameters {" ".join(args.node_params)}' if args.node_params else '')
        + f'. Full speed = {args.window} frames in flight per camera; fixed rate = '
        + ('half the full-speed rate' if args.rate == 'auto' else f'{args.rate:g} Hz')
        + f' per camera; {args.seconds:g} s per phase. Runtimes: '
        + ', '.join(args.runtimes) + calibration + '; exports in '
        + os.environ.get('SEMSEG_ROS_EXPORT_CACHE', str(EXPORT_CACHE)) + '.',
        '',
        '**Node, end to end** (latency = input stamp to receipt of the outputs, ms):',
        '',
        nodes_table(bench.nodes_rows),
        '',
        '**Limits in the same run**: bare forward of the model (random input at the model '
        "input size, each time in a fresh process set up like the node's: retain_memory, one "
        "thread for all torch work; the row's runtime set up by the engine as in the node, "
        "timed on what the engine calls (the model's logits); a node row is compared with the "
        'faster of the two medians taken right before and right after it, and with the '
        'fastest of any runtime of the same precision for the same model input and batch); '
        'transport = publisher '
        '-> echo process -> '
        'subscriber with the same messages and prebuilt outputs, no work. The last column of '
        "the node table is the node's own account of its worker thread (`/diagnostics` "
        "'... total (s)' values over the full-speed phase): ms per frame in each stage, and "
        'busy = share of the time it was processing a frame:',
        '',
        limits_tables(bench),
        '',
        '**Runtimes** (every node row against the bare forward of its own runtime and the '
        'fastest bare forward of any runtime of the same precision (fp32, bf16, int8) in this '
        'run; frames/s against the torch row of the same configuration):',
        '',
        runtimes_table(bench),
        '',
        "Runtimes as the nodes report them (`/diagnostics` 'runtime'):",
        '',
        runtime_notes(bench) or '- none',
        '',
        '**Targets** (bare forward and transport from the tables above):',
        '',
        ratios_table(bench),
        '',
        "**Where the time goes** (one camera; the node's worker accounting above, per frame):",
        '',
        worker_table(bench.nodes_rows, ratio_rows(bench)),
    ]
    if bench.skipped:
        text += ['', 'Skipped configurations: ' + '; '.join(bench.skipped)]
    if bench.failures:
        text += ['', 'Failed configurations: ' + '; '.join(bench.failures)]
    return '\n'.join(text) + '\n'


def write_markdown(path, text):
    """Replace the e2e_bench section of `path` (the section added when missing)."""
    path = Path(path)
    doc = path.read_text() if path.exists() else '# Performance\n'
    if MARK_BEGIN not in doc:
        path.write_text(doc + f'\n## End to end\n\n{MARK_BEGIN}\n{MARK_END}\n')
    write_section(path, 'e2e_bench', text)


def resolve_profile(text):
    """Return 'none' or the absolute path of an existing Fast DDS XML file."""
    if text == 'none':
        return text
    path = Path(text).resolve()
    if not path.is_file():
        raise SystemExit(f'Fast DDS profile {text} does not exist')
    return str(path)


def parse_size(text):
    """Parse 'WxH'."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 640x480, not {text!r}') from None
    return (w, h)


def parse_args(argv):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--sizes', nargs='+', type=parse_size,
                        default=[(480, 360), (1280, 720), (1920, 1080)])
    parser.add_argument('--models', nargs='+', default=['espnet', 'espnetv2'],
                        choices=['espnet', 'espnetv2', 'tiny'])
    parser.add_argument('--transport', nargs='+', default=['raw', 'compressed'],
                        choices=['raw', 'compressed'])
    parser.add_argument('--cameras', nargs='+', default=['1', '3', '3x1'],
                        choices=list(CAMERA_MODES),
                        help="1 camera; '3': three cameras batched in one node; '3x1': three "
                             'single-camera nodes')
    parser.add_argument('--runtimes', nargs='+', default=['torch', 'auto'],
                        choices=RUNTIME_ENTRIES,
                        help='node configurations: model.runtime (torch, onnxruntime, openvino, '
                             'tensorrt, auto), bf16 (auto, precision bf16) or int8 (openvino, '
                             'precision int8); each node row is measured once per entry')
    calibration = ASSETS / 'camvid_train' / 'images'
    parser.add_argument('--calibration-folder',
                        default=str(calibration) if calibration.is_dir() else '',
                        help='int8: frames to calibrate on (default '
                             '../shared/assets/camvid_train/images when present)')
    parser.add_argument('--validation-folder', nargs='+', default=[], metavar='MODEL=DATASET',
                        help="int8: a model's labelled dataset (its class ids) for the mIoU "
                             "check (default: the fp32 model's labels on held-out calibration "
                             'frames)')
    parser.add_argument('--seconds', type=float, default=10.0, help='length of each phase')
    parser.add_argument('--idle-seconds', type=float, default=3.0,
                        help='length of each no-subscriber CPU measurement')
    parser.add_argument('--idle-rate', type=float, default=15.0,
                        help='frame rate (Hz) while nobody subscribes')
    parser.add_argument('--rate', default='auto',
                        help="fixed rate per camera in Hz, or 'auto' (half the full-speed rate)")
    parser.add_argument('--echo-rate', type=float, default=10.0,
                        help='fixed rate of the transport baseline (0 = half its full speed)')
    parser.add_argument('--window', type=int, default=2,
                        help='frames in flight per camera at full speed (1 = ping-pong)')
    parser.add_argument('--grace', type=float, default=3.0,
                        help='seconds to wait for late outputs after a phase')
    parser.add_argument('--outputs', nargs='+', default=['label'],
                        choices=list(OUTPUT_ENCODINGS), help='outputs the subscriber takes')
    parser.add_argument('--device', default='auto', help='node and bare-forward device')
    parser.add_argument('--espnet-input', choices=['frame', 'native'], default='frame',
                        help='ESPNet runs at the frame size (as in engine_bench) or at its '
                             'native 480x360')
    parser.add_argument('--cache', default='',
                        help='folder of the published weights (default $SEMSEG_ROS_CACHE, '
                             'else ../shared/assets/models)')
    parser.add_argument('--dds-profiles', nargs='+', default=['none', str(SHM_PROFILE)],
                        help="Fast DDS XML profiles of the transport baseline ('none' = "
                             'Fast DDS defaults)')
    parser.add_argument('--node-dds-profile', default=str(SHM_PROFILE),
                        help="Fast DDS XML profile of the node runs ('none' = defaults)")
    parser.add_argument('--node-env', nargs='+', default=[], metavar='NAME=VALUE',
                        help='extra environment of the node processes (e.g. '
                             'OMP_WAIT_POLICY=PASSIVE, LD_PRELOAD=libjemalloc.so.2)')
    parser.add_argument('--node-params', nargs='+', default=[], metavar='NAME:=VALUE',
                        help='extra -p overrides of the node processes (e.g. max_batch:=3)')
    parser.add_argument('--no-echo', action='store_true', help='skip the transport baseline')
    parser.add_argument('--echo-only', action='store_true',
                        help='only the transport baseline (compare --dds-profiles)')
    parser.add_argument('--profile-nodes', metavar='DIR',
                        help='run the nodes under the CPU sampler; reports go to DIR')
    parser.add_argument('--domains', nargs=2, type=int, default=[80, 88],
                        help='ROS domain ids to cycle through (first last)')
    parser.add_argument('--workdir', default=str(ROOT / 'build' / 'e2e_bench'))
    parser.add_argument('--json', help='write the raw results to this file')
    parser.add_argument('--markdown', help='update the e2e_bench section of this file')
    args = parser.parse_args(argv)
    if args.rate != 'auto':
        args.rate = float(args.rate)
    args.echo_rate = args.echo_rate or None
    args.dds_profiles = [resolve_profile(p) for p in args.dds_profiles]
    args.node_dds_profile = resolve_profile(args.node_dds_profile)
    # The nodes run in the repository: their folders must not depend on this directory.
    if args.calibration_folder:
        args.calibration_folder = str(Path(args.calibration_folder).resolve())
    try:
        args.validation_folder = {model: str(Path(folder).resolve()) for model, folder in (
            item.split('=', 1) for item in args.validation_folder)}
    except ValueError:
        raise SystemExit('--validation-folder: expected MODEL=DATASET entries') from None
    return args


def main(argv=None):
    """Run the benchmark and print (or write) the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == '--profiled-node':
        return profiled_node(argv[1], argv[2:]) or 0
    if argv and argv[0] == '--bare-forward':
        return bare_forward_main(*argv[1:5])
    if argv and argv[0] == '--worker-table':  # from the --json file of an earlier run
        saved = json.loads(Path(argv[1]).read_text())
        print(worker_table(saved['nodes'], saved['ratios']))
        return 0
    args = parse_args(argv)
    warnings.filterwarnings('ignore', category=FutureWarning)  # torch.jit deprecation notes
    load = ', '.join(f'{v:.2f}' for v in os.getloadavg())
    start = time.monotonic()
    bench = Bench(args)
    bench.log = lambda line: print(line, flush=True)
    bench.log(f'e2e_bench: {machine(args.device)}; load {load}')
    bench.run()
    minutes = (time.monotonic() - start) / 60.0
    command = 'python benchmarks/e2e_bench.py ' + ' '.join(argv)
    text = report(bench, command.strip(), minutes, load)
    print('\n' + text)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {'nodes': bench.nodes_rows, 'echo': bench.echo_rows, 'ratios': ratio_rows(bench),
             'forward_ms': [[Path(k[0]).name, list(k[1]), k[2], k[3], v]
                            for k, v in bench.forward.items()],
             'runtimes': compare_rows(bench), 'skipped': bench.skipped,
             'failures': bench.failures, 'minutes': minutes}, indent=1, default=str))
    if args.markdown:
        write_markdown(args.markdown, text)
    return 1 if bench.failures else 0


if __name__ == '__main__':
    sys.exit(main())

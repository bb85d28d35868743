"""
Soak test: tens of thousands of frames through DDS, checking that the node does not leak.

Three processes, as on a robot: a publisher sends sensor_msgs/Image frames (rgb8, `--size`),
the node (`python -m semseg_ros.node` with config/semseg.yaml) segments them, and this
process subscribes to every output (label, color, overlay, drivable, confidence) and to
/diagnostics. Full speed means closed loop: the publisher keeps `--window` frames in flight
and sends the next one as soon as this process has received all outputs of an earlier one
(acknowledged through a pipe), so the node never idles and never has to drop a frame. A frame
whose outputs do not come back within `--resend-after` seconds is counted as lost and its credit
returned, so a lost frame cannot stall the run. (Frames can be lost by design: the node's input
QoS is best effort, keep last 1, so a frame that reaches the node's DDS reader while the
previous one is still there, because the executor thread has not had the GIL to take it, replaces
it before the node sees it; the node cannot count those.)

While it runs, the node process is sampled every `--sample-period` seconds: resident memory
(RSS), threads (/proc/<pid>/status), open files (/proc/<pid>/fd) and CPU, and the
stamp-to-receipt latency of the frames of that period. After the warm-up (`--warmup`, a
fraction of the frames), the first and the last fifth of the samples are compared:

- RSS: median of the last fifth minus median of the first fifth < `--max-rss-growth` MB;
- threads and open files: the maximum of the last fifth is not above that of the first fifth;
- latency: p50 of the last fifth <= `--max-latency-ratio` x p50 of the first fifth +
  `--latency-slack` ms;
- the node is alive at the end and counted no errors; at most `--max-lost` of the frames lost.

The default model is a tiny random TorchScript model (a 1x1 convolution to 12 classes, run at
the frame size): it exercises the node machinery (DDS, conversion, worker thread, every output,
diagnostics) rather than a network. `--model espnet` uses the published ESPNet weights
(`--weights`, else the cache: SEMSEG_ROS_CACHE, ../shared/assets/models when present).

    python benchmarks/soak.py [--frames 20000] [--size 320x240] [--model tiny|espnet]
        [--markdown docs/RELIABILITY.md] [--json soak.json]

Exit status 0 when every criterion passes, 1 otherwise.
"""

import argparse
import datetime
import json
import multiprocessing
import os
from pathlib import Path
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench_common import ASSETS
from bench_common import machine
from bench_common import PARAMS
from bench_common import qos
from bench_common import ROOT
from bench_common import ros_start
from bench_common import ros_stop
from bench_common import SHM_PROFILE
import numpy as np

ESPNET_FILE = 'espnet_p_2_q_8_camvid.pth'
MARK_BEGIN = '<!-- soak:begin -->'
MARK_END = '<!-- soak:end -->'
OUTPUTS = ('label', 'color', 'overlay', 'drivable', 'confidence')
NODE_START_TIMEOUT = 180.0
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def parse_size(text):
    """Parse 'WxH' into (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 320x240, got {text!r}') from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return width, height


def stamp_ns(header):
    """Return a header stamp in nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


# Publisher process.
def frames(width, height, count=8):
    """Return `count` distinct rgb8 Image messages (smooth patterns plus noise)."""
    from semseg_ros.io.image import array_to_image
    from std_msgs.msg import Header
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:height, 0:width]
    out = []
    for i in range(count):
        img = np.stack([(xs * (3 + i) // max(width // 64, 1)) % 256,
                        (ys * (2 + i) // max(height // 64, 1)) % 256,
                        (xs + ys + 32 * i) % 256], axis=-1).astype(np.uint8)
        img = img + rng.integers(0, 16, img.shape, np.uint8)
        out.append(array_to_image(img, 'rgb8', Header(frame_id='soak_camera')))
    return out


def publisher(conn, domain, width, height, total, window, resend_after, env):
    """
    Publish `total` frames, keeping `window` in flight (closed loop through conn).

    conn receives the stamp (ns) of each frame whose outputs all arrived; the publisher
    reports ('ready',), then ('done', published, lost, probes) on conn.
    """
    os.environ.update(env)
    from sensor_msgs.msg import Image
    context, node, executor = ros_start(domain, 'soak_publisher')
    pub = node.create_publisher(Image, 'image', qos(True, 1))
    messages = frames(width, height)
    # Wait for the node's subscription, then send probe frames until one comes back (the
    # first frames after discovery can be lost), then wait for the driver's go.
    while pub.get_subscription_count() == 0:
        executor.spin_once(timeout_sec=0.1)
    clock = node.get_clock()
    probes = 0
    while True:
        messages[0].header.stamp = clock.now().to_msg()
        pub.publish(messages[0])
        probes += 1
        if conn.poll(0.5):
            conn.recv()
            break
    conn.send(('ready',))
    assert conn.recv() == ('go',)
    in_flight = {}  # stamp ns -> monotonic send time
    published = lost = 0
    while published < total or in_flight:
        while published < total and len(in_flight) < window:
            msg = messages[published % len(messages)]
            msg.header.stamp = clock.now().to_msg()
            pub.publish(msg)
            in_flight[stamp_ns(msg.header)] = time.monotonic()
            published += 1
        if conn.poll(0.05):
            item = conn.recv()
            if item == ('stop',):
                break
            in_flight.pop(item, None)
        now = time.monotonic()
        for stamp, sent in list(in_flight.items()):
            if now - sent > resend_after:
                del in_flight[stamp]  # lost on the way: give its credit back
                lost += 1
    conn.send(('done', published, lost, probes))
    ros_stop(context, node)


# Node process.
def tiny_model(folder, classes=12):
    """Save a 1x1-convolution TorchScript model with random weights; return its path."""
    import torch
    from semseg_ros.core.models import torchscript
    from semseg_ros.core.models.base import Preprocess
    torch.manual_seed(0)
    module = torch.nn.Conv2d(3, classes, 1)
    path = Path(folder) / 'tiny_random.pt'
    torchscript.save(module, str(path), classes, Preprocess(scale=1.0 / 255.0))
    return path


def espnet_weights(explicit):
    """Return the path of the published ESPNet weights, or exit with where to put them."""
    candidates = [explicit] if explicit else []
    cache = os.environ.get('SEMSEG_ROS_CACHE')
    candidates += [Path(cache) / ESPNET_FILE] if cache else []
    candidates += [ASSETS / 'models' / ESPNET_FILE,
                   Path.home() / '.cache' / 'semseg_ros' / ESPNET_FILE]
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path)
    sys.exit(f'--model espnet needs {ESPNET_FILE}: give --weights or put it in '
             'SEMSEG_ROS_CACHE')


def node_env(domain, profile):
    """Return the environment of the processes (ROS domain, paths, Fast DDS profile)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RCUTILS_LOGGING_BUFFERED_STREAM='0')
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    env.setdefault('ROS_LOG_DIR', str(ROOT / 'build' / 'ros_log'))
    if profile:
        env['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(profile)
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(profile)
    return env


def start_node(params, env, log_path):
    """Start the node process with config/semseg.yaml and -p overrides."""
    cmd = [sys.executable, '-m', 'semseg_ros.node', '--ros-args', '--params-file', str(PARAMS)]
    for param in params:
        cmd += ['-p', param]
    with open(log_path, 'w') as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_process(process, timeout=15.0):
    """SIGINT, then kill; return the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# Sampling the node process.
def proc_threads(pid):
    """Return the thread count of a process from /proc/<pid>/status."""
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('Threads:'):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    """Return the number of open file descriptors of a process."""
    return len(os.listdir(f'/proc/{pid}/fd'))


def proc_rss(pid):
    """Return the resident set size of a process in bytes (/proc/<pid>/statm)."""
    with open(f'/proc/{pid}/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def proc_cpu_s(pid):
    """Return utime + stime of a process in seconds."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Driver:
    """The subscriber side: outputs, diagnostics, acknowledgements and node samples."""

    def __init__(self, domain, outputs, conn, pid):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        self.context, self.node, self.executor = ros_start(domain, 'soak_subscriber')
        self.outputs = outputs
        self.conn = conn
        self.pid = pid
        self.pending = {}  # stamp -> outputs received so far
        self.latency = []  # (receipt monotonic time, seconds) per complete frame
        self.complete = 0
        self.samples = []
        self.diagnostics = {}
        for name in outputs:
            self.node.create_subscription(
                Image, f'segmentation/{name}',
                lambda msg, name=name: self.on_output(name, msg), qos(True, 10))
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.on_diagnostics, 10)

    def reset(self):
        """Forget the frames so far (the probes before the start)."""
        self.pending.clear()
        self.latency.clear()
        self.complete = 0

    def on_output(self, name, msg):
        """Count an output; when a frame has all its outputs, record it and acknowledge."""
        stamp = stamp_ns(msg.header)
        got = self.pending.setdefault(stamp, set())
        got.add(name)
        if len(got) == len(self.outputs):
            del self.pending[stamp]
            latency = self.node.get_clock().now().nanoseconds - stamp
            self.latency.append((time.monotonic(), latency * 1e-9))
            self.complete += 1
            self.conn.send(stamp)
        if len(self.pending) > 1000:  # outputs of lost frames: forget the oldest
            for old in sorted(self.pending)[:500]:
                del self.pending[old]

    def on_diagnostics(self, array):
        """Keep the newest counters of the camera status."""
        for status in array.status:
            if 'camera' in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics['level'] = int.from_bytes(status.level, 'little') \
                    if isinstance(status.level, bytes) else int(status.level)
                self.diagnostics['message'] = status.message

    def sample(self, start):
        """Record one sample of the node process."""
        pid = self.pid
        now = time.monotonic()
        self.samples.append({
            't': now - start, 'mono': now, 'frames': self.complete, 'rss': proc_rss(pid),
            'threads': proc_threads(pid), 'fds': proc_fds(pid), 'cpu_s': proc_cpu_s(pid)})

    def spin(self, seconds):
        """Spin the subscriber for `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def close(self):
        """Shut the subscriber down."""
        ros_stop(self.context, self.node)


def median(values):
    """Return the median of a non-empty sequence (nan when empty)."""
    return statistics.median(values) if values else float('nan')


def percentile(values, q):
    """Return a percentile, q in 0..100 (nan when empty)."""
    return float(np.percentile(values, q)) if len(values) else float('nan')


def analyse(samples, latency, frames_total, args, start_frames):
    """Compare the first and the last fifth after warm-up; return (figures, checks)."""
    # Only while frames flow: drop the samples after the last frame came back.
    final = samples[-1]['frames']
    samples = samples[:next(i for i, s in enumerate(samples) if s['frames'] == final) + 1]
    warm = [s for s in samples if s['frames'] >= start_frames]
    if len(warm) < 5:
        raise RuntimeError(f'only {len(warm)} samples after warm-up: run longer')
    fifth = max(len(warm) // 5, 2)
    first, last = warm[:fifth], warm[-fifth:]
    t_first = (first[0]['mono'], first[-1]['mono'])
    t_last = (last[0]['mono'], last[-1]['mono'])
    lat_first = [v for t, v in latency if t_first[0] <= t <= t_first[1]]
    lat_last = [v for t, v in latency if t_last[0] <= t <= t_last[1]]
    lat_all = [v for t, v in latency if t >= warm[0]['mono']]
    mb = 1.0 / (1 << 20)
    rss_first = median([s['rss'] for s in first]) * mb
    rss_last = median([s['rss'] for s in last]) * mb
    xs = np.array([s['frames'] for s in warm], float)
    ys = np.array([s['rss'] for s in warm], float) * mb
    slope = float(np.polyfit(xs, ys, 1)[0] * 10000) if np.ptp(xs) > 0 else 0.0
    duration = warm[-1]['t'] - warm[0]['t']
    figures = {
        'frames': frames_total,
        'frames_after_warmup': warm[-1]['frames'] - warm[0]['frames'],
        'seconds_after_warmup': duration,
        'rate_hz': (warm[-1]['frames'] - warm[0]['frames']) / duration if duration else 0.0,
        'cpu_percent': 100.0 * (warm[-1]['cpu_s'] - warm[0]['cpu_s']) / duration
        if duration else 0.0,
        'rss_first_mb': rss_first, 'rss_last_mb': rss_last,
        'rss_growth_mb': rss_last - rss_first,
        'rss_peak_mb': max(s['rss'] for s in samples) * mb,
        'rss_slope_mb_per_10k': slope,
        'threads_first': max(s['threads'] for s in first),
        'threads_last': max(s['threads'] for s in last),
        'fds_first': max(s['fds'] for s in first), 'fds_last': max(s['fds'] for s in last),
        'latency_first_p50_ms': median(lat_first) * 1e3,
        'latency_last_p50_ms': median(lat_last) * 1e3,
        'latency_p50_ms': percentile(lat_all, 50) * 1e3,
        'latency_p95_ms': percentile(lat_all, 95) * 1e3,
        'latency_p99_ms': percentile(lat_all, 99) * 1e3,
        'latency_max_ms': max(lat_all) * 1e3 if lat_all else float('nan'),
        'samples': len(samples),
    }
    limit = figures['latency_first_p50_ms'] * args.max_latency_ratio + args.latency_slack
    checks = [
        ('RSS growth after warm-up', figures['rss_growth_mb'] < args.max_rss_growth,
         f"{figures['rss_growth_mb']:+.1f} MB (limit {args.max_rss_growth:g} MB; "
         f'{rss_first:.0f} -> {rss_last:.0f} MB)'),
        ('threads', figures['threads_last'] <= figures['threads_first'],
         f"{figures['threads_first']} -> {figures['threads_last']}"),
        ('open files', figures['fds_last'] <= figures['fds_first'],
         f"{figures['fds_first']} -> {figures['fds_last']}"),
        ('latency p50', figures['latency_last_p50_ms'] <= limit,
         f"{figures['latency_first_p50_ms']:.1f} -> {figures['latency_last_p50_ms']:.1f} ms "
         f'(limit {limit:.1f} ms)'),
    ]
    return figures, checks


def markdown(result):
    """Return the markdown section of a soak result."""
    f = result['figures']
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; {result['date']}; Fast DDS profile: "
        f"{result['profile']}.",
        '',
        f"{result['frames_published']} frames of {result['size']} rgb8 published, "
        f"{result['frames_complete']} came back with all {len(OUTPUTS)} outputs "
        f"({result['frames_lost']} lost: {result['frames_not_received']} never reached the "
        "node's callback, the input QoS being best effort, keep last 1; the others were "
        "replaced in the node by a newer frame, its 'frames dropped'), model "
        f"{result['model']}, "
        f"{result['seconds']:.0f} s in all. After the warm-up ({result['warmup_frames']} "
        f"frames): {f['frames_after_warmup']} frames in {f['seconds_after_warmup']:.0f} s, "
        f"{f['rate_hz']:.0f} frames/s, node CPU {f['cpu_percent']:.0f} % of one core.",
        '',
        '| figure | first fifth after warm-up | last fifth | |',
        '|---|---|---|---|',
    ]
    checks = {name: (ok, text) for name, ok, text in result['checks']}

    def row(name, first, last, check):
        ok = checks[check][0] if check else None
        mark = '' if ok is None else ('pass' if ok else '**FAIL**')
        lines.append(f'| {name} | {first} | {last} | {mark} |')
    row('node RSS (median, MB)', f"{f['rss_first_mb']:.1f}", f"{f['rss_last_mb']:.1f}",
        'RSS growth after warm-up')
    row('node threads (max)', f['threads_first'], f['threads_last'], 'threads')
    row('node open files (max)', f['fds_first'], f['fds_last'], 'open files')
    row('latency p50 (ms)', f"{f['latency_first_p50_ms']:.1f}",
        f"{f['latency_last_p50_ms']:.1f}", 'latency p50')
    lines += [
        '',
        f"RSS growth {f['rss_growth_mb']:+.1f} MB (limit {result['limits']['rss_mb']:g} MB), "
        f"trend {f['rss_slope_mb_per_10k']:+.2f} MB per 10k frames, peak "
        f"{f['rss_peak_mb']:.0f} MB. Latency (stamp to the last of the five outputs, one "
        f"frame of queueing included) after warm-up: p50 {f['latency_p50_ms']:.1f} ms, p95 "
        f"{f['latency_p95_ms']:.1f} ms, p99 {f['latency_p99_ms']:.1f} ms, max "
        f"{f['latency_max_ms']:.0f} ms. Node diagnostics at the end: "
        f"{result['diagnostics'].get('frames processed', '?')} processed, "
        f"{result['diagnostics'].get('frames dropped', '?')} dropped, "
        f"{result['diagnostics'].get('errors', '?')} errors.",
        '',
        f"Result: **{'PASS' if result['passed'] else 'FAIL'}**.",
    ]
    return '\n'.join(lines)


def update_markdown(path, section):
    """Replace the text between the soak markers of a file (appending them if absent)."""
    path = Path(path)
    text = path.read_text() if path.exists() else ''
    block = f'{MARK_BEGIN}\n{section}\n{MARK_END}'
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip('\n') + ('\n\n' if text else '') + block + '\n'
    path.write_text(text)


def run(args, log=print):
    """Run one soak; return the result dict (figures, checks, passed)."""
    width, height = args.size
    profile = args.fastdds_profile
    if profile is None and SHM_PROFILE.is_file():
        profile = SHM_PROFILE
    env = node_env(args.domain, profile)
    workdir = Path(tempfile.mkdtemp(prefix='semseg_soak_'))
    if args.model == 'tiny':
        params = ['model.backend:=torchscript', f'model.weights:={tiny_model(workdir)}']
    else:
        params = ['model.backend:=espnet', f'model.weights:={espnet_weights(args.weights)}']
    params += ['diagnostics_period:=1.0']
    node_log = workdir / 'node.log'
    node = start_node(params, env, node_log)
    ctx = multiprocessing.get_context('spawn')
    ours, theirs = ctx.Pipe()
    pub = ctx.Process(target=publisher, args=(
        theirs, args.domain, width, height, args.frames, args.window, args.resend_after,
        {k: env[k] for k in ('ROS_DOMAIN_ID', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                             'FASTDDS_DEFAULT_PROFILES_FILE') if k in env}))
    old_env = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if 'PROFILES_FILE' in k})
    driver = None
    try:
        driver = Driver(args.domain, OUTPUTS, ours, node.pid)
        pub.start()
        log(f'soak: node pid {node.pid}, waiting for discovery (node log: {node_log})')
        end = time.monotonic() + NODE_START_TIMEOUT
        while not ours.poll():
            if node.poll() is not None or time.monotonic() > end:
                raise RuntimeError('the node did not start: ' + node_log.read_text()[-2000:])
            driver.spin(0.1)
        assert ours.recv() == ('ready',)
        driver.spin(0.5)
        driver.reset()
        start = time.monotonic()
        ours.send(('go',))
        next_sample = next_report = start
        done = None
        while done is None:
            driver.executor.spin_once(timeout_sec=0.01)
            now = time.monotonic()
            if now >= next_sample:
                driver.sample(start)
                next_sample += args.sample_period
            if now >= next_report:
                s = driver.samples[-1]
                log(f"soak: {s['t']:6.0f} s  {driver.complete:6d}/{args.frames} frames  RSS "
                    f"{s['rss'] / 2**20:6.1f} MB  threads {s['threads']}  fds {s['fds']}")
                next_report += args.report_period
            if node.poll() is not None:
                raise RuntimeError('the node died: ' + node_log.read_text()[-2000:])
            while ours.poll():
                item = ours.recv()
                if isinstance(item, tuple) and item[0] == 'done':
                    done = item
        driver.sample(start)
        driver.spin(2.0 * args.diagnostics_wait)
        seconds = time.monotonic() - start
        alive = node.poll() is None
        diagnostics = dict(driver.diagnostics)
        warmup_frames = int(args.frames * args.warmup)
        figures, checks = analyse(driver.samples, driver.latency, args.frames, args,
                                  warmup_frames)
        errors = int(diagnostics.get('errors', '0') or 0)
        checks.append(('node alive, no errors', alive and errors == 0,
                       f'alive: {alive}, errors: {errors}'))
        received = int(diagnostics.get('frames received', '0') or 0)
        checks.append(('frames lost', done[2] <= args.max_lost * done[1],
                       f'{done[2]} of {done[1]} (limit {args.max_lost:.1%}); '
                       f'{done[1] + done[3] - received} never reached the node'))
    finally:
        if pub.is_alive():
            try:
                ours.send(('stop',))
            except OSError:
                pass
            pub.join(timeout=10)
            if pub.is_alive():
                pub.kill()
        if driver is not None:
            driver.close()
        stop_process(node)
        os.environ.clear()
        os.environ.update(old_env)
    command = 'python benchmarks/soak.py ' + ' '.join(args.argv) if args.argv else \
        'python benchmarks/soak.py'
    result = {
        'command': command, 'machine': machine('cpu'),
        'date': datetime.date.today().isoformat(),
        'profile': Path(profile).name if profile else 'Fast DDS defaults',
        'size': f'{width}x{height}', 'model': args.model, 'frames_published': done[1],
        'frames_complete': driver.complete, 'frames_lost': done[2], 'seconds': seconds,
        'frames_not_received': done[1] + done[3] - received,
        'warmup_frames': warmup_frames, 'figures': figures, 'checks': checks,
        'diagnostics': diagnostics, 'passed': all(ok for _, ok, _ in checks),
        'limits': {'rss_mb': args.max_rss_growth}, 'node_log': str(node_log),
    }
    if result['passed'] and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
        result['node_log'] = None
    return result


def parser():
    """Return the command-line parser."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--frames', type=int, default=20000, help='frames to publish (20000)')
    p.add_argument('--size', type=parse_size, default=(320, 240), help='WxH (320x240)')
    p.add_argument('--model', choices=('tiny', 'espnet'), default='tiny',
                   help='tiny random TorchScript model (default) or the published ESPNet')
    p.add_argument('--weights', type=Path, help='ESPNet weights file (with --model espnet)')
    p.add_argument('--window', type=int, default=2, help='frames in flight (2)')
    p.add_argument('--warmup', type=float, default=0.1,
                   help='fraction of the frames before the comparison starts (0.1)')
    p.add_argument('--sample-period', type=float, default=1.0, help='seconds (1.0)')
    p.add_argument('--report-period', type=float, default=10.0, help='seconds (10)')
    p.add_argument('--resend-after', type=float, default=3.0,
                   help='seconds after which a frame without outputs counts as lost (3)')
    p.add_argument('--max-rss-growth', type=float, default=50.0, help='MB (50)')
    p.add_argument('--max-lost', type=float, default=0.01,
                   help='fraction of frames that may be lost on the way (0.01)')
    p.add_argument('--max-latency-ratio', type=float, default=1.5, help='(1.5)')
    p.add_argument('--latency-slack', type=float, default=5.0, help='ms (5)')
    p.add_argument('--domain', type=int, default=int(os.environ.get('ROS_DOMAIN_ID') or 109),
                   help='ROS domain id (ROS_DOMAIN_ID, else 109)')
    p.add_argument('--fastdds-profile', type=Path,
                   help='Fast DDS XML profile (default: config/fastdds_shm.xml when present)')
    p.add_argument('--markdown', type=Path, help='update the soak section of this file')
    p.add_argument('--json', type=Path, help='write the result as JSON')
    p.add_argument('--keep', action='store_true',
                   help='keep the work folder (model, node log) after a passing run')
    p.add_argument('--diagnostics-wait', type=float, default=1.0, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    """Run the soak from the command line; exit 0 when every criterion passes."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    result = run(args)
    print()
    for name, ok, text in result['checks']:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {text}")
    print()
    section = markdown(result)
    print(section)
    if args.markdown:
        update_markdown(args.markdown, section)
        print(f'\nupdated {args.markdown}')
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0 if result['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())

"""
Complete frames over DDS: every output subscribed, fixed rate, with and without the SHM profile.

For each Fast DDS setting in --profiles, the node runs in its own process (config/semseg.yaml,
all five outputs enabled) and a client process publishes rgb8 frames on `image` at --rate Hz
(reliable, depth 10) while subscribing to all five outputs (reliable, depth 10) and to
/diagnostics. A frame is complete when all five outputs with its stamp arrived within --grace
seconds after the last frame. The node's own 'frames processed' (diagnostics) tells frames
that never reached it (best-effort input, keep last 1) from outputs lost on the way back.

Profiles: 'shm' = config/fastdds_shm.xml in the node and the client (what the launch files and
the demo now do by default), 'node' = in the node only, 'none' = Fast DDS as shipped.

    python benchmarks/delivery_bench.py --seconds 45 --markdown docs/PERFORMANCE.md
"""

import argparse
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from bench_common import ASSETS
from bench_common import default_cache
from bench_common import machine
from bench_common import markdown_table
from bench_common import PARAMS
from bench_common import ROOT
from bench_common import SHM_PROFILE
from bench_common import write_section

OUTPUTS = ('label', 'color', 'overlay', 'drivable', 'confidence')
PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
PROFILES = {'shm': 'config/fastdds_shm.xml in the node and the client',
            'node': 'config/fastdds_shm.xml in the node only',
            'none': 'Fast DDS defaults (no profile)'}


def profile_env(base, use):
    """Return a copy of environment `base` with the SHM profile set (use) or removed."""
    env = {k: v for k, v in base.items() if k not in PROFILE_VARS}
    if use:
        env.update({name: str(SHM_PROFILE) for name in PROFILE_VARS})
    return env


def test_frame(width, height):
    """Return an RGB frame: a CamVid image when the shared assets exist, else a pattern."""
    import cv2
    import numpy as np
    files = sorted((ASSETS / 'camvid_val' / 'images').glob('*.png'))
    if files:
        bgr = cv2.resize(cv2.imread(str(files[0])), (width, height))
        return np.ascontiguousarray(bgr[:, :, ::-1])
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), np.uint8)


def client_main(args):
    """Publish at a fixed rate, count complete frames; print one JSON line."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile
    from rclpy.qos import ReliabilityPolicy
    from semseg_ros.io.image import array_to_image
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=args.domain)
    node = rclpy.create_node('delivery_client', context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got = {}  # stamp ns -> set of outputs
    processed = []

    def on_output(name, msg):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        got.setdefault(stamp, set()).add(name)

    def on_diagnostics(msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if 'frames processed' in values:
                processed.append({key: int(values[f'frames {key}'])
                                  for key in ('received', 'processed', 'dropped')})

    outputs = args.outputs
    for name in outputs:
        node.create_subscription(Image, f'segmentation/{name}',
                                 lambda msg, name=name: on_output(name, msg), qos)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    publisher = node.create_publisher(Image, 'image', qos)
    width, height = args.size
    template = array_to_image(test_frame(width, height), 'rgb8', Header(frame_id='camera'))

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=min(0.02, max(end - time.monotonic(), 0.0)))

    def publish():
        now = time.time_ns()
        template.header.stamp.sec, template.header.stamp.nanosec = divmod(now, 10**9)
        publisher.publish(template)
        return now

    # Ready: one frame came back complete (discovery done, input subscribed).
    deadline = time.monotonic() + args.startup
    warm = set()

    def whole(stamp):
        return len(got.get(stamp, ())) == len(outputs)

    while time.monotonic() < deadline and not any(whole(s) for s in warm):
        warm.add(publish())
        spin(0.5)
    if not any(whole(s) for s in warm):
        print(json.dumps({'error': 'no complete frame during start-up'}), flush=True)
        return 1
    spin(1.0)
    processed.clear()
    spin(2.5 * args.diagnostics_period)
    zero = {'received': 0, 'processed': 0, 'dropped': 0}
    before = processed[-1] if processed else zero
    sent = []
    period = 1.0 / args.rate
    start = time.monotonic()
    for i in range(int(args.seconds * args.rate)):
        spin(max(start + i * period - time.monotonic(), 0.0))
        sent.append(publish())
    spin(args.grace)
    processed.clear()
    spin(2.5 * args.diagnostics_period)
    after = processed[-1] if processed else before
    counts = {name: sum(name in got.get(s, ()) for s in sent) for name in outputs}
    complete = sum(whole(s) for s in sent)
    partial = sum(0 < len(got.get(s, ())) < len(outputs) for s in sent)
    node_counts = {key: after[key] - before[key] for key in zero}
    result = {'published': len(sent), 'processed': node_counts['processed'],
              'node_received': node_counts['received'], 'node_dropped': node_counts['dropped'],
              'complete': complete, 'partial': partial, 'outputs': counts}
    print(json.dumps(result), flush=True)
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    return 0


def node_params(args):
    """Return the node's -p overrides: model, diagnostics period."""
    weights = Path(args.cache or default_cache() or '.') / 'espnet_p_2_q_8_camvid.pth'
    if args.model == 'espnet' and weights.is_file():
        model = ['model.backend:=espnet', f'model.weights:={weights}']
    elif args.model == 'espnet':
        raise SystemExit(f'delivery_bench: {weights} not found (use --cache or --model tiny)')
    else:
        model = ['model.backend:=torchscript', f'model.weights:={write_tiny(args.workdir)}',
                 f'classes:={write_tiny_classes(args.workdir)}']
    return model + ['model.download:=false', f'diagnostics_period:={args.diagnostics_period}']


def write_tiny(folder):
    """Write the tiny model (logits = the RGB channels) to folder; return its path."""
    import torch
    from semseg_ros.core.models import torchscript
    from semseg_ros.core.models.base import Preprocess

    path = Path(folder) / 'delivery_tiny.pt'
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch's Identity, not a class of this file: scripting reads the class's source file.
    module = torch.jit.script(torch.nn.Identity())
    torchscript.save(module, str(path), 3, Preprocess(scale=1.0 / 255.0))
    return path


def write_tiny_classes(folder):
    """Write the tiny model's three-class set; return its path."""
    import yaml
    path = Path(folder) / 'delivery_tiny_classes.yaml'
    path.write_text(yaml.safe_dump({'name': 'rgb', 'classes': [
        {'id': i, 'name': n, 'color': c, **({'drivable': True} if i == 1 else {})}
        for i, (n, c) in enumerate((('red', [200, 0, 0]), ('green', [0, 200, 0]),
                                    ('blue', [0, 0, 200])))]}))
    return path


def run_profile(args, profile, outputs):
    """Run the node and the client with one profile and output set; return the result."""
    base = dict(os.environ, ROS_DOMAIN_ID=str(args.domain), PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    node_cmd = [sys.executable, '-m', 'semseg_ros.node', '--ros-args', '--params-file',
                str(PARAMS)]
    for param in node_params(args):
        node_cmd += ['-p', param]
    log = open(Path(args.workdir) / f'delivery_node_{profile}_{len(outputs)}.log', 'w')
    node = subprocess.Popen(node_cmd, cwd=ROOT, env=profile_env(base, profile != 'none'),
                            stdout=log, stderr=subprocess.STDOUT)
    client_cmd = [sys.executable, __file__, '--client', '--domain', str(args.domain),
                  '--size', f'{args.size[0]}x{args.size[1]}', '--rate', str(args.rate),
                  '--seconds', str(args.seconds), '--grace', str(args.grace),
                  '--startup', str(args.startup),
                  '--diagnostics-period', str(args.diagnostics_period),
                  '--outputs', ','.join(outputs)]
    try:
        done = subprocess.run(client_cmd, cwd=ROOT, capture_output=True, text=True,
                              env=profile_env(base, profile == 'shm'),
                              timeout=args.startup + args.seconds + args.grace + 60)
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()
        log.close()
    lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
    if done.returncode or not lines:
        raise SystemExit(f'delivery_bench: client failed ({done.returncode}):\n'
                         f'{done.stdout[-2000:]}\n{done.stderr[-2000:]}')
    result = json.loads(lines[-1])
    result['profile'] = profile
    result['output_set'] = list(outputs)
    return result


def report(args, results, minutes):
    """Return the markdown section."""
    rows = []
    for r in results:
        share = 100.0 * r['complete'] / r['processed'] if r['processed'] else float('nan')
        names = r['output_set']
        rows.append([' + '.join(names) if len(names) < 5 else 'all five', PROFILES[r['profile']],
                     r['published'], f"{r['processed']} ({r['node_dropped']})",
                     r['complete'], f'{share:.1f} %', r['processed'] - r['complete'],
                     ' / '.join(f'{r["outputs"][name]}' for name in names)])
    header = ['outputs subscribed', 'Fast DDS', 'published', 'node processed (replaced in the '
              'node)', 'complete', 'complete / processed', 'processed, not complete',
              'received per output']
    command = ' '.join(['python', 'benchmarks/delivery_bench.py'] + args.argv)
    return (f'Command: `{command}` ({minutes:.1f} min). Machine: {machine()}; model '
            f'{args.model}; {args.size[0]}x{args.size[1]} rgb8 at {args.rate:g} Hz for '
            f'{args.seconds:g} s per row; the client subscribes reliable, depth 10, the node '
            f'publishes reliable, depth 1.\n\n'
            + markdown_table(header, rows) + '\n')


def output_set(text):
    """Parse 'all' or a comma list of output names."""
    names = OUTPUTS if text == 'all' else tuple(n.strip() for n in text.split(',') if n.strip())
    unknown = set(names) - set(OUTPUTS)
    if unknown or not names:
        raise SystemExit(f'delivery_bench: unknown outputs {sorted(unknown)} in {text!r}; '
                         f'valid: all or some of {", ".join(OUTPUTS)}')
    return tuple(names)


def parse_size(text):
    """Parse WxH."""
    width, height = (int(v) for v in text.lower().split('x'))
    return width, height


def main(argv=None):
    """Run the benchmark (or, with --client, the client process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--client', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--profiles', nargs='+', default=['shm', 'none'], choices=PROFILES)
    parser.add_argument('--output-sets', nargs='+', default=['all'],
                        help='sets of outputs to subscribe, e.g. all label label,color,drivable')
    parser.add_argument('--outputs', default='all', help=argparse.SUPPRESS)  # the client's
    parser.add_argument('--model', default='espnet', choices=('espnet', 'tiny'))
    parser.add_argument('--size', type=parse_size, default=(480, 360))
    parser.add_argument('--rate', type=float, default=10.0)
    parser.add_argument('--seconds', type=float, default=45.0)
    parser.add_argument('--grace', type=float, default=3.0)
    parser.add_argument('--startup', type=float, default=120.0)
    parser.add_argument('--diagnostics-period', type=float, default=0.5)
    parser.add_argument('--domain', type=int,
                        default=int(os.environ.get('ROS_DOMAIN_ID', '0') or 0))
    parser.add_argument('--cache', default='')
    parser.add_argument('--workdir', default=str(ROOT / 'build' / 'delivery_bench'))
    parser.add_argument('--json', default='', help='write the raw results to this file')
    parser.add_argument('--markdown', default='', help='replace a section of this file')
    parser.add_argument('--section', default='delivery_bench', help='the section to replace')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.outputs = output_set(args.outputs)
    if args.client:
        return client_main(args)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = []
    for outputs in args.output_sets:
        for profile in args.profiles:
            results.append(run_profile(args, profile, output_set(outputs)))
            print(json.dumps(results[-1]), flush=True)
    text = report(args, results, (time.monotonic() - start) / 60.0)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.markdown:
        write_section(args.markdown, args.section, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""
The soak in CI: 1500 frames at 160x120 through DDS with the tiny model (benchmarks/soak.py).

Publisher process -> node process -> this process, closed loop at full speed. After the
warm-up, the node's resident memory, threads and open files must not grow and the latency
must not drift; the thresholds suit a run of about 10 s (the full run: docs/RELIABILITY.md).
A ROS domain of its own.
"""

import importlib
from pathlib import Path
import sys

from conftest import claim_domain

ROOT = Path(__file__).resolve().parents[1]
# An importable module: the publisher runs in a spawned process that imports it again.
if str(ROOT / 'benchmarks') not in sys.path:
    sys.path.insert(0, str(ROOT / 'benchmarks'))
soak = importlib.import_module('soak')

ARGS = ['--frames', '1500', '--size', '160x120', '--sample-period', '0.25', '--warmup', '0.2',
        '--max-rss-growth', '20', '--max-latency-ratio', '2.0', '--latency-slack', '10',
        '--report-period', '5', '--domain', str(claim_domain())]


def test_short_soak():
    args = soak.parser().parse_args(ARGS)
    args.argv = ARGS
    result = soak.run(args)
    report = '\n'.join(f"{'PASS' if ok else 'FAIL'}  {name}: {text}"
                       for name, ok, text in result['checks'])
    print(report)
    print(soak.markdown(result))
    assert result['frames_complete'] >= 0.99 * 1500, report
    assert result['passed'], report

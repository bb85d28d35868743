"""Smoke test of benchmarks/e2e_bench.py in its quickest mode (tiny random model, seconds)."""

import json
from pathlib import Path
import subprocess
import sys

from conftest import claim_domain

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_bench_quick(tmp_path):
    result_file = tmp_path / 'e2e.json'
    domain = claim_domain()
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'e2e_bench.py'),
           '--sizes', '96x72', '--models', 'tiny', '--transport', 'raw', '--cameras', '1',
           '--seconds', '1', '--idle-seconds', '0.5', '--grace', '1',
           '--runtimes', 'torch', 'auto',
           '--dds-profiles', 'none', '--node-dds-profile', 'none',
           '--domains', str(domain), str(domain),
           '--workdir', str(tmp_path), '--json', str(result_file)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, log
    # The node table row: model (input) | frame | input | cameras | runtime | out/s | ...
    row = next((line for line in done.stdout.splitlines()
                if line.startswith('| tiny (96x72) | 96x72 | raw | 1 | torch |')), None)
    assert row is not None, log
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert float(cells[5]) > 0, row
    # Runtimes: the auto row against its own and the fastest bare forward, and against torch.
    lines = done.stdout.splitlines()
    after = next(i for i, line in enumerate(lines) if line.startswith('**Runtimes**'))
    auto = next((line for line in lines[after:]
                 if line.startswith('| tiny (96x72) | 96x72 | raw | 1 | auto')), None)
    assert auto is not None, log
    cells = [cell.strip() for cell in auto.strip('|').split('|')]
    assert float(cells[7].rstrip(' %')) > 0 and float(cells[9].split(' %')[0]) > 0, auto
    assert float(cells[10].split(' x')[0]) > 0, auto
    # Where the time goes: node ms per frame, busy, forward in the node, ..., fixed rate.
    after = next(i for i, line in enumerate(lines) if line.startswith('**Where the time goes**'))
    split = next((line for line in lines[after:]
                  if line.startswith('| tiny | 96x72 | raw | torch |')), None)
    assert split is not None, log
    cells = [cell.strip() for cell in split.strip('|').split('|')]
    assert float(cells[4]) > 0 and float(cells[6]) >= 0 and '+' in cells[11], split
    assert 0 < float(cells[7].rstrip(' %')) <= 110, split
    result = json.loads(result_file.read_text())
    assert [r['runtime'] for r in result['nodes']] == ['torch', 'auto']
    assert result['nodes'][0]['node_runtime'].startswith('torch')
    for compared in result['runtimes']:
        assert compared['own_ratio'] > 0 and compared['fastest_ratio'] > 0
        assert compared['fastest_ms'] <= compared['own_ms']
    node = result['nodes'][0]
    assert node['full']['received'] > 0 and node['full']['throughput'] > 0
    assert 0 < node['full']['latency_ms'][0] < 5000
    assert node['fixed']['received'] > 0
    assert node['full']['cpu'] > 0
    assert node['rss_mb'] > 50
    work = node['full']['work']  # the node's own account of its worker thread
    assert work['frames'] > 0 and work['inference'] > 0
    assert 0 < work['busy_pct'] and work['busy'] >= work['inference']
    assert node['idle_frames'] == 0  # lazy_input: nothing received while nobody subscribed
    echo = result['echo'][0]
    assert echo['full']['throughput'] > 0 and echo['fixed']['received'] > 0
    assert result['ratios'][0]['throughput_ratio'] > 0


def test_rows_are_held_to_the_fastest_forward_of_their_precision():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        import e2e_bench
    finally:
        sys.path.pop(0)

    class Bench:
        forward = {('m.pth', '480x360', 1, entry): [ms] for entry, ms in
                   (('torch', 30.0), ('auto', 18.0), ('bf16', 14.0), ('int8', 12.0))}
        bare_runtimes = {}
        nodes_rows = [{'model': 'm', 'size': '480x360', 'transport': 'raw', 'mode': 'one',
                       'weights_file': 'm.pth', 'input': '480x360', 'batch': 1,
                       'runtime': entry, 'node_runtime': entry, 'bare_runtime': entry,
                       'full': {'throughput': rate}, 'forward_ms': ms, 'bare_rate': 1000 / ms}
                      for entry, ms, rate in (('torch', 30.0, 30.0), ('auto', 18.0, 50.0),
                                              ('bf16', 14.0, 60.0), ('int8', 12.0, 70.0))]

    rows = {r['runtime']: r for r in e2e_bench.compare_rows(Bench())}
    # fp32 rows against the fastest fp32 forward (auto), the others against their own.
    assert rows['torch']['fastest_ms'] == rows['auto']['fastest_ms'] == 18.0
    assert rows['auto']['fastest_ratio'] == 50.0 * 18.0 / 1000.0
    assert rows['bf16']['fastest_ms'] == 14.0 and rows['int8']['fastest_ms'] == 12.0
    assert rows['auto']['torch_speedup'] == 50.0 / 30.0

"""Smoke test of benchmarks/stage_bench.py with random ESPNetv2 weights and one run per median."""

from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


def test_stage_bench_writes_its_section(tmp_path):
    doc = tmp_path / 'PERF.md'
    doc.write_text('before\n<!-- stage_bench:begin -->\nold\n<!-- stage_bench:end -->\nafter\n')
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'stage_bench.py'), '--repeat', '1',
           '--threads', '1', '--cache', str(tmp_path), '--markdown', str(doc)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith('before\n') and text.endswith('after\n') and 'old' not in text
    rows = [line for line in text.splitlines() if line.startswith('| 1 |')]
    assert [row.split('|')[2].strip() for row in rows] == ['480x360', '1280x720', '1920x1080']
    for row in rows:
        cells = [cell.strip() for cell in row.strip('|').split('|')]
        engine, every_class = (float(v) for v in cells[3].split(' ms')[0].split(' / '))
        assert engine > 0 and every_class > 0
        assert float(cells[5].rstrip(' %')) > 99.9  # the labels agree
    assert 'weights: random' in text

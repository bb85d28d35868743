"""glibc malloc tuning (semseg_ros.core.memory), in a fresh process each time."""

import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc-specific')
def test_every_setting_is_accepted_by_glibc():
    code = ('from semseg_ros.core import memory; '
            'print(",".join(memory.retain_freed_memory()))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    assert out.split(',') == ['M_ARENA_MAX', 'M_MMAP_THRESHOLD', 'M_TRIM_THRESHOLD',
                              'M_TOP_PAD']


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc-specific')
def test_worker_thread_inference_stops_page_faulting():
    # A small conv net on a worker thread, as in the node: 16 MB activations per frame.
    code = """
import resource, sys, threading
from semseg_ros.core import memory
if sys.argv[1] == 'tuned':
    memory.retain_freed_memory()
import torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 16, 3, padding=1, stride=2), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 8, 1)).eval()
x = torch.randn(1, 3, 512, 512)
def work():
    with torch.inference_mode():
        for _ in range(5):
            net(x).max(1)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            net(x).max(1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
t = threading.Thread(target=work)
t.start()
t.join()
"""
    faults = {}
    for mode in ('default', 'tuned'):
        out = subprocess.run([sys.executable, '-c', code, mode], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        faults[mode] = int(out)
    # Measured: about 800 minor faults per frame with glibc's defaults, 0 once tuned (rarely
    # one heap growth during the measured frames).
    assert faults['default'] > 2000, faults
    assert faults['tuned'] < faults['default'] / 4, faults

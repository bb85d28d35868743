"""
Live model swap under load, without ROS: frame times and device memory around one swap.

A worker thread runs frames through the running Segmenter (as the node's worker does) while
ModelSwap loads a second model of the same size from a TorchScript file and swaps it in.
Prints the frame rate before, during and after the load, the longest frame interval around the
swap, the load time and the device memory before, at the peak and after.

    python benchmarks/swap_bench.py [--device cuda] [--layers 12] [--width 512]
"""

import argparse
import os
import tempfile
import threading
import time

import bench_common  # noqa: F401 - puts this checkout first on sys.path
import numpy as np
from semseg_ros.core import settings as cfg
from semseg_ros.core import swap
from semseg_ros.core.engine import Frame
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
import torch


def network(seed, layers, width, classes=12):
    """Return a plain conv net at 1/16 resolution: layers x (3x3 conv, width channels)."""
    torch.manual_seed(seed)
    parts = [torch.nn.Conv2d(3, width, 16, stride=16), torch.nn.ReLU()]
    for _ in range(layers):
        parts += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
    parts.append(torch.nn.Conv2d(width, classes, 1))
    return torch.nn.Sequential(*parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--device', default='auto')
    parser.add_argument('--layers', type=int, default=12)
    parser.add_argument('--width', type=int, default=512)
    parser.add_argument('--seconds', type=float, default=3.0, help='before and after the swap')
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix='swap_bench_')
    paths = [os.path.join(folder, f'model{i}.pt') for i in (1, 2)]
    for seed, path in enumerate(paths):
        torchscript.save(network(seed, args.layers, args.width), path, 12, Preprocess())
    size = os.path.getsize(paths[0]) / 2**20

    def settings(path):
        return cfg.from_values({'model.backend': 'torchscript', 'model.weights': path,
                                'device': args.device})
    swapper = swap.ModelSwap()
    running = {}
    running['seg'], _ = swap.build_engine(settings(paths[0]))
    device = running['seg'].device
    frame = Frame(np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8), 'rgb')
    stamps = []
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            with swapper.batch():
                running['seg'].process([frame], ('label', 'color'))
            stamps.append(time.monotonic())

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(args.seconds)
    start = time.monotonic()
    result = swapper.swap(settings(paths[1]), running['seg'],
                          lambda seg, base: running.update(seg=seg))
    end = time.monotonic()
    time.sleep(args.seconds)
    stop.set()
    thread.join()
    times = np.array(stamps)

    def rate(a, b):
        inside = times[(times >= a) & (times < b)]
        return len(inside) / max(b - a, 1e-9)

    gaps = np.diff(times[(times >= start - 1.0) & (times < end + 1.0)])
    usual = np.median(np.diff(times[times < start]))
    print(f'device {device}, model file {size:.0f} MiB, swap ok: {result.ok} {result.reason}')
    print(f'frames/s: before {rate(start - args.seconds, start):.1f}, during the load '
          f'{rate(start, end):.1f} ({(end - start):.2f} s), '
          f'after {rate(end, end + args.seconds):.1f}')
    print(f'frame interval: median before {1000 * usual:.1f} ms, longest within 1 s of the '
          f'load {1000 * gaps.max():.1f} ms')
    print(f'load {result.seconds:.2f} s; memory: {result.memory or "n/a (CPU)"}')


if __name__ == '__main__':
    main()

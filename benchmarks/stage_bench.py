"""
The engine's CPU stages around the forward: preprocessing and label upsampling, per frame size.

Preprocessing: a uint8 RGB frame to the normalised model input (ESPNetv2: 1024x512), as the
Segmenter does it (float in the frame's channels-last layout, resize, channel order after)
against the planar way (a (3, H, W) float copy first, then resize). Label upsampling:
ESPNetv2's 512x256 logits of the road image to the frame, as the Segmenter does it on the CPU
(``sparse_labels``: interpolation only at class borders) against interpolating every class
(``dense_labels``); the share of border pixels is reported. Both pairs give the same values
(checked here too). Medians of repeated runs, alternating, for each torch thread count.

    PYTHONPATH=. .venv/bin/python benchmarks/stage_bench.py [--repeat 20] [--threads 1 2]
        [--markdown docs/PERFORMANCE.md]
"""

import argparse
import statistics
import sys

from bench_common import add_cache_argument
from bench_common import machine
from bench_common import markdown_table
from bench_common import write_section
import cv2
from engine_bench import load
from engine_bench import median_ms
from engine_bench import road_image
import numpy as np
from semseg_ros.core import classes as class_sets
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.upsample import bilinear_taps
from semseg_ros.core.upsample import dense_labels
from semseg_ros.core.upsample import sparse_labels
import torch
import torch.nn.functional as F

SIZES = ((480, 360), (1280, 720), (1920, 1080))


def planar_preprocess(seg, frame):
    """Return the model input the planar way: (3, H, W) float copy, resize, normalise."""
    chw = torch.from_numpy(frame).permute(2, 0, 1)[[0, 1, 2]].to(torch.float32)
    width, height = seg.input_size
    chw = F.interpolate(chw[None], size=(height, width), mode='bilinear', align_corners=False)
    return torch.stack([chw[0]]).mul_(seg._gain).add_(seg._bias)


def engine_preprocess(seg, frame):
    """Return the model input as the Segmenter builds it."""
    _, chw = seg._to_chw(Frame(frame, 'rgb'))
    return seg._batch([chw])[0][0]


def alternate(first, second, repeat):
    """Return the medians (ms) of first and second, timed alternately three times."""
    a, b = [], []
    for _ in range(3):
        a.append(median_ms(first, repeat))
        b.append(median_ms(second, repeat))
    return statistics.median(a), statistics.median(b)


def bench(model, road, repeat, threads):
    """Time both stages at every size with `threads` torch threads; return table rows."""
    torch.set_num_threads(threads)
    seg = Segmenter(model, class_sets.load(model.class_set), device='cpu', warmup=False)
    width, height = seg.input_size
    model_in = cv2.resize(road, (width, height), interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        batch = planar_preprocess(seg, np.ascontiguousarray(model_in))
        logits = model.logits(batch)[0].float().contiguous()
    low = logits.max(dim=0).indices
    rows = []
    for w, h in SIZES:
        frame = np.ascontiguousarray(cv2.resize(road, (w, h), interpolation=cv2.INTER_AREA))
        with torch.inference_mode():
            ours, planar = engine_preprocess(seg, frame), planar_preprocess(seg, frame)
            if not torch.allclose(ours, planar, atol=1e-4):
                raise SystemExit(f'preprocessing differs at {w}x{h}')
            pre = alternate(lambda: engine_preprocess(seg, frame),
                            lambda: planar_preprocess(seg, frame), repeat)
            sparse = sparse_labels(logits, (h, w), low)
            dense = dense_labels(logits, (h, w))
            same = (sparse.long() == dense).float().mean().item()
            up = alternate(lambda: sparse_labels(logits, (h, w), low),
                           lambda: dense_labels(logits, (h, w)), repeat)
        border = border_share(low, (h, w))
        rows.append((threads, f'{w}x{h}', pre, up, border, same))
    return rows


def border_share(low, size):
    """Return the share of output pixels whose four source pixels disagree."""
    padded = F.pad(low[None, None].float(), (0, 1, 0, 1), mode='replicate')[0, 0]
    block = torch.stack((padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]))
    mixed = (block != block[0]).any(dim=0)
    rows = bilinear_taps(low.shape[0], size[0])[0]
    cols = bilinear_taps(low.shape[1], size[1])[0]
    return mixed[rows][:, cols].float().mean().item()


def table(rows):
    """Return the markdown table of the results."""
    header = ('torch threads', 'frame', 'preprocess to 1024x512: engine / planar ms',
              'labels from 512x256 logits: engine / every class ms', 'border pixels',
              'labels equal')
    return markdown_table(header, [
        (threads, frame, f'{pre[0]:.2f} / {pre[1]:.2f}', f'{up[0]:.2f} / {up[1]:.2f}',
         f'{border * 100:.1f} %', f'{same * 100:.3f} %')
        for threads, frame, pre, up, border, same in rows])


def main(argv=None):
    """Run the benchmark and print (or write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--repeat', type=int, default=20, help='runs per median')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    add_cache_argument(parser)
    parser.add_argument('--markdown', help='update the stage_bench section of this file')
    args = parser.parse_args(argv)
    model, weights = load('espnetv2', args.cache)
    road, source = road_image(args.cache)
    rows = []
    for threads in args.threads:
        rows.extend(bench(model, road, args.repeat, threads))
    command = 'python benchmarks/stage_bench.py ' + ' '.join(argv or sys.argv[1:])
    text = (f'Command: `{command.strip()}`. Machine: {machine("cpu")}. ESPNetv2 weights: '
            f'{weights}; road image: {source}. Medians of 3 x {args.repeat} runs, engine and '
            'reference alternating.\n\n' + table(rows) + '\n')
    print(text)
    if args.markdown:
        write_section(args.markdown, 'stage_bench', text)
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""
Engine overhead: bare model forward vs the whole Segmenter, per model and frame size.

Bare forward: a preprocessed (1, 3, h, w) tensor through the model, nothing else. Engine: an
(H, W, 3) uint8 RGB ndarray in, the uint8 output arrays out (upload, channel order, resize,
normalise, forward, upsampling to the input size, argmax, lookup tables, download). Both are
timed in the same process, alternating, and reported as medians of repeated runs.

Two inputs: 'road', a CamVid road scene (the first camvid_val image beside the weights cache,
else a drawn road scene), and 'noise', uniform random pixels, the worst case for the engine
(the network's labels turn into speckle, so nearly every pixel sits on a class border).

    make bench-engine        (or: PYTHONPATH=. .venv/bin/python benchmarks/engine_bench.py
                              [--repeat 15] [--markdown docs/PERFORMANCE.md])

With --runtimes the same rows are timed once per runtime, side by side in one process, the
runtimes alternating on the same frames, and each row says how many of its labels equal those
of the first runtime (torch): e.g. --runtimes torch onnxruntime openvino on the CPU, or
--runtimes torch torch:fp16 torch:compile onnxruntime tensorrt tensorrt:fp16 on CUDA. A runtime
that cannot run here (package or provider missing) gets a row saying why. openvino:int8 is
precision int8 (NNCF quantization, calibrated on --calibration-folder, its mIoU gate on the
model's --validation-folder MODEL=DATASET when given, else on the fp32 labels; the row's
'runtime chosen' says whether int8 was accepted and the figures). No rclpy needed.
"""

import argparse
import copy
import os
from pathlib import Path
import statistics
import sys
import time

from bench_common import add_cache_argument
from bench_common import ASSETS
from bench_common import machine
from bench_common import markdown_table
from bench_common import write_section
import cv2
import numpy as np
from semseg_ros.core import classes as class_sets
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.models import create_model
from semseg_ros.core.models.espnet import ESPNet
from semseg_ros.core.models.espnetv2 import ESPNetv2
from semseg_ros.core.runtimes import RuntimeSetupError
import torch

SIZES = ((480, 360), (1280, 720))
CAMVID_TRAIN = ASSETS / 'camvid_train' / 'images'
OUTPUT_SETS = {
    'label+color+drivable': ('label', 'color', 'drivable'),
    'all five': ('label', 'color', 'overlay', 'drivable', 'confidence'),
}


def load(name, cache):
    """Return the model with published weights when found, else random weights."""
    spec = {'espnet': 'espnet_p_2_q_8_camvid.pth',
            'espnetv2': 'espnetv2_s_2.0_city_1024x512.pth'}[name]
    path = Path(cache) / spec if cache else None
    if path is not None and path.is_file():
        return create_model(name, weights=str(path), download=False), 'published'
    model = ESPNet() if name == 'espnet' else ESPNetv2()
    return model.eval(), 'random'


def road_image(cache):
    """Return (RGB image, source): a CamVid frame when the assets are there, else a drawing."""
    if cache:
        folder = Path(cache).parent / 'camvid_val' / 'images'
        found = sorted(folder.glob('*.png')) if folder.is_dir() else []
        if found:
            return cv2.cvtColor(cv2.imread(str(found[0])), cv2.COLOR_BGR2RGB), found[0].name
    image = np.zeros((360, 480, 3), np.uint8)
    image[:150] = (135, 180, 230)  # sky
    image[150:] = (70, 110, 60)  # verges
    road = np.array([[200, 150], [280, 150], [480, 360], [0, 360]], np.int32)
    cv2.fillPoly(image, [road], (100, 100, 100))
    cv2.rectangle(image, (20, 90), (140, 200), (150, 80, 70), -1)  # a building
    return image, 'drawn road scene'


def frames(width, height, road):
    """Return {input name: Frame} at the given size."""
    noise = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    scaled = cv2.resize(road, (width, height), interpolation=cv2.INTER_AREA)
    return {'road': Frame(np.ascontiguousarray(scaled), 'rgb'), 'noise': Frame(noise, 'rgb')}


def median_ms(function, repeat):
    """Return the median wall time of function() in ms (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def bench(name, model, width, height, repeat, device, road, images):
    """Time bare forward and the engine for one model at one frame size."""
    native = name == 'espnet'  # ESPNet runs at the frame size, ESPNetv2 at its 1024x512
    size = (width, height) if native else None
    cls = class_sets.load(model.class_set)
    rows = []
    inputs = frames(width, height, road)
    for image, (label, outputs) in ((i, o) for i in images for o in OUTPUT_SETS.items()):
        frame = inputs[image]
        seg = Segmenter(model, cls, device=device, input_size=size)
        mw, mh = seg.input_size
        batch = torch.randn(1, 3, mh, mw, device=seg.device)

        def forward():
            with torch.inference_mode():
                seg.model(batch)
            if seg.device.type == 'cuda':
                torch.cuda.synchronize()

        def engine():
            seg.process([frame], outputs)

        bare, full = [], []
        for _ in range(3):  # alternate to share the machine's noise
            bare.append(median_ms(forward, repeat))
            full.append(median_ms(engine, repeat))
        bare_ms, full_ms = statistics.median(bare), statistics.median(full)
        rows.append((name, f'{width}x{height}', f'{mw}x{mh}', image, label, bare_ms, full_ms,
                     bare_ms / full_ms))
    return rows


def variant(spec, int8=None):
    """Return Segmenter options of a --runtimes entry: runtime[:fp16|bf16|int8|compile]."""
    runtime, _, extra = spec.partition(':')
    options = {'runtime': runtime}
    if extra in ('fp16', 'bf16'):
        options['precision'] = extra
    elif extra == 'int8':
        options.update(precision='int8', int8=int8)
    elif extra == 'compile':
        options['compiled'] = True
    elif extra:
        raise SystemExit(f'--runtimes {spec}: expected runtime[:fp16|bf16|int8|compile]')
    return options


def bench_runtimes(name, model, width, height, repeat, device, road, images, outputs, specs,
                   int8=None):
    """
    Time bare forward and engine per runtime, alternating, on the same frames.

    Return rows (model, frame, model input, image, outputs, runtime, bare ms, engine ms,
    ratio, labels equal to the first runtime, note).
    """
    native = name == 'espnet'
    size = (width, height) if native else None
    cls = class_sets.load(model.class_set)
    inputs = frames(width, height, road)
    segs, notes = {}, {}
    for spec in specs:
        start = time.perf_counter()
        try:
            # A copy each: compile and device moves change a model in place.
            segs[spec] = Segmenter(copy.deepcopy(model), cls, device=device, input_size=size,
                                   **variant(spec, int8))
        except (RuntimeSetupError, RuntimeError) as exc:
            notes[spec] = f'not run: {exc}'
            print(f'{name} {width}x{height} {spec}: {notes[spec]}', flush=True)
            continue
        prime = getattr(segs[spec].model, 'prime', None)
        if prime and segs[spec].input_size and getattr(segs[spec].model, 'int8', None) is None:
            # The bare forward's entry set up at start-up too (its faster graph form).
            prime('forward', segs[spec].input_size[1], segs[spec].input_size[0])
        notes[spec] = segs[spec].runtime.summary()
        print(f'{name} {width}x{height} {spec}: {notes[spec]} (set up in '
              f'{time.perf_counter() - start:.1f} s)', flush=True)
    rows = []
    for image, label in ((i, o) for i in images for o in outputs):
        frame = inputs[image]
        wanted = OUTPUT_SETS[label]
        bare, full, agree = {s: [] for s in segs}, {s: [] for s in segs}, {}
        reference = None
        for spec, seg in segs.items():
            labels = seg.process([frame], ('label',))[0]['label']
            if reference is None:
                reference = labels
            agree[spec] = float((labels == reference).mean())
        for _ in range(3):  # alternate to share the machine's noise
            for spec, seg in segs.items():
                mw, mh = seg.input_size
                batch = torch.randn(1, 3, mh, mw, device=seg.device)

                def forward(seg=seg, batch=batch):
                    with torch.inference_mode(), seg._autocast():
                        seg.model(batch)
                    if seg.device.type == 'cuda':
                        torch.cuda.synchronize()

                def engine(seg=seg):
                    seg.process([frame], wanted)

                bare[spec].append(median_ms(forward, repeat))
                full[spec].append(median_ms(engine, repeat))
        for spec in specs:
            if spec not in segs:
                rows.append((name, f'{width}x{height}', '', image, label, spec, None, None,
                             None, None, notes[spec]))
                continue
            mw, mh = segs[spec].input_size
            bare_ms, full_ms = statistics.median(bare[spec]), statistics.median(full[spec])
            rows.append((name, f'{width}x{height}', f'{mw}x{mh}', image, label, spec, bare_ms,
                         full_ms, bare_ms / full_ms, agree[spec], notes[spec]))
    return rows


def runtime_table(rows):
    """Return the markdown table of a --runtimes run."""
    header = ('model', 'frame', 'model input', 'image', 'outputs', 'runtime',
              'bare forward (ms)', 'engine (ms)', 'engine / forward', 'labels = first',
              'runtime chosen')

    def cell(value, form):
        return '-' if value is None else form.format(value)

    return markdown_table(header, [
        (name, frame, model_in, image, outputs, spec, cell(bare, '{:.1f}'),
         cell(full, '{:.1f}'), cell(None if ratio is None else ratio * 100, '{:.0f} %'),
         cell(None if agree is None else agree * 100, '{:.2f} %'), note.replace('|', '/'))
        for name, frame, model_in, image, outputs, spec, bare, full, ratio, agree, note
        in rows])


def table(rows):
    """Return the markdown table of the results."""
    header = ('model', 'frame', 'model input', 'image', 'outputs', 'bare forward (ms)',
              'engine (ms)', 'engine throughput / forward')
    return markdown_table(header, [
        (name, frame, model_in, image, outputs, f'{bare:.1f}', f'{full:.1f}',
         f'{ratio * 100:.0f} %')
        for name, frame, model_in, image, outputs, bare, full, ratio in rows])


def main(argv=None):
    """Run the benchmark and print (or write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--repeat', type=int, default=15, help='runs per median')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--models', nargs='+', default=['espnet', 'espnetv2'])
    add_cache_argument(parser)
    parser.add_argument('--images', nargs='+', choices=('road', 'noise'),
                        default=['road', 'noise'], help='inputs to time')
    parser.add_argument('--outputs', nargs='+', choices=tuple(OUTPUT_SETS),
                        default=list(OUTPUT_SETS), help='output sets to time')
    parser.add_argument('--sizes', nargs='+', default=[f'{w}x{h}' for w, h in SIZES],
                        help='frame sizes WIDTHxHEIGHT')
    parser.add_argument('--runtimes', nargs='+', metavar='RUNTIME[:fp16|bf16|int8|compile]',
                        help='compare runtimes (torch, onnxruntime, openvino, tensorrt; the '
                             'first is the label reference) instead of the default table')
    parser.add_argument('--calibration-folder', default=str(CAMVID_TRAIN),
                        help='frames that calibrate openvino:int8 (default: camvid_train)')
    parser.add_argument('--validation-folder', nargs='+', default=[], metavar='MODEL=DATASET',
                        help="labelled dataset (the model's class ids) for int8's mIoU gate")
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads (the runtimes follow); 0 = torch default')
    parser.add_argument('--markdown', help='update the engine_bench (or, with --runtimes, '
                        'engine_runtimes) section of this file')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in text.lower().split('x')) for text in args.sizes]
    rows = []
    weights = {}
    road, source = road_image(args.cache)
    if args.runtimes:
        return run_runtimes(args, sizes, road, source)
    for name in args.models:
        model, weights[name] = load(name, args.cache)
        for width, height in sizes:
            new = bench(name, model, width, height, args.repeat, args.device, road, args.images)
            rows.extend(new)
            print('\n'.join(table(new).splitlines()[2:]), flush=True)
    text = (f'Machine: {machine(args.device)}. Weights: '
            + ', '.join(f'{k} {v}' for k, v in weights.items())
            + f'. Road image: {source}. Medians of 3 x {args.repeat} runs, bare and engine '
            'alternating.\n\n'
            + table(rows) + '\n')
    print('\n' + text)
    if args.markdown:
        write_section(args.markdown, 'engine_bench', text)
    return 0


def run_runtimes(args, sizes, road, source):
    """Run the --runtimes comparison; print (and write) its table."""
    rows, weights = [], {}
    for name in args.models:
        model, weights[name] = load(name, args.cache)
        for width, height in sizes:
            validation = dict(item.split('=', 1) for item in args.validation_folder)
            int8 = {'calibration_folder': args.calibration_folder,
                    'validation_folder': validation.get(name, '')}
            new = bench_runtimes(name, model, width, height, args.repeat, args.device, road,
                                 args.images, args.outputs, args.runtimes, int8)
            rows.extend(new)
            print('\n'.join(runtime_table(new).splitlines()[2:]), flush=True)
    load_avg = ', '.join(f'{v:.2f}' for v in os.getloadavg())
    try:
        where = machine(args.device)
    except RuntimeError as exc:  # no CUDA driver
        where = f'{machine("cpu")} ({args.device} requested: {str(exc).splitlines()[0]})'
    text = (f'Command: `python benchmarks/engine_bench.py {" ".join(args.argv)}`. Machine: '
            f'{where}; load average at the end {load_avg}. Weights: '
            + ', '.join(f'{k} {v}' for k, v in weights.items())
            + f'. Road image: {source}. Medians of 3 x {args.repeat} runs; the runtimes '
            'alternate on the same frames in one process. Labels = first: pixels whose label '
            f'equals that of {args.runtimes[0]} on the same frame.\n\n'
            + runtime_table(rows) + '\n')
    print('\n' + text)
    if args.markdown:
        write_section(args.markdown, 'engine_runtimes', text)
    return 0


if __name__ == '__main__':
    sys.exit(main())

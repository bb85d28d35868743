"""
semseg-ros-model: inspect, check and describe a model file before the node runs it.

    semseg-ros-model inspect FILE [--backend B] [--options YAML] [--allow-pickle]
    semseg-ros-model check FILE [--data DIR] [--compare MODEL] [--frames N]
    semseg-ros-model card FILE --mean R G B --std R G B --classes SET [--channel-order bgr]
                               [--scale S] [--input-size W H] [--size-divisor D]
                               [--resize stretch|letterbox] ...

``inspect`` prints the backend (inferred when --backend is auto), the file's inputs and
outputs, its card or metadata, the preprocessing that will be used and where it comes from,
the output kind and the class set, and the warnings the node would log. ``check`` runs one
frame (the first image of --data, else a synthetic one), times it, compares the label map
with another model (--compare: a backend name such as espnet, or another model path) and, on
a labelled folder (images/ + labels/), gives a quick pixel accuracy and mIoU on the first
--frames images. ``card`` writes a model card beside FILE (same stem, .yaml) and loads the
model with it to check it. Errors print one line and exit with status 1.
"""

import argparse
from pathlib import Path
import sys
import time

import numpy as np
from semseg_ros.core import classes as class_sets
from semseg_ros.core.engine import Frame, Segmenter
from semseg_ros.core.metrics import ConfusionMatrix
from semseg_ros.core.models.base import ModelError
from semseg_ros.core.models.card import card_class_set, FORMATS, ModelCard
from semseg_ros.core.models.card import OUTPUT_KINDS, read_card, write_card
from semseg_ros.core.models.loader import detect, load_model
from semseg_ros.core.models.registry import available_backends
import torch
import yaml

PROG = 'semseg-ros-model'


class ToolError(RuntimeError):
    """A bad file or option: printed as one line, exit status 1."""


def _options(text):
    if not text:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ToolError(f'--options is not valid YAML: {exc}') from None
    if not isinstance(value, dict):
        raise ToolError(f'--options must be a YAML mapping like "{{key: value}}", not {text!r}')
    return value


def load(args):
    """Load the model of the command line."""
    return load_model(args.backend, args.file, _options(args.options),
                      download=not args.offline, allow_pickle=args.allow_pickle)


def load_reference(args):
    """Load the --compare model: a backend name (with --compare-weights) or a model path."""
    spec = args.compare
    if not Path(spec).expanduser().exists() and spec in available_backends():
        return load_model(spec, args.compare_weights or '', download=not args.offline,
                          allow_pickle=args.allow_pickle)
    return load_model('auto', spec, download=not args.offline, allow_pickle=args.allow_pickle)


def class_set_of(model, classes=''):
    """Return the class set the node would use for the model (as pipeline.load_classes)."""
    name = classes or model.class_set
    if name:
        return class_sets.load(name)
    if getattr(model, 'classes', None) is not None:
        return model.classes
    return class_sets.generic(model.num_classes)


def _fmt_pre(pre):
    size = 'frame size' if pre.input_size is None else '%dx%d' % tuple(pre.input_size)
    return (f'channel_order {pre.channel_order}, mean {[round(v, 4) for v in pre.mean]}, '
            f'std {[round(v, 4) for v in pre.std]}, scale {pre.scale:.6g}, input size {size}, '
            f'size divisor {pre.size_divisor}, resize {pre.resize}')


def io_lines(model):
    """Return lines describing the model's inputs and outputs."""
    session = getattr(model, '_session', None)
    if session is not None:  # ONNX: what the file declares
        lines = [f'input  {i.name}: {i.type} {i.shape}' for i in session.get_inputs()]
        lines += [f'output {o.name}: {o.type} {o.shape}'
                  + (' (used)' if o.name == model.output_name else '')
                  for o in session.get_outputs()]
        return lines
    pre = model.preprocess
    div = max(1, int(pre.size_divisor))
    w, h = pre.input_size or (64 * div, 64 * div)
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, h, w))
    return [f'input  (1, 3, {h}, {w}) float32 (probe)',
            f'output {tuple(out.shape)} {str(out.dtype).replace("torch.", "")} (probe)']


def inspect(args, out=print):
    """Print what the node would load; return the model."""
    model = load(args)
    card = getattr(model, 'card', None)
    out(f'file:          {args.file}')
    how = f' ({model.detected})' if getattr(model, 'detected', '') else ''
    out(f'backend:       {model.backend}{how}')
    out(f'card:          {model.card_path if card is not None else "none"}')
    for line in io_lines(model):
        out(f'  {line}')
    out(f'output kind:   {model.output_kind}')
    source = getattr(model, 'preprocess_source', None) or f'the {model.backend} backend'
    out(f'preprocessing: {_fmt_pre(model.preprocess)}')
    out(f'  from:        {source}')
    classes = class_set_of(model)
    names = ', '.join(classes.names[:12]) + (', ...' if len(classes) > 12 else '')
    out(f'classes:       {model.num_classes} ({classes.name}, {classes.source}): {names}')
    if card is not None and card.provenance:
        out(f'provenance:    {yaml.safe_dump(card.provenance, default_flow_style=True).strip()}')
    warnings = list(getattr(model, 'warnings', ()) or ())
    if model.output_kind == 'class_ids':
        warnings.append('the model outputs class ids: no confidence output')
    for line in warnings:
        out(f'WARNING: {line}')
    return model


def _read_image(path):
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ToolError(f'cannot read image {path}')
    return Frame(bgr, 'bgr')


def _pairs(folder):
    from semseg_ros.tools.evaluate import dataset_pairs, EvalError

    try:
        return dataset_pairs(folder)
    except EvalError as exc:
        raise ToolError(str(exc)) from None


def check(args, out=print):
    """Run frames through the model; time, compare, score. Return a dict of the figures."""
    model = load(args)
    classes = class_set_of(model, args.classes)
    segmenter = Segmenter(model, classes, device=args.device, warmup=False)
    for line in segmenter.warnings:
        out(f'WARNING: {line}')
    pairs, images = [], []
    if args.data:
        data = Path(args.data)
        if (data / 'images').is_dir() and (data / 'labels').is_dir():
            pairs = _pairs(data)
            images = [p for p, _ in pairs]
        elif data.is_dir():
            images = sorted(p for p in data.iterdir()
                            if p.suffix.lower() in ('.png', '.jpg', '.jpeg', '.bmp'))
        elif data.is_file():
            images = [data]
        if not images:
            raise ToolError(f'--data {data}: no image found (give an image, a folder of '
                            'images, or a folder with images/ and labels/)')
    if images:
        frame = _read_image(images[0])
    else:
        rng = np.random.default_rng(0)
        frame = Frame(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8), 'bgr')
    start = time.perf_counter()
    first = segmenter.process([frame], ('label',))[0]['label']
    cold = time.perf_counter() - start
    times = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        segmenter.process([frame], ('label',))
        times.append(time.perf_counter() - start)
    result = {'first_ms': cold * 1e3, 'median_ms': float(np.median(times)) * 1e3}
    h, w = first.shape
    out(f'one frame {w}x{h}: first {result["first_ms"]:.1f} ms, then median '
        f'{result["median_ms"]:.1f} ms over {len(times)} on {segmenter.device}; labels used: '
        f'{sorted(np.unique(first).tolist())[:20]}')
    if args.compare:
        other = load_reference(args)
        ref = Segmenter(other, class_set_of(other, args.classes), device=args.device,
                        warmup=False)
        want = ref.process([frame], ('label',))[0]['label']
        result['agreement'] = float(np.mean(first == want))
        out(f'agreement with {args.compare}: {result["agreement"]:.6f} of the pixels '
            f'({int(np.sum(first != want))} differ)')
    if pairs:
        ignore = classes.ignore_id
        if ignore is not None and ignore != len(classes) - 1:
            raise ToolError(f'the ignore id of {classes.name!r} must be its last class')
        matrix = ConfusionMatrix(len(classes) - (ignore is not None), ignore_index=ignore)
        for image_path, label_path in pairs[:args.frames]:
            import cv2

            truth = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            if truth is None or truth.ndim != 2:
                raise ToolError(f'cannot read the single-channel label {label_path}')
            pred = segmenter.process([_read_image(image_path)], ('label',))[0]['label']
            if pred.shape != truth.shape:
                raise ToolError(f'{label_path}: label size {truth.shape[::-1]} differs from '
                                f'the image size {pred.shape[::-1]}')
            try:
                matrix.update(pred.astype(np.int64), truth.astype(np.int64))
            except ValueError as exc:
                raise ToolError(f'{label_path}: {exc} (are the labels ids of {classes.name!r}? '
                                'give --classes)') from None
        count = min(len(pairs), args.frames)
        result.update(pixel_accuracy=float(matrix.pixel_accuracy()),
                      mean_iou=float(matrix.mean_iou()), frames=count)
        out(f'{count} labelled frames of {args.data} (as {classes.name}): pixel accuracy '
            f'{result["pixel_accuracy"]:.4f}, mIoU {result["mean_iou"]:.4f}')
    return result


def make_card(args, out=print):
    """Write a card beside the file (or --out) and load the model with it."""
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise ToolError(f'{path} is not a file')
    target = Path(args.out) if args.out else path.with_suffix('.yaml')
    if target.exists() and not args.force:
        raise ToolError(f'{target} exists (use --force to replace it)')
    fmt = args.format or detect(path)[0]
    try:
        classes = class_sets.load(args.classes)
    except class_sets.ClassSetError as exc:
        raise ToolError(str(exc)) from None
    spec = args.classes
    if Path(args.classes).suffix in ('.yaml', '.yml'):
        spec = classes.to_dict()  # inline, so the card does not depend on the path
    try:
        file = str(path.resolve().relative_to(target.resolve().parent))
    except ValueError:
        file = str(path.resolve())
    pre = {'channel_order': args.channel_order, 'mean': list(args.mean), 'std': list(args.std),
           'scale': args.scale, 'input_size': list(args.input_size) if args.input_size else None,
           'size_divisor': args.size_divisor, 'resize': args.resize}
    card = ModelCard(file=file, format=fmt, num_classes=args.num_classes or len(classes),
                     classes=spec, preprocess=pre,
                     output={'kind': args.output_kind, 'name': args.output_name or None},
                     options=_options(args.options),
                     provenance={k: v for k, v in (('base_model', args.base_model),
                                                   ('trained_on', args.trained_on),
                                                   ('tool', PROG)) if v})
    backup = target.read_bytes() if target.exists() else None
    written = write_card(card, target)
    try:
        model = load_model('auto', str(written), download=not args.offline,
                           allow_pickle=args.allow_pickle)
        card_class_set(read_card(written), written.parent, str(written))
    except Exception as exc:  # noqa: B902 - any failure: the card is removed again
        if backup is None:
            written.unlink()
        else:
            written.write_bytes(backup)
        raise ToolError(f'the model does not load with this card ({type(exc).__name__}: '
                        f'{exc}); no card written') from None
    out(f'wrote {written}: {fmt}, {model.num_classes} classes ({classes.name}), '
        f'{card.output_kind}; semseg-ros-model inspect {written} shows it')
    return written


def _numbers(count):
    return {'nargs': count, 'type': float, 'metavar': ('R', 'G', 'B')[:count]
            if count == 3 else ('W', 'H')}


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)

    def common(p):
        p.add_argument('file', help='model file, model directory or card')
        p.add_argument('--backend', default='auto', help='model backend (default: auto)')
        p.add_argument('--options', default='', help='backend options as a YAML mapping')
        p.add_argument('--allow-pickle', action='store_true',
                       help='allow pickled model files (Ultralytics .pt): only files you trust')
        p.add_argument('--offline', action='store_true', help='never download weights')

    common(sub.add_parser('inspect', help='print inputs, outputs, card, preprocessing, classes'))
    p = sub.add_parser('check', help='run, time, compare and score the model')
    common(p)
    p.add_argument('--data', help='image folder, or a labelled folder with images/ + labels/')
    p.add_argument('--frames', type=int, default=10, help='labelled frames to score (10)')
    p.add_argument('--repeat', type=int, default=3, help='timed runs of the frame (3)')
    p.add_argument('--compare', help='another model to compare the labels with: a backend '
                   'name (espnet, espnetv2) or a model path')
    p.add_argument('--compare-weights', default='',
                   help='weights of a --compare backend (default: its published ones)')
    p.add_argument('--classes', default='', help="the labels' class set (default: the model's)")
    p.add_argument('--device', default='cpu', help='torch device (cpu)')
    p = sub.add_parser('card', help='write a model card for a file without one')
    p.add_argument('file', help='the model file')
    p.add_argument('--mean', required=True, **_numbers(3),
                   help='per-channel mean in 0..255 pixel units, in channel_order')
    p.add_argument('--std', required=True, **_numbers(3), help='per-channel std (0..255 units)')
    p.add_argument('--classes', required=True,
                   help='class set: a name in config/classes or a class-set YAML (inlined)')
    p.add_argument('--channel-order', default='rgb', choices=('rgb', 'bgr'))
    p.add_argument('--scale', type=float, default=1.0 / 255.0,
                   help='factor after (x - mean) / std (default 1/255)')
    p.add_argument('--input-size', type=int, nargs=2, metavar=('W', 'H'),
                   help='size the model runs at (default: each frame its own)')
    p.add_argument('--size-divisor', type=int, default=1)
    p.add_argument('--resize', choices=('stretch', 'letterbox'), default='stretch',
                   help='how a frame meets --input-size (default: stretch)')
    p.add_argument('--num-classes', type=int, default=0,
                   help='class count (default: that of the class set)')
    p.add_argument('--output-kind', default='logits', choices=OUTPUT_KINDS)
    p.add_argument('--output-name', default='', help='ONNX output to use (default: the first)')
    p.add_argument('--format', choices=FORMATS, help='backend (default: inferred)')
    p.add_argument('--options', default='', help='extra backend options (YAML mapping)')
    p.add_argument('--base-model', default='', help='provenance: the base model')
    p.add_argument('--trained-on', default='', help='provenance: the training data')
    p.add_argument('--out', help='card path (default: FILE with .yaml)')
    p.add_argument('--force', action='store_true', help='replace an existing card')
    p.add_argument('--allow-pickle', action='store_true')
    p.add_argument('--offline', action='store_true')
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    commands = {'inspect': inspect, 'check': check, 'card': make_card}
    try:
        commands[args.command](args)
    except (ToolError, ModelError, class_sets.ClassSetError, ValueError, RuntimeError,
            OSError) as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

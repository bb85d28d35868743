"""
semseg-ros-eval: accuracy of a model configuration on a folder of images and label PNGs.

Runs the same engine and parameter file as the node and reports pixel accuracy, per-class IoU
and mIoU as a table; writes a confusion-matrix picture, a mosaic of image / ground truth /
prediction for a few frames, and the figures as JSON.

    semseg-ros-eval DATASET [--params config/semseg.yaml] [-p name:=value ...]

DATASET holds images/ and labels/ with the same file names (labels: 8- or 16-bit class ids of
the dataset's class set: --classes, or DATASET/classes.yaml; without either the model's class
set is assumed, with a warning). A model trained on other classes is scored through --map, a
YAML {model class name: dataset class name} (unmapped classes count as wrong).
"""

import argparse
import json
from pathlib import Path
import sys
import time

import cv2
import numpy as np
from semseg_ros.core import classes as class_sets
from semseg_ros.core import pipeline
from semseg_ros.core import settings as cfg
from semseg_ros.core.engine import Frame
from semseg_ros.core.metrics import ConfusionMatrix
from tqdm import tqdm
import yaml

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


class EvalError(RuntimeError):
    """The dataset or the options are unusable."""


def parse_overrides(items):
    """Turn ['name:=value', ...] into a dict, values parsed as YAML (as --ros-args -p does)."""
    values = {}
    for item in items:
        name, sep, text = item.partition(':=')
        if not sep or not name:
            raise EvalError(f'-p expects name:=value, got {item!r}')
        values[name.strip()] = yaml.safe_load(text) if text.strip() else ''
    return values


def dataset_pairs(root, images=None, labels=None):
    """Return sorted (image path, label path) pairs of a dataset folder."""
    image_dir = Path(images) if images else Path(root) / 'images'
    label_dir = Path(labels) if labels else Path(root) / 'labels'
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise EvalError(f'{folder} is not a folder (expected images/ and labels/)')
    pairs = []
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = label_dir / (path.stem + '.png')
        if not label.is_file():
            label = label_dir / path.name
        if label.is_file():
            pairs.append((path, label))
    if not pairs:
        raise EvalError(f'no image of {image_dir} has a label PNG of the same name in '
                        f'{label_dir}')
    return pairs


def class_map(model_classes, data_classes, path, ignore_id):
    """Return a lookup table model id -> dataset id from a YAML of class names."""
    count = len(model_classes)
    if path is None:
        if len(model_classes) != len(data_classes):
            raise EvalError(
                f'the model has {count} classes and the dataset {len(data_classes)}: '
                'give --map')
        return np.arange(count, dtype=np.int64)
    with open(path) as f:
        mapping = yaml.safe_load(f) or {}
    if not isinstance(mapping, dict):
        raise EvalError(f'{path}: expected a mapping of model class names to dataset names')
    invalid = len(data_classes) if ignore_id is None else ignore_id
    lut = np.full(count, invalid, np.int64)
    for source, target in mapping.items():
        if target is None:
            continue
        try:
            lut[model_classes.index(source)] = data_classes.index(target)
        except class_sets.ClassSetError as exc:
            raise EvalError(f'{path}: {exc}') from None
    return lut


def _warn(text):
    print(f'WARNING: {text}', file=sys.stderr)


def dataset_classes(args, model_classes, warn=_warn):
    """
    Return the class set of the labels: --classes, else DATASET/classes.yaml, else the model's.

    Taking the model's class set for the labels is an assumption: it is said in a warning.
    A labels' class set whose names differ from the model's, scored without --map, is said
    too (ids of one set would be scored as the other's).
    """
    source = args.classes
    if not source and (Path(args.dataset) / 'classes.yaml').is_file():
        source = str(Path(args.dataset) / 'classes.yaml')
    if not source:
        warn(f"the labels' class set is not given (--classes, or classes.yaml in the dataset "
             f"folder): they are scored as ids of the model's class set {model_classes.name!r} "
             f'({len(model_classes)} classes: {", ".join(model_classes.names[:6])}'
             f'{", ..." if len(model_classes) > 6 else ""}); if the labels use another class '
             'set the figures are meaningless: give --classes (and --map for a model trained '
             'on other classes)')
        return model_classes
    data = class_sets.load(source)
    if args.map is None and len(data) == len(model_classes):
        differ = [(m, d) for m, d in zip(model_classes.names, data.names)
                  if m.strip().lower() != d.strip().lower()]
        if differ:
            pairs = ', '.join(f'{m} vs {d}' for m, d in differ[:4])
            warn(f"the model's class set {model_classes.name!r} and the labels' "
                 f'{data.name!r} name {len(differ)} of their {len(data)} classes differently '
                 f'({pairs}{", ..." if len(differ) > 4 else ""}): ids are scored as equal; '
                 'give --map if they are different classes')
    return data


def confusion_picture(matrix, names, cell=28):
    """Render a row-normalised confusion matrix with class names as a BGR image."""
    counts = matrix.astype(np.float64)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    n = len(names)
    margin = 9 * max(len(name) for name in names) + 10
    size = margin + n * cell + 10
    image = np.full((size, size, 3), 255, np.uint8)
    for i in range(n):
        for j in range(n):
            shade = int(255 * (1.0 - rows[i, j]))
            top, left = margin + i * cell, margin + j * cell
            cv2.rectangle(image, (left, top), (left + cell - 1, top + cell - 1),
                          (255, shade, shade), -1)
            if rows[i, j] >= 0.01:
                color = (255, 255, 255) if rows[i, j] > 0.5 else (0, 0, 0)
                cv2.putText(image, f'{int(round(rows[i, j] * 100))}', (left + 3, top + 18),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.38, color, 1, cv2.LINE_AA)
        cv2.putText(image, names[i], (4, margin + i * cell + 18), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
    column = np.full((margin, size, 3), 255, np.uint8)
    for j in range(n):
        tile = np.full((cell, margin, 3), 255, np.uint8)
        cv2.putText(tile, names[j], (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        rotated = cv2.rotate(tile, cv2.ROTATE_90_COUNTERCLOCKWISE)
        left = margin + j * cell
        column[:, left:left + cell] = rotated[:, :min(cell, size - left)]
    image[:margin] = np.minimum(image[:margin], column)
    cv2.putText(image, 'truth \\ prediction (% of row)', (4, 14), cv2.FONT_HERSHEY_SIMPLEX,
                0.4, (0, 0, 255), 1, cv2.LINE_AA)
    return image


def mosaic_row(rgb, truth_colors, prediction_colors, height=180):
    """Return image | ground truth | prediction side by side (BGR), scaled to a height."""
    tiles = []
    for tile in (rgb, truth_colors, prediction_colors):
        scale = height / tile.shape[0]
        width = max(1, int(round(tile.shape[1] * scale)))
        tiles.append(cv2.resize(tile, (width, height), interpolation=cv2.INTER_NEAREST))
    return cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR)


def format_table(names, iou, accuracy, miou):
    """Return the per-class IoU table and the summary as text."""
    width = max(len(n) for n in names + ['pixel accuracy'])
    lines = [f'{"class":<{width}}  IoU', f'{"-" * width}  ------']
    for name, value in zip(names, iou):
        lines.append(f'{name:<{width}}  ' + ('   n/a' if np.isnan(value) else f'{value:.4f}'))
    lines.append(f'{"-" * width}  ------')
    lines.append(f'{"pixel accuracy":<{width}}  {accuracy:.4f}')
    lines.append(f'{"mIoU":<{width}}  {miou:.4f}')
    return '\n'.join(lines)


def evaluate(args):
    """Run the evaluation; return the metrics dict."""
    values = {}
    if args.params:
        values.update(cfg.params_file_values(args.params))
    values.update(parse_overrides(args.param))
    settings = cfg.from_values(values)
    segmenter = pipeline.build_segmenter(settings, print, warn=_warn)
    model_classes = segmenter.classes
    data_classes = dataset_classes(args, model_classes)
    ignore_id = data_classes.ignore_id if args.ignore_id is None else args.ignore_id
    lut = class_map(model_classes, data_classes, args.map, ignore_id)
    scored = [i for i in range(len(data_classes)) if i != ignore_id]
    if ignore_id is not None and ignore_id != len(data_classes) - 1:
        raise EvalError('the ignore id must be the last class of the dataset class set')
    matrix = ConfusionMatrix(len(scored), ignore_index=ignore_id)
    pairs = dataset_pairs(args.dataset, args.images, args.labels)
    if args.limit:
        pairs = pairs[:args.limit]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    mosaic = []
    start = time.monotonic()
    with tqdm(total=len(pairs), unit='img', disable=args.quiet) as bar:
        for first in range(0, len(pairs), args.batch):
            chunk = pairs[first:first + args.batch]
            frames, truths = [], []
            for image_path, label_path in chunk:
                bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
                truth = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
                if bgr is None or truth is None or truth.ndim != 2:
                    raise EvalError(f'cannot read {image_path} or its single-channel label '
                                    f'{label_path}')
                frames.append(Frame(bgr, 'bgr'))
                truths.append(truth.astype(np.int64))
            outputs = segmenter.process(frames, ('label',))
            for frame, truth, out in zip(frames, truths, outputs):
                if truth.shape != out['label'].shape:
                    raise EvalError(f'label size {truth.shape[::-1]} differs from the image '
                                    f'size {out["label"].shape[::-1]}')
                prediction = lut[out['label'].astype(np.int64)]
                matrix.update(prediction, truth)
                if len(mosaic) < args.mosaic:
                    rgb = frame.array[:, :, ::-1]
                    colors = data_classes.colors
                    shown = np.clip(prediction, 0, len(colors) - 1)
                    mosaic.append(mosaic_row(rgb, colors[np.clip(truth, 0, len(colors) - 1)],
                                             colors[shown]))
            bar.update(len(chunk))
    seconds = time.monotonic() - start
    names = [data_classes.names[i] for i in scored]
    iou = matrix.iou()
    result = {
        'images': len(pairs), 'seconds': round(seconds, 2),
        'pixel_accuracy': float(matrix.pixel_accuracy()),
        'mean_iou': float(matrix.mean_iou()),
        'iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        'model': settings.backend, 'device': str(segmenter.device),
        'runtime': segmenter.runtime.summary(),
    }
    print(format_table(names, iou, result['pixel_accuracy'], result['mean_iou']))
    print(f'{len(pairs)} images in {seconds:.1f} s ({len(pairs) / seconds:.2f} img/s) on '
          f'{segmenter.device} ({segmenter.runtime.runtime}); pictures and metrics.json in '
          f'{output}/')
    cv2.imwrite(str(output / 'confusion.png'), confusion_picture(matrix.matrix, names))
    if mosaic:
        cv2.imwrite(str(output / 'mosaic.png'), np.vstack(mosaic))
    (output / 'metrics.json').write_text(json.dumps(result, indent=2))
    return result


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='semseg-ros-eval', description=__doc__.strip().splitlines()[0])
    parser.add_argument('dataset', help='folder with images/ and labels/')
    parser.add_argument('--params', help='node parameter file (default: built-in defaults)')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='parameter override, as with --ros-args -p')
    parser.add_argument('--images', help='image folder (default DATASET/images)')
    parser.add_argument('--labels', help='label folder (default DATASET/labels)')
    parser.add_argument('--classes', help="the labels' class set (default: DATASET/"
                        "classes.yaml, else the model's, with a warning)")
    parser.add_argument('--ignore-id', type=int, help='label id to ignore (default: the '
                        "class set's ignore_id)")
    parser.add_argument('--map', help='YAML {model class: dataset class} for other class sets')
    parser.add_argument('--batch', type=int, default=4, help='frames per forward pass')
    parser.add_argument('--limit', type=int, default=0, help='evaluate the first N images')
    parser.add_argument('--mosaic', type=int, default=4, help='frames shown in mosaic.png')
    parser.add_argument('--output', default='eval_output', help='folder for the pictures')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        evaluate(args)
    except (EvalError, ValueError, RuntimeError, OSError) as exc:
        print(f'semseg-ros-eval: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

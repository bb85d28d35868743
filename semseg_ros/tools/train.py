"""
semseg-ros-train: fine-tune a node's model on a dataset, gate it, export a model directory.

    semseg-ros-train DATASET OUT --params BASE.yaml [--classes SET] [--val DIR]
                     [--epochs N | --minutes M] [--resume] [--deploy NODE]

BASE.yaml is a node params file naming the starting model (any torch backend). Its head is
cut to the dataset's class set: classes the base set shares by name (or a known synonym) keep
their weights; the mapping is written to OUT/train/class_mapping.yaml. Training: flips,
scale/crop and color jitter, a fixed seed, mixed precision on CUDA, validation mIoU per epoch,
curves (CSV and PNG), best/last checkpoints, --resume and a wall-clock limit. Then OUT becomes
a model directory (model.yaml card + model.ts) that the node and the tools load with
model.backend auto and model.weights OUT, and the gate runs the base and the exported model
through the node's engine on the val split (OUT/train/gate.md, gate.png). --deploy NODE sets
the running node's model.backend/model.weights to OUT only when the gate passed.
--ultralytics MODEL (yolo26n-sem.pt or .yaml) trains a YOLO semantic model with ultralytics'
own API on the converted dataset instead, and ends in the same kind of OUT.

Without --val, DATASET is split by time blocks (see semseg-ros-data split). Exit status: 0
done, 1 error, 3 gate failed (OUT is written, nothing deployed).
"""

import argparse
from collections import Counter
import json
from pathlib import Path
import sys
import time

import cv2
from semseg_ros.core import classes as class_sets
from semseg_ros.core import pipeline
from semseg_ros.core import settings as cfg
from semseg_ros.core.models.base import ModelError
from semseg_ros.core.train import dataset
from semseg_ros.core.train import export
from semseg_ros.core.train import heads
from semseg_ros.core.train import loop
from semseg_ros.core.train.augment import SegmentationSamples
import yaml

GATE_FAILED = 3
DEFAULT_LR = 5e-4


class TrainError(RuntimeError):
    """The run cannot start or finish; the message says why."""


def parse_size(text):
    """Parse 'WIDTHxHEIGHT'."""
    try:
        width, height = (int(v) for v in str(text).lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WIDTHxHEIGHT, got {text!r}') from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return width, height


def load_settings(params, overrides):
    """Return the node Settings of a params file with name:=value overrides."""
    values = {}
    if params:
        if not Path(params).is_file():
            raise TrainError(f'params file {params} does not exist')
        values.update(cfg.params_file_values(params))
    for item in overrides:
        name, sep, text = item.partition(':=')
        if not sep or not name.strip():
            raise TrainError(f'-p expects name:=value, got {item!r}')
        values[name.strip()] = yaml.safe_load(text) if text.strip() else ''
    try:
        return cfg.from_values(values)
    except cfg.SettingsError as exc:
        raise TrainError(f'{params}: {exc}') from None


def training_size(items, divisor, size=None):
    """Return the training size: ``size``, else the commonest image size, both rounded up."""
    if size is None:
        sizes = Counter()
        for image, _ in items[:50]:
            header = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
            if header is None:
                raise TrainError(f'{image}: cannot read the image')
            sizes[(header.shape[1], header.shape[0])] += 1
        size = sizes.most_common(1)[0][0]
    div = max(1, int(divisor))
    return tuple(-(-int(v) // div) * div for v in size)


def split_items(args, classes):
    """Return (train items, val items, how the split was made)."""
    items = dataset.pairs(args.dataset)
    if args.val:
        own = (Path(args.val) / dataset.CLASSES_FILE).is_file()
        val_classes = dataset.dataset_classes(args.val, args.classes) \
            if args.classes or own else classes
        if tuple(val_classes.names) != tuple(classes.names):
            raise TrainError(f'{args.val} has other classes than {args.dataset}')
        return items, dataset.pairs(args.val), Path(args.val).resolve().name
    assignment = dataset.split_frames([p.name for p, _ in items], 'time', args.val_fraction)
    train = [p for p in items if assignment[p[0].name] == 'train']
    val = [p for p in items if assignment[p[0].name] == 'val']
    return train, val, f'time blocks of {args.dataset} ({args.val_fraction:.0%} val)'


def spread(items, count):
    """Return ``count`` items spread evenly over the list (all when it is shorter)."""
    if count >= len(items):
        return items
    return [items[int((i + 0.5) * len(items) / count)] for i in range(count)]


def check_labels(items, classes, log):
    """Read every label once (color masks and foreign ids raise before any training)."""
    for _, label in items:
        dataset.read_label(label, classes)
    log(f'{len(items)} labels checked against {classes.name!r} ({len(classes)} classes)')


def load_exported(out):
    """Load the exported directory as the node would: backend auto, else the TorchScript file."""
    from semseg_ros.core.models import registry

    try:
        return registry.create_model('auto', weights=str(out)), 'auto'
    except ModelError as exc:
        if "unknown model backend 'auto'" not in str(exc):
            raise
    # A tree without the model-card loader: the archive carries the same metadata.
    return (registry.create_model('torchscript', weights=str(Path(out) / export.MODEL_FILE)),
            'torchscript')


def run(args, log=print):
    """Run training, export and gate; return the result dict."""
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    settings = load_settings(args.params, args.param)
    classes = dataset.dataset_classes(args.dataset, args.classes)
    train_items, val_items, how = split_items(args, classes)
    if args.limit:
        train_items, val_items = spread(train_items, args.limit), spread(val_items, args.limit)
    check_labels(train_items + val_items, classes, log)
    log(f'{len(train_items)} train / {len(val_items)} val images ({how})')
    try:
        base = pipeline.build_model(settings)
        base_classes, _ = pipeline.load_classes(settings, base)
    except (ModelError, class_sets.ClassSetError, OSError) as exc:
        raise TrainError(f'cannot build the base model ({settings.backend}): {exc}') from None
    overrides = {}
    if args.class_map:
        overrides = yaml.safe_load(Path(args.class_map).read_text()) or {}
        if not isinstance(overrides, dict):
            raise TrainError(f'{args.class_map}: expected {{dataset class: base class}}')
    mapping = heads.class_mapping(base_classes.names, classes.names, overrides)
    table = heads.scoring_table(base_classes.names, classes.names, mapping)
    out = Path(args.output)
    work = out / 'train'
    work.mkdir(parents=True, exist_ok=True)
    shared = sum(v is not None for v in mapping.values())
    (work / 'class_mapping.yaml').write_text(yaml.safe_dump({
        'base_classes': base_classes.name, 'dataset_classes': classes.name,
        'head_init': mapping,
        'base_scored_as': {b: (classes.names[t] if t >= 0 else None)
                           for b, t in zip(base_classes.names, table)}}, sort_keys=False))
    log(f'head: {shared} of {len(classes)} classes start from base classes '
        f'({", ".join(f"{k}<-{v}" for k, v in mapping.items() if v)}); mapping in '
        f'{work / "class_mapping.yaml"}')
    base_name = f'{settings.backend} ({base_classes.name})'
    if settings.weights:
        base_name += f', {Path(settings.weights).name}'
    provenance = {
        'base_model': base_name,
        'trained_on': f'{Path(args.dataset).resolve().name} ({len(train_items)} images)',
        'metrics': {'dataset': f'{how} ({len(val_items)} images)'}}
    if args.ultralytics:
        return train_ultralytics(args, base, base_classes, classes, train_items, val_items,
                                 table, provenance, log)
    if tuple(base_classes.names) == tuple(classes.names):
        import copy
        model = copy.deepcopy(base)
    else:
        model, layer = heads.adapt_head(base, base_classes, classes, mapping)
        log(f'classifier {layer} now has {len(classes)} outputs')
    size = training_size(train_items, model.preprocess.size_divisor, args.size)
    log(f'training size {size[0]}x{size[1]}')
    train_set = SegmentationSamples(train_items, classes, model.preprocess, size, train=True,
                                    seed=args.seed, scale_range=(args.scale_min, args.scale_max))
    val_set = SegmentationSamples(val_items, classes, model.preprocess, size, train=False)
    config = loop.TrainConfig(epochs=args.epochs or 0, minutes=args.minutes or 0.0,
                              batch=args.batch, lr=args.lr, seed=args.seed,
                              workers=args.workers, device=args.device, amp=not args.no_amp,
                              val_batch=args.batch, progress=not args.no_progress)
    start = time.monotonic()
    history = loop.fit(model, train_set, val_set, work, config, resume=args.resume, log=log,
                       extra={'mapping': mapping, 'size': list(size)})
    best = max(history, key=lambda row: row['val_miou'])
    log(f'best epoch {best["epoch"]}: val mIoU {best["val_miou"]:.4f} '
        f'({(time.monotonic() - start) / 60:.1f} min this run); curves in {work}')
    provenance['metrics'].update({'miou': round(best['val_miou'], 4), 'epoch': best['epoch']})
    provenance['training'] = {'size': list(size), 'epochs': best['epoch'], 'seed': args.seed}
    card_path = export.export_model_dir(model.cpu(), classes, out, size, provenance)
    # The base model itself is untouched: the head was cut on a copy.
    result = gate_and_deploy(args, card_path, base, base_classes, classes, val_items, table,
                             size, log)
    result['history'] = history
    return result


def train_ultralytics(args, base, base_classes, classes, train_items, val_items, table,
                      provenance, log):
    """Train a YOLO semantic model with ultralytics' API; export, gate and deploy it alike."""
    from semseg_ros.core.train import yolo

    work = Path(args.output) / 'train'
    size = training_size(train_items, yolo.SIZE_DIVISOR, args.size)
    data = yolo.write_dataset(train_items, val_items, classes, work / 'ultralytics_data')
    log(f'ultralytics dataset {data}; training {args.ultralytics} at {max(size)} px')
    best = yolo.train(args.ultralytics, data, work, size, args.epochs or 0, args.minutes or 0.0,
                      args.batch, args.device, args.seed, args.workers,
                      args.lr if args.lr != DEFAULT_LR else None)
    own_classes, kept = yolo.trained_classes(classes)
    model = yolo.as_segmentation_model(best, own_classes)
    provenance['training'] = {'size': list(size), 'ultralytics': str(args.ultralytics),
                              'weights': str(best), 'seed': args.seed}
    card_path = export.export_model_dir(model, own_classes, Path(args.output), size,
                                        provenance)
    return gate_and_deploy(args, card_path, base, base_classes, classes, val_items, table,
                           size, log, own_classes, kept)


def gate_and_deploy(args, card_path, base, base_classes, classes, val_items, table, size, log,
                    trained_classes=None, trained_table=None):
    """Gate the exported directory against the base; record it in the card; deploy if passed."""
    out = Path(args.output)
    work = out / 'train'
    log(f'model directory {out}: {card_path.name} + {export.MODEL_FILE}')
    exported, loader = load_exported(out)
    result = export.gate(base, base_classes, exported, classes, val_items, table, size,
                         device=args.device, margin=args.gate_margin,
                         trained_classes=trained_classes, trained_table=trained_table)
    picture = result.pop('mosaic')
    if picture is not None:
        cv2.imwrite(str(work / 'gate.png'), picture)
    table_text = export.gate_table(result)
    (work / 'gate.md').write_text(table_text + '\n')
    (work / 'gate.json').write_text(json.dumps(result, indent=2))
    log(table_text)
    from semseg_ros.core.models.card import read_card, write_card
    card = read_card(card_path)
    card.provenance['metrics'].update({'engine_miou': round(result['trained']['miou'], 4),
                                       'base_engine_miou': round(result['base']['miou'], 4),
                                       'gate': 'passed' if result['passed'] else 'failed'})
    write_card(card, card_path)
    result.update({'output': str(out), 'loader': loader, 'deployed': False})
    if args.deploy:
        if result['passed']:
            from semseg_ros import deploy  # rclpy: needed only here
            answer = deploy.deploy(args.deploy, str(out.resolve()), timeout=args.deploy_timeout)
            if not answer.successful:
                raise deploy.DeployError(f'{args.deploy} kept its model: {answer.reason}')
            log(f'deployed: {args.deploy} runs {out} ({answer.seconds:.1f} s)')
            result['deployed'] = True
        else:
            log(f'gate failed: {out} is NOT deployed to {args.deploy}')
    return result


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog='semseg-ros-train',
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument('dataset', help='dataset folder (images/, labels/, classes.yaml)')
    parser.add_argument('output', help='model directory to write (OUT)')
    parser.add_argument('--params', help='node params file naming the base model')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='parameter override, as with --ros-args -p')
    parser.add_argument('--classes', help="the dataset's class set (default DATASET/"
                        'classes.yaml)')
    parser.add_argument('--val', help='validation dataset (default: time blocks of DATASET)')
    parser.add_argument('--val-fraction', type=float, default=0.2,
                        help='share of time blocks for validation without --val')
    limit = parser.add_mutually_exclusive_group(required=True)
    limit.add_argument('--epochs', type=int, help='number of epochs')
    limit.add_argument('--minutes', type=float, help='wall-clock limit of the training')
    parser.add_argument('--resume', action='store_true', help='continue from OUT/train/last.pt')
    parser.add_argument('--size', type=parse_size, help='training and inference size WxH '
                        "(default: the images' size, rounded to the model's divisor)")
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--lr', type=float, default=DEFAULT_LR)
    parser.add_argument('--scale-min', type=float, default=0.75, help='smallest random scale')
    parser.add_argument('--scale-max', type=float, default=1.5, help='largest random scale')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=-1, help='data loader processes '
                        '(default: 4 on CUDA, 0 on the CPU)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: '
                        "torch's default; 1 is far faster on a CPU other jobs share)")
    parser.add_argument('--no-amp', action='store_true', help='float32 on CUDA too')
    parser.add_argument('--class-map', help='YAML {dataset class: base class or null}')
    parser.add_argument('--ultralytics', metavar='MODEL', help='train a YOLO semantic model '
                        '(yolo26n-sem.pt or .yaml) with ultralytics instead; --params still '
                        'names the base model of the gate')
    parser.add_argument('--gate-margin', type=float, default=0.0,
                        help='mIoU the trained model must gain over the base model')
    parser.add_argument('--limit', type=int, default=0, help='use N images of each split, '
                        'spread evenly over it (quick runs)')
    parser.add_argument('--deploy', metavar='NODE', help='running node to switch to OUT when '
                        'the gate passes (e.g. /semseg)')
    parser.add_argument('--deploy-timeout', type=float, default=30.0)
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error('--epochs must be >= 1')
    if args.minutes is not None and args.minutes <= 0:
        parser.error('--minutes must be > 0')
    return args


def main(argv=None):
    """Entry point; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args)
    except (TrainError, dataset.DatasetError, ModelError, class_sets.ClassSetError,
            FileNotFoundError, FloatingPointError, RuntimeError, OSError) as exc:
        print(f'semseg-ros-train: {exc}', file=sys.stderr)
        return 1
    return 0 if result['passed'] else GATE_FAILED


if __name__ == '__main__':
    sys.exit(main())

"""
semseg-ros-data: build a training dataset from bags and labels, check it, pre-label it.

    semseg-ros-data extract BAG OUT [--topics T ...] [--every N] [--period S] [--min-change D]
    semseg-ros-data split DATASET OUT [--by time|bag] [--val 0.2] [--blocks 10]
    semseg-ros-data import --format ids|cityscapes|coco|color --images DIR --labels DIR|JSON
                           OUT --classes SET
    semseg-ros-data check DATASET [--classes SET] [--output DIR]
    semseg-ros-data prelabel IMAGES OUT --params NODE.yaml [-p name:=value ...]

A dataset is a folder with images/, labels/ (single-channel PNG class ids, same stem) and
classes.yaml. extract writes frames named <bag>__<topic>__<stamp ns>.png; split keeps whole
time blocks (or whole bags) together so that neighbouring frames never sit on both sides.
"""

import argparse
import json
from pathlib import Path
import sys

import cv2
import numpy as np
from semseg_ros.core import classes as class_sets
from semseg_ros.core.train import dataset
from semseg_ros.core.train import importers
from semseg_ros.core.train.frames import frame_name
from semseg_ros.core.train.frames import FrameSelector
from tqdm import tqdm


def extract(args, log=print):
    """Write chosen frames of a bag's image topics into OUT/images; return the counts."""
    # The bag tool's readers and decoders (they need the ROS message packages).
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import get_typestore
    from rosbags.typesys import Stores
    from semseg_ros.tools import bag as bag_tool

    source = Path(args.bag)
    if not source.exists():
        raise dataset.DatasetError(f'bag {source} does not exist')
    images = Path(args.output) / 'images'
    images.mkdir(parents=True, exist_ok=True)
    selector = FrameSelector(args.every, args.period, args.min_change)
    decoder = bag_tool.BagSegmenter(None, (), get_typestore(Stores.ROS2_JAZZY),
                                    warn=log)
    written = 0
    try:
        reader = Reader(source)
        reader.open()
    except Exception as exc:  # noqa: B902 - rosbags raises many types for unreadable bags
        raise dataset.DatasetError(f'cannot read bag {source}: {exc}') from None
    try:
        connections = bag_tool.select_sources(reader, args.topics)
        topics = {c.id: c for c in connections}
        total = sum(c.msgcount for c in connections)
        for connection, timestamp, raw in tqdm(reader.messages(connections=connections),
                                               total=total, unit='msg',
                                               disable=args.no_progress or None):
            decoded = decoder.decode(topics[connection.id], raw)
            if decoded is None:
                continue
            header, frame = decoded
            stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec or timestamp
            array = np.asarray(frame.array)
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            if frame.color.startswith('rgb') and array.ndim == 3:
                array = array[:, :, [2, 1, 0]]
            if not selector.keep(connection.topic, stamp * 1e-9, array):
                continue
            name = frame_name(source.name, connection.topic, stamp, '.' + args.format)
            if not cv2.imwrite(str(images / name), np.ascontiguousarray(array)):
                raise dataset.DatasetError(f'cannot write {images / name}')
            written += 1
    finally:
        reader.close()
    counts = dict(selector.counts, written=written, skipped=decoder.skipped)
    log(f'{written} frames written to {images} ({counts["seen"]} seen, '
        f'{counts["duplicates"]} near-duplicates skipped, {decoder.skipped} undecodable)')
    return counts


def split(args, log=print):
    """Split a dataset into OUT/train and OUT/val; return the counts."""
    classes = dataset.dataset_classes(args.dataset, args.classes)
    names = [image.name for image, _ in dataset.pairs(args.dataset)]
    assignment = dataset.split_frames(names, 'group' if args.by == 'bag' else 'time',
                                      args.val, args.blocks, args.block_seconds)
    counts = dataset.write_split(args.dataset, args.output, assignment, classes)
    log(f'{counts["train"]} train and {counts["val"]} val frames in {args.output}/train and '
        f'{args.output}/val (split by {args.by})')
    return counts


def import_labels(args, log=print):
    """Import labels of one format into a dataset folder; return the summary."""
    classes = dataset.dataset_classes(args.output, args.classes)
    mapping = importers.load_mapping(args.map)
    result = importers.import_dataset(args.format, args.images, args.labels, args.output,
                                      classes, args.background, mapping, args.unknown)
    note = f' ({len(result["skipped"])} images without a label skipped)' \
        if result['skipped'] else ''
    log(f'{result["written"]} labels written to {args.output}/labels{note}')
    return result


def check(args, log=print):
    """Check a dataset's labels; print sizes and class frequencies, write a mosaic."""
    classes = dataset.dataset_classes(args.dataset, args.classes)
    stats = dataset.statistics(args.dataset, classes, args.limit)
    log(dataset.format_statistics(stats, classes))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(output / 'mosaic.png'), dataset.mosaic(args.dataset, classes, args.mosaic))
    (output / 'stats.json').write_text(json.dumps(stats, indent=2))
    log(f'mosaic.png and stats.json in {output}/')
    return stats


def prelabel(args, log=print):
    """Label frames with the current model; write a dataset to correct in a labelling tool."""
    from semseg_ros.core import pipeline
    from semseg_ros.core.engine import Frame
    from semseg_ros.tools.train import load_settings

    settings = load_settings(args.params, args.param)
    segmenter = pipeline.build_segmenter(settings, log)
    files = dataset.image_files(args.images)
    if not files:
        raise dataset.DatasetError(f'{args.images} holds no image')
    out = Path(args.output)
    (out / 'labels').mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, unit='img', disable=args.no_progress or None):
        dataset.link_or_copy(path, out / 'images' / path.name)
        label = segmenter.process([Frame(dataset.read_image(path), 'bgr')], ('label',))[0]
        importers.write_label(out / 'labels' / (path.stem + '.png'), label['label'])
        if args.preview:
            color = segmenter.classes.colors[label['label']][:, :, ::-1]
            (out / 'preview').mkdir(exist_ok=True)
            cv2.imwrite(str(out / 'preview' / (path.stem + '.png')), color)
    dataset.write_classes(out, segmenter.classes)
    log(f'{len(files)} frames pre-labelled into {out}/labels with {settings.backend}; '
        f'class set in {out}/{dataset.CLASSES_FILE}')
    return len(files)


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog='semseg-ros-data',
                                     description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser('extract', help="frames of a bag's image topics")
    p.add_argument('bag')
    p.add_argument('output', help='dataset folder (frames go to OUT/images)')
    p.add_argument('--topics', nargs='+', help='image topics (default: all)')
    p.add_argument('--every', type=int, default=1, help='keep every Nth frame of a topic')
    p.add_argument('--period', type=float, default=0.0, help='at most one frame per S seconds')
    p.add_argument('--min-change', type=float, default=2.0, help='skip frames whose gray '
                   'thumbnail differs from the last kept by less (0..255 levels)')
    p.add_argument('--format', choices=('png', 'jpg'), default='png')
    p.add_argument('--no-progress', action='store_true')
    p = commands.add_parser('split', help='train/val by time blocks or by bag')
    p.add_argument('dataset')
    p.add_argument('output', help='folder for train/ and val/')
    p.add_argument('--by', choices=('time', 'bag'), default='time')
    p.add_argument('--val', type=float, default=0.2, help='share of validation blocks or bags')
    p.add_argument('--blocks', type=int, default=10, help='time blocks per bag and topic')
    p.add_argument('--block-seconds', type=float, help='block length instead of --blocks')
    p.add_argument('--classes')
    p = commands.add_parser('import', help='labels of another format into a dataset')
    p.add_argument('output', help='dataset folder to write')
    p.add_argument('--format', choices=importers.FORMATS, required=True)
    p.add_argument('--images', required=True, help='folder of the frames')
    p.add_argument('--labels', required=True, help='folder of label PNGs, or the COCO JSON')
    p.add_argument('--classes', required=True, help='class set of the dataset')
    p.add_argument('--background', help='coco: class of unannotated pixels (default: ignore)')
    p.add_argument('--map', help='coco: YAML {category: class or null}')
    p.add_argument('--unknown', help='color: class given to colors outside the palette')
    p = commands.add_parser('check', help='sizes, label values, class frequencies, mosaic')
    p.add_argument('dataset')
    p.add_argument('--classes')
    p.add_argument('--output', default='data_check', help='folder for mosaic.png, stats.json')
    p.add_argument('--mosaic', type=int, default=6, help='frames in the mosaic')
    p.add_argument('--limit', type=int, default=0)
    p = commands.add_parser('prelabel', help='label frames with the current model')
    p.add_argument('images', help='folder of frames')
    p.add_argument('output', help='dataset folder to write')
    p.add_argument('--params', help='node params file naming the model')
    p.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE')
    p.add_argument('--preview', action='store_true', help='also write color previews')
    p.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


COMMANDS = {'extract': extract, 'split': split, 'import': import_labels, 'check': check,
            'prelabel': prelabel}


def main(argv=None):
    """Entry point; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        COMMANDS[args.command](args)
    except (dataset.DatasetError, class_sets.ClassSetError, ImportError, RuntimeError,
            OSError) as exc:  # RuntimeError: also TrainError and ModelError
        print(f'semseg-ros-data {args.command}: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

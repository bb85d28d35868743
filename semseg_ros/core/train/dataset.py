"""
Dataset folders: images/ + labels/ (PNG class ids) + classes.yaml, read and checked.

A dataset is a folder with ``images/`` (PNG or JPEG frames), ``labels/`` (single-channel PNG
class ids of the same stem, 8- or 16-bit) and, optionally, ``classes.yaml`` (its class set in
the format of config/classes). Every label is checked when it is read: a color mask where an id
mask is expected, or an id outside the class set, raises DatasetError naming the file, so such
data is never trained on.
"""

from collections import Counter
from pathlib import Path
import re
import shutil

import cv2
import numpy as np
from semseg_ros.core import classes as class_sets
import yaml

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
CLASSES_FILE = 'classes.yaml'
# Frame names written by `semseg-ros-data extract`: <bag>__<topic>__<stamp in ns>.
STAMPED = re.compile(r'^(?P<group>.+)__(?P<stamp>\d{10,20})$')
# Other names with a trailing frame number (CamVid: 0001TP_006690, Seq05VD_f00000).
NUMBERED = re.compile(r'^(?P<group>.*?)[_\-.]?f?(?P<number>\d+)$')


class DatasetError(ValueError):
    """A dataset, label file or option is unusable; the message names the file and the fix."""


def image_files(folder):
    """Return the image files of a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f'{folder} is not a folder')
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def pairs(root):
    """Return sorted (image, label) path pairs of a dataset folder; unlabelled images raise."""
    root = Path(root)
    image_dir, label_dir = root / 'images', root / 'labels'
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(f'{folder} is not a folder: a dataset holds images/ and labels/')
    found, missing = [], []
    for image in image_files(image_dir):
        label = label_dir / (image.stem + '.png')
        if label.is_file():
            found.append((image, label))
        else:
            missing.append(image.name)
    if missing:
        raise DatasetError(
            f'{len(missing)} image(s) of {image_dir} have no label {label_dir}/<name>.png, e.g. '
            f'{", ".join(missing[:3])}: label them (semseg-ros-data prelabel gives a start) or '
            'move them out')
    if not found:
        raise DatasetError(f'{image_dir} holds no image (png, jpg, bmp)')
    return found


def dataset_classes(root, classes=None):
    """
    Return the ClassSet of a dataset: ``classes`` (name or path) or ROOT/classes.yaml.

    Raises DatasetError when neither is given.
    """
    try:
        if classes:
            return class_sets.load(classes)
        own = Path(root) / CLASSES_FILE
        if own.is_file():
            return class_sets.load(str(own))
    except class_sets.ClassSetError as exc:
        raise DatasetError(str(exc)) from None
    raise DatasetError(f'{root} has no {CLASSES_FILE}: name its class set with --classes '
                       f'(one of {", ".join(class_sets.available())} or a YAML file)')


def write_classes(root, classes):
    """Write a class set into ROOT/classes.yaml."""
    path = Path(root) / CLASSES_FILE
    path.write_text(yaml.safe_dump(classes.to_dict(), sort_keys=False))
    return path


def read_image(path):
    """Return a BGR uint8 image; DatasetError when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'{path}: cannot read the image')
    return image


def check_ids(ids, classes, path):
    """Raise DatasetError when a label holds ids outside the class set."""
    count = len(classes)
    top = int(ids.max()) if ids.size else 0
    if top >= count:
        values = np.unique(ids)
        bad = values[values >= count]
        raise DatasetError(
            f'{path}: label ids {bad[:10].tolist()} are outside the class set '
            f'{classes.name!r} (ids 0..{count - 1}): give the right class set (--classes), '
            'or import the labels with a mapping (semseg-ros-data import)')


def read_label(path, classes):
    """
    Return the class ids of a label PNG (H, W) as uint8 or uint16, checked against ``classes``.

    A three-channel label whose channels are equal is taken as ids saved as gray RGB; one
    with colors is a color mask and raises DatasetError with the conversion command.
    """
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f'{path}: cannot read the label PNG')
    if label.ndim == 3:
        if label.shape[2] == 4:
            label = label[:, :, :3]
        if np.array_equal(label[:, :, 0], label[:, :, 1]) and np.array_equal(
                label[:, :, 0], label[:, :, 2]):
            label = np.ascontiguousarray(label[:, :, 0])
        else:
            colors = len(np.unique(label.reshape(-1, 3), axis=0))
            raise DatasetError(
                f'{path}: a color mask ({colors} distinct RGB colors), not class ids: labels '
                'must be single-channel PNGs of class ids; convert color masks with '
                "`semseg-ros-data import --format color` (the class set's palette)")
    if label.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f'{path}: label dtype {label.dtype}; expected 8- or 16-bit ids')
    check_ids(label, classes, path)
    return label


def frame_key(stem):
    """
    Return (group, time) of a frame name, for splitting by time blocks or by group.

    Names from `extract` (``<bag>__<topic>__<stamp ns>``) give the bag and topic as the group
    and the stamp in seconds; other names ending in a number give the prefix and that number
    (frame counter); anything else gives ('', None).
    """
    match = STAMPED.match(stem)
    if match:
        return match.group('group'), int(match.group('stamp')) * 1e-9
    match = NUMBERED.match(stem)
    if match:
        return match.group('group'), float(match.group('number'))
    return '', None


def evenly(count, chosen):
    """Pick ``chosen`` of the indices 0..count-1, spread out evenly, deterministically."""
    chosen = max(1, min(count - 1, chosen))
    return sorted({min(count - 1, int((i + 0.5) * count / chosen)) for i in range(chosen)})


def split_frames(names, by='time', val_fraction=0.2, blocks=10, block_seconds=None):
    """
    Assign frame names to 'train' or 'val'; return {name: 'train' | 'val'}.

    ``by='time'``: each group (bag and topic, or sequence) is cut into contiguous time blocks
    (``blocks`` equal blocks, or blocks of ``block_seconds``) and whole blocks, spread evenly,
    go to val. ``by='group'``: whole groups (bags, sequences) go to val. Frames are never
    assigned one by one, so neighbouring frames do not leak from train into val.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f'the val fraction must be in (0, 1), got {val_fraction}')
    groups = {}
    for name in names:
        group, stamp = frame_key(Path(name).stem)
        groups.setdefault(group, []).append((stamp, name))
    result = {}
    if by == 'group':
        keys = sorted(groups)
        if len(keys) < 2:
            raise DatasetError(
                f'splitting by bag needs at least two bags or sequences; the names form one '
                f'group ({keys[0]!r}): split by time blocks instead')
        val = {keys[i] for i in evenly(len(keys), round(val_fraction * len(keys)))}
        for key, items in groups.items():
            for _, name in items:
                result[name] = 'val' if key in val else 'train'
        return result
    if by != 'time':
        raise DatasetError(f"split by 'time' or 'group', not {by!r}")
    for key, items in groups.items():
        if any(stamp is None for stamp, _ in items):
            # No time in the names: their sorted order is the recording order.
            names_sorted = sorted(name for _, name in items)
            items = [(float(i), name) for i, name in enumerate(names_sorted)]
        items.sort()
        first, last = items[0][0], items[-1][0]
        if block_seconds:
            count = max(1, int((last - first) // block_seconds) + 1)
            index = [min(count - 1, int((t - first) // block_seconds)) for t, _ in items]
        else:
            count = max(1, min(blocks, len(items)))
            span = (last - first) or 1.0
            index = [min(count - 1, int((t - first) / span * count)) for t, _ in items]
        if count < 2:
            raise DatasetError(f'group {key!r} spans one time block only: use smaller blocks')
        val = set(evenly(count, round(val_fraction * count)))
        for block, (_, name) in zip(index, items):
            result[name] = 'val' if block in val else 'train'
    return result


def link_or_copy(source, target):
    """Hard-link a file (copy where links are impossible)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if target.resolve() == Path(source).resolve() or target.samefile(source):
            return  # already there (e.g. prelabel into the frames' own dataset)
        target.unlink()
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def write_split(root, out, assignment, classes):
    """Write OUT/train and OUT/val datasets (hard links) from an assignment of image names."""
    out = Path(out)
    counts = Counter()
    for image, label in pairs(root):
        part = assignment[image.name]
        link_or_copy(image, out / part / 'images' / image.name)
        link_or_copy(label, out / part / 'labels' / label.name)
        counts[part] += 1
    for part in ('train', 'val'):
        if counts[part] == 0:
            raise DatasetError(f'the split leaves {part} empty: change --val or the blocks')
        write_classes(out / part, classes)
    return dict(counts)


def statistics(root, classes, limit=0):
    """
    Check every label of a dataset; return its figures.

    Returns {'images', 'sizes' {WxH: count}, 'pixels' [per class], 'frames' [per class],
    'ids' [values seen]}; bad labels or images of another size than their label raise.
    """
    items = pairs(root)
    if limit:
        items = items[:limit]
    sizes = Counter()
    pixels = np.zeros(len(classes), np.int64)
    frames = np.zeros(len(classes), np.int64)
    for image_path, label_path in items:
        label = read_label(label_path, classes)
        header = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        if header is None:
            raise DatasetError(f'{image_path}: cannot read the image')
        if header.shape[:2] != label.shape:
            raise DatasetError(f'{label_path}: size {label.shape[1]}x{label.shape[0]} differs '
                               f'from its image ({header.shape[1]}x{header.shape[0]})')
        sizes[f'{label.shape[1]}x{label.shape[0]}'] += 1
        counts = np.bincount(label.ravel(), minlength=len(classes))
        pixels += counts
        frames += counts > 0
    return {'images': len(items), 'sizes': dict(sizes), 'pixels': pixels.tolist(),
            'frames': frames.tolist(),
            'ids': [int(i) for i in np.flatnonzero(pixels)]}


def format_statistics(stats, classes):
    """Return the figures of statistics() as a text table."""
    total = max(1, sum(stats['pixels']))
    width = max(len(n) for n in classes.names + ('class',))
    lines = [f'{stats["images"]} labelled images; sizes: '
             + ', '.join(f'{k} ({v})' for k, v in sorted(stats['sizes'].items())),
             f'{"id":>3}  {"class":<{width}}  {"pixels %":>8}  frames']
    for i, name in enumerate(classes.names):
        note = '  (ignored)' if i == classes.ignore_id else ''
        if stats['frames'][i] == 0:
            note += '  never present'
        lines.append(f'{i:>3}  {name:<{width}}  {100.0 * stats["pixels"][i] / total:8.2f}  '
                     f'{stats["frames"][i]:>6}{note}')
    return '\n'.join(lines)


def mosaic(root, classes, count=6, height=160, columns=2):
    """Return a BGR mosaic of image | color label for ``count`` frames spread over the dataset."""
    items = pairs(root)
    picks = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    chosen = [items[i] for i in sorted(set(picks.tolist()))]
    tiles = []
    for image_path, label_path in chosen:
        image = read_image(image_path)
        label = read_label(label_path, classes)
        color = classes.colors[label][:, :, ::-1]
        row = []
        for tile in (image, color):
            scale = height / tile.shape[0]
            row.append(cv2.resize(tile, (max(1, int(tile.shape[1] * scale)), height),
                                  interpolation=cv2.INTER_NEAREST))
        tiles.append(np.hstack(row + [np.full((height, 4, 3), 255, np.uint8)]))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0)), constant_values=255)
             for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)

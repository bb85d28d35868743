"""
Label importers: turn the label formats people have into a dataset of PNG class ids.

Formats: ``ids`` (PNG id masks, checked against the class set), ``cityscapes`` (Cityscapes
label ids, ``*_gtFine_labelIds.png``, to the 19 train ids + 19 for everything else), ``coco``
(a COCO JSON of polygons or RLE, rasterised with pycocotools) and ``color`` (RGB color masks,
mapped to ids through the class set's palette). The output is DATASET/images (hard links),
DATASET/labels (8- or 16-bit PNG ids) and DATASET/classes.yaml.
"""

import json
from pathlib import Path

import cv2
import numpy as np
from semseg_ros.core.train.dataset import check_ids
from semseg_ros.core.train.dataset import DatasetError
from semseg_ros.core.train.dataset import image_files
from semseg_ros.core.train.dataset import link_or_copy
from semseg_ros.core.train.dataset import read_label
from semseg_ros.core.train.dataset import write_classes
import yaml

FORMATS = ('ids', 'cityscapes', 'coco', 'color')
# Cityscapes label id -> train id (the 19 evaluated classes); every other id is void.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# Suffixes of Cityscapes file names: image and label of one frame.
CITYSCAPES_IMAGE = '_leftImg8bit'
CITYSCAPES_LABEL = '_gtFine_labelIds'


def cityscapes_lut(void_id):
    """Return a 256-entry table Cityscapes label id -> train id (``void_id`` for the rest)."""
    lut = np.full(256, void_id, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


def cityscapes_to_train(label, void_id):
    """Map a Cityscapes label-id image (uint8, -1 stored as 255) to train ids."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError('Cityscapes label ids come as single-channel 8-bit PNGs '
                           '(*_gtFine_labelIds.png), not color or instance images')
    return cityscapes_lut(void_id)[label]


def color_to_ids(rgb, classes, unknown_id=None, source='label'):
    """
    Map an (H, W, 3) RGB color mask to class ids through the class set's palette.

    Colors that are not in the palette raise DatasetError listing them, unless ``unknown_id``
    is given (then they get that id). Palette colors shared by two classes raise too.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DatasetError(f'{source}: a color mask must be an RGB image')
    palette = classes.colors.astype(np.int64)
    keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    if len(set(keys.tolist())) != len(keys):
        raise DatasetError(f'class set {classes.name!r}: two classes share a color, so color '
                           'masks cannot be mapped to ids')
    pixels = rgb.astype(np.int64)
    codes = (pixels[:, :, 0] << 16) | (pixels[:, :, 1] << 8) | pixels[:, :, 2]
    values, inverse = np.unique(codes, return_inverse=True)
    order = np.argsort(keys)
    position = np.searchsorted(keys[order], values)
    position = np.minimum(position, len(keys) - 1)
    known = keys[order][position] == values
    if not known.all() and unknown_id is None:
        strange = values[~known][:5]
        listed = ', '.join(f'({v >> 16}, {(v >> 8) & 255}, {v & 255})' for v in strange)
        raise DatasetError(
            f'{source}: {int((~known).sum())} color(s) are not in the palette of '
            f'{classes.name!r}, e.g. RGB {listed}: use the class set the masks were drawn with '
            'or --unknown CLASS')
    ids = np.where(known, order[position], -1 if unknown_id is None else unknown_id)
    dtype = np.uint8 if len(classes) <= 256 else np.uint16
    return ids[inverse.reshape(codes.shape)].astype(dtype)


def coco_category_map(categories, classes, mapping=None):
    """
    Return {COCO category id: class id or None} by name (case-insensitive) or ``mapping``.

    ``mapping`` {category name: class name or null} overrides the names; null drops the
    category (its pixels become the ignore id). Unmatched categories raise DatasetError.
    """
    mapping = {str(k).lower(): v for k, v in (mapping or {}).items()}
    lowered = [n.lower() for n in classes.names]
    table, missing = {}, []
    for category in categories:
        name = str(category['name'])
        key = name.lower()
        if key in mapping:
            target = mapping[key]
            table[category['id']] = None if target is None else classes.index(target)
        elif key in lowered:
            table[category['id']] = lowered.index(key)
        else:
            missing.append(name)
    if missing:
        raise DatasetError(
            f'COCO categories {missing[:8]} have no class of the same name in '
            f'{classes.name!r} ({", ".join(classes.names)}): give --map with '
            '{category: class or null}')
    return table


def annotation_mask(annotation, height, width):
    """Return the (H, W) uint8 mask of one COCO annotation (polygons, RLE or compressed RLE)."""
    from pycocotools import mask as coco_mask

    segmentation = annotation.get('segmentation')
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), np.uint8)
        rles = coco_mask.frPyObjects(segmentation, height, width)
        rle = coco_mask.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and 'counts' in segmentation:
        rle = dict(segmentation)
        if isinstance(rle['counts'], str):
            rle['counts'] = rle['counts'].encode('ascii')
    else:
        raise DatasetError(f'annotation {annotation.get("id")}: segmentation is neither '
                           'polygons nor RLE')
    return coco_mask.decode(rle)


def coco_labels(coco, classes, background, mapping=None):
    """
    Yield (file_name, ids) for every image of a parsed COCO JSON.

    Unannotated pixels get ``background``; dropped categories get the ignore id. Larger
    annotations are painted first, so an object lying on another keeps its own class.
    """
    table = coco_category_map(coco.get('categories', []), classes, mapping)
    if any(v is None for v in table.values()) and classes.ignore_id is None:
        raise DatasetError('categories mapped to null need a class set with an ignore_id')
    by_image = {}
    for annotation in coco.get('annotations', []):
        by_image.setdefault(annotation['image_id'], []).append(annotation)
    dtype = np.uint8 if len(classes) <= 256 else np.uint16
    for image in coco.get('images', []):
        height, width = int(image['height']), int(image['width'])
        ids = np.full((height, width), background, dtype)
        annotations = sorted(by_image.get(image['id'], []),
                             key=lambda a: -float(a.get('area') or 0.0))
        for annotation in annotations:
            if annotation['category_id'] not in table:
                raise DatasetError(f'annotation {annotation.get("id")}: category '
                                   f'{annotation["category_id"]} is not in "categories"')
            target = table[annotation['category_id']]
            mask = annotation_mask(annotation, height, width).astype(bool)
            ids[mask] = classes.ignore_id if target is None else target
        yield image['file_name'], ids


def write_label(path, ids):
    """Write class ids as a PNG (8-bit, or 16-bit above 256 classes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), ids):
        raise DatasetError(f'cannot write {path}')


def find_label(labels_dir, image, fmt):
    """Return the label file of an image in ``labels_dir`` (same stem; Cityscapes names)."""
    stem = image.stem
    candidates = [labels_dir / f'{stem}.png']
    if fmt == 'cityscapes' and stem.endswith(CITYSCAPES_IMAGE):
        candidates.insert(0, labels_dir / f'{stem[:-len(CITYSCAPES_IMAGE)]}'
                                          f'{CITYSCAPES_LABEL}.png')
    if fmt == 'color':
        candidates += [labels_dir / f'{stem}_color.png', labels_dir / f'{stem}_L.png']
    return next((c for c in candidates if c.is_file()), None)


def import_dataset(fmt, images, labels, out, classes, background=None, mapping=None,
                   unknown=None):
    """
    Import labels of format ``fmt`` into the dataset folder ``out``; return a summary dict.

    ``images``: folder of frames (searched recursively for COCO file names with folders).
    ``labels``: folder of label PNGs, or the COCO JSON file. ``background`` (COCO): class of
    unannotated pixels, default the ignore class. ``mapping`` (COCO): {category: class}.
    ``unknown`` (color): class given to colors outside the palette (default: error).
    """
    if fmt not in FORMATS:
        raise DatasetError(f'label format {fmt!r} is not one of {", ".join(FORMATS)}')
    images, labels, out = Path(images), Path(labels), Path(out)
    if not images.is_dir():
        raise DatasetError(f'{images} is not a folder of images')
    written, skipped = 0, []
    if fmt == 'coco':
        if not labels.is_file():
            raise DatasetError(f'{labels} is not a COCO JSON file')
        try:
            coco = json.loads(labels.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f'{labels}: not a JSON file: {exc}') from None
        if background is None and classes.ignore_id is None:
            raise DatasetError('give --background CLASS: the class set has no ignore class '
                               'for unannotated pixels')
        fill = classes.ignore_id if background is None else classes.index(background)
        for name, ids in coco_labels(coco, classes, fill, mapping):
            source = images / name
            if not source.is_file():
                skipped.append(name)
                continue
            image = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
            if image is None or image.shape[:2] != ids.shape:
                raise DatasetError(f'{source}: unreadable or not the size the JSON gives '
                                   f'({ids.shape[1]}x{ids.shape[0]})')
            stem = Path(name).with_suffix('').as_posix().replace('/', '__')
            link_or_copy(source, out / 'images' / (stem + source.suffix.lower()))
            write_label(out / 'labels' / (stem + '.png'), ids)
            written += 1
    else:
        if not labels.is_dir():
            raise DatasetError(f'{labels} is not a folder of label PNGs')
        unknown_id = None if unknown is None else classes.index(unknown)
        for image in image_files(images):
            label_path = find_label(labels, image, fmt)
            if label_path is None:
                skipped.append(image.name)
                continue
            if fmt == 'ids':
                ids = read_label(label_path, classes)
            elif fmt == 'cityscapes':
                if classes.ignore_id is None or len(classes) < 20:
                    raise DatasetError('Cityscapes train ids need a 20-class set with an '
                                       'ignore id (--classes cityscapes)')
                raw = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
                if raw is None:
                    raise DatasetError(f'{label_path}: cannot read the label PNG')
                ids = cityscapes_to_train(raw, classes.ignore_id)
            else:
                bgr = cv2.imread(str(label_path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise DatasetError(f'{label_path}: cannot read the color mask')
                ids = color_to_ids(bgr[:, :, ::-1], classes, unknown_id, str(label_path))
            check_ids(ids, classes, label_path)
            stem = image.stem
            if fmt == 'cityscapes' and stem.endswith(CITYSCAPES_IMAGE):
                stem = stem[:-len(CITYSCAPES_IMAGE)]
            link_or_copy(image, out / 'images' / (stem + image.suffix.lower()))
            write_label(out / 'labels' / (stem + '.png'), ids)
            written += 1
    if not written:
        raise DatasetError(f'no label matched an image of {images} ({len(skipped)} without '
                           'a label)')
    write_classes(out, classes)
    return {'written': written, 'skipped': skipped, 'output': str(out)}


def load_mapping(path):
    """Read a YAML {name: name or null} mapping file (None -> {})."""
    if not path:
        return {}
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise DatasetError(f'{path}: expected a mapping of names')
    return data

"""
Class sets: ids, names, colors, drivable classes and the void id, loaded from YAML.

A class-set file looks like::

    name: camvid
    ignore_id: 11          # optional: the void class (predicted, but ignored by metrics)
    classes:
      - {id: 0, name: Sky, color: [128, 128, 128]}
      - {id: 3, name: Road, color: [128, 64, 128], drivable: true}

Ids must be 0..N-1 (one per model output channel), names and ids unique, colors 0..255.
"""

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np
from semseg_ros.core import paths
import yaml

# Largest class count a label image can carry (mono16).
MAX_CLASSES = 65536


class ClassSetError(ValueError):
    """A class-set file or value is invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class ClassSet:
    """An ordered set of classes; index i is model output channel i."""

    name: str
    names: Tuple[str, ...]
    colors: np.ndarray  # (N, 3) uint8, RGB
    drivable: Tuple[int, ...] = ()
    ignore_id: Optional[int] = None
    source: str = '<memory>'

    def __len__(self):
        """Return the number of classes."""
        return len(self.names)

    @property
    def label_encoding(self):
        """Return the Image encoding that holds every class id ('mono8' or 'mono16')."""
        return 'mono8' if len(self) <= 256 else 'mono16'

    def index(self, key):
        """Return the id of a class given its name (case-insensitive) or its id."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit()):
            idx = int(key)
            if 0 <= idx < len(self):
                return idx
            raise ClassSetError(f'{self.source}: class id {idx} is not in 0..{len(self) - 1}')
        lowered = [n.lower() for n in self.names]
        try:
            return lowered.index(str(key).strip().lower())
        except ValueError:
            raise ClassSetError(
                f'{self.source}: no class named {key!r}; classes are: '
                + ', '.join(self.names)) from None

    def with_drivable(self, keys: Iterable):
        """Return a copy whose drivable classes are the given names or ids."""
        ids = tuple(sorted({self.index(k) for k in keys}))
        return ClassSet(self.name, self.names, self.colors, ids, self.ignore_id, self.source)

    def check_model(self, num_classes, model_name='model'):
        """Raise ClassSetError when the model's output count does not match this set."""
        if int(num_classes) != len(self):
            raise ClassSetError(
                f'class set {self.name!r} ({self.source}) has {len(self)} classes but '
                f'{model_name} outputs {num_classes}: choose the class set the model was '
                'trained with (parameter classes)')

    def color_lut(self):
        """Return the (N, 3) uint8 RGB lookup table."""
        return self.colors

    def drivable_lut(self):
        """Return an (N,) uint8 table: 255 for drivable classes, 0 otherwise."""
        lut = np.zeros(len(self), np.uint8)
        lut[list(self.drivable)] = 255
        return lut

    def to_dict(self):
        """Return the class set as the YAML structure it was loaded from."""
        entries = []
        for i, name in enumerate(self.names):
            entry = {'id': i, 'name': name, 'color': [int(c) for c in self.colors[i]]}
            if i in self.drivable:
                entry['drivable'] = True
            entries.append(entry)
        data = {'name': self.name, 'classes': entries}
        if self.ignore_id is not None:
            data['ignore_id'] = self.ignore_id
        return data


def from_dict(data, source='<memory>'):
    """Build and validate a ClassSet from the parsed YAML structure."""
    if not isinstance(data, dict) or not isinstance(data.get('classes'), list):
        raise ClassSetError(f'{source}: expected a mapping with a list under "classes"')
    entries = data['classes']
    if not entries:
        raise ClassSetError(f'{source}: "classes" is empty')
    if len(entries) > MAX_CLASSES:
        raise ClassSetError(
            f'{source}: {len(entries)} classes; a label image holds at most {MAX_CLASSES}')
    by_id = {}
    seen_names = {}
    for pos, entry in enumerate(entries):
        where = f'{source}: classes[{pos}]'
        if not isinstance(entry, dict):
            raise ClassSetError(f'{where}: expected a mapping with id, name and color')
        missing = [k for k in ('id', 'name', 'color') if k not in entry]
        if missing:
            raise ClassSetError(f'{where}: missing {", ".join(missing)}')
        unknown = set(entry) - {'id', 'name', 'color', 'drivable'}
        if unknown:
            raise ClassSetError(f'{where}: unknown keys {sorted(unknown, key=str)}')
        cid, name, color = entry['id'], entry['name'], entry['color']
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
            raise ClassSetError(f'{where}: id must be a non-negative integer, got {cid!r}')
        if not isinstance(name, str) or not name.strip():
            raise ClassSetError(f'{where} (id {cid}): name must be a non-empty string')
        if (not isinstance(color, (list, tuple)) or len(color) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                           for c in color)):
            raise ClassSetError(
                f'{where} ({name}): color must be [r, g, b] integers in 0..255, got {color!r}')
        if not isinstance(entry.get('drivable', False), bool):
            raise ClassSetError(f'{where} ({name}): drivable must be true or false')
        if cid in by_id:
            raise ClassSetError(f'{where} ({name}): duplicate id {cid} (also {by_id[cid][0]})')
        if name.lower() in seen_names:
            raise ClassSetError(
                f'{where}: duplicate name {name!r} (ids {seen_names[name.lower()]} and {cid})')
        seen_names[name.lower()] = cid
        by_id[cid] = (name, color, entry.get('drivable', False))
    count = len(by_id)
    gaps = sorted(set(range(count)) - set(by_id))
    if gaps:
        raise ClassSetError(
            f'{source}: ids must be 0..{count - 1} (one per model output); missing {gaps[:10]}')
    names = tuple(by_id[i][0] for i in range(count))
    colors = np.array([by_id[i][1] for i in range(count)], np.uint8)
    drivable = tuple(i for i in range(count) if by_id[i][2])
    ignore_id = data.get('ignore_id')
    if ignore_id is not None and (isinstance(ignore_id, bool) or not isinstance(ignore_id, int)
                                  or not 0 <= ignore_id < count):
        raise ClassSetError(f'{source}: ignore_id must be a class id in 0..{count - 1}')
    name = str(data.get('name') or Path(source).stem)
    return ClassSet(name, names, colors, drivable, ignore_id, source)


def search_dirs():
    """Return the folders searched for class sets given by name, most specific first."""
    extra = os.environ.get('SEMSEG_ROS_CLASSES_PATH', '')
    dirs = [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs + [folder / 'config' / 'classes' for folder in paths.share_dirs()]


def available():
    """Return the names of the class sets found in the search folders."""
    names = set()
    for folder in search_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob('*.yaml'))
    return sorted(names)


def find(name_or_path):
    """Return the path of a class-set file given its name (camvid) or a path."""
    text = str(name_or_path).strip()
    if not text:
        raise ClassSetError('no class set given')
    path = Path(os.path.expanduser(text))
    if path.suffix in ('.yaml', '.yml') or os.sep in text:
        if not path.is_file():
            raise ClassSetError(f'class-set file {path} does not exist')
        return path
    for folder in search_dirs():
        candidate = folder / f'{text}.yaml'
        if candidate.is_file():
            return candidate
    raise ClassSetError(
        f'unknown class set {text!r}: give a path to a YAML file or one of: '
        + ', '.join(available()))


def load(name_or_path):
    """Load and validate a class set by name or path."""
    path = find(name_or_path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except Exception as exc:  # noqa: B902 - YAML constructors raise many types
        raise ClassSetError(f'{path}: cannot read class set: {exc}') from None
    return from_dict(data, str(path))


def generic(count, name='generic'):
    """Return a class set 'class_0'.. with distinct colors, for models without one."""
    if not 0 < count <= MAX_CLASSES:
        raise ClassSetError(f'class count must be in 1..{MAX_CLASSES}, got {count}')
    return ClassSet(name, tuple(f'class_{i}' for i in range(count)), palette(count))


def palette(count):
    """Return `count` well separated RGB colors (bit-interleaved, as in the VOC palette)."""
    ids = np.arange(count, dtype=np.int64)
    colors = np.zeros((count, 3), np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colors[:, channel] |= ((ids >> (channel + 3 * (7 - shift))) & 1) << shift
    return colors.astype(np.uint8)

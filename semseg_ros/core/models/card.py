"""
Model cards: one YAML file that says everything a model file needs to be run correctly.

A card sits beside a model file (same stem, ``.yaml``: ``net.onnx`` + ``net.yaml``) or inside a
model directory (``OUT/model.yaml`` + the file it names). Example::

    semseg_ros_model_card: 1
    file: model.ts                  # relative to the card's folder
    format: torchscript             # the backend that loads the file
    num_classes: 12
    classes: camvid                 # a class-set name, a path, or an inline class set
    preprocess: {channel_order: bgr, mean: [110.33, 108.41, 105.03],
                 std: [72.13, 72.69, 69.90], scale: 0.00392157, input_size: [480, 360],
                 size_divisor: 1}
    output: {kind: logits, name: null}   # logits | probabilities | class_ids
    options: {}                     # extra backend options
    provenance: {base_model: espnetv2, trained_on: CamVid train (367),
                 metrics: {dataset: camvid_val, miou: 0.65}}

The engine computes ``y = (x - mean) / std * scale`` per channel with ``x`` the pixel in
0..255 after ordering the channels as ``channel_order``. ``docs/MODELS.md`` documents every
field.
"""

from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Optional, Union

from semseg_ros.core import classes as class_sets
from semseg_ros.core.models.base import ModelError, Preprocess, RESIZE_MODES
import yaml

CARD_FILE = 'model.yaml'
VERSION_KEY = 'semseg_ros_model_card'
VERSION = 1
FORMATS = ('torchscript', 'export', 'onnx', 'ultralytics', 'huggingface', 'smp',
           'torchvision', 'espnet', 'espnetv2')
OUTPUT_KINDS = ('logits', 'probabilities', 'class_ids')
# Preprocessing keys: those a card must give, and those with a default.
PREPROCESS_REQUIRED = ('channel_order', 'mean', 'std', 'scale')
PREPROCESS_OPTIONAL = {'input_size': None, 'size_divisor': 1, 'resize': 'stretch'}
PREPROCESS_KEYS = PREPROCESS_REQUIRED + tuple(PREPROCESS_OPTIONAL)
# Keys an inline class set may carry on top of the class-set file format.
ID_SPACE_KEY = 'id_space'
TOP_KEYS = (VERSION_KEY, 'file', 'format', 'num_classes', 'classes', 'preprocess', 'output',
            'options', 'provenance')


class CardError(ModelError):
    """A model card is missing or invalid; the message names the card and the field."""


@dataclass
class ModelCard:
    """What a model file needs: format, classes, preprocessing, output kind, provenance."""

    file: str
    format: str  # noqa: A003 - the agreed card field name
    num_classes: int
    classes: Union[str, dict, None] = None
    preprocess: dict = field(default_factory=dict)
    output: dict = field(default_factory=lambda: {'kind': 'logits', 'name': None})
    options: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def to_dict(self):
        """Return the card as the YAML mapping it is written as (version key first)."""
        return {VERSION_KEY: VERSION, 'file': self.file, 'format': self.format,
                'num_classes': int(self.num_classes), 'classes': self.classes,
                'preprocess': dict(self.preprocess), 'output': dict(self.output),
                'options': dict(self.options), 'provenance': dict(self.provenance)}

    def preprocessing(self):
        """Return the card's preprocessing as a Preprocess."""
        return preprocess_from_dict(self.preprocess, 'preprocess')

    @property
    def output_kind(self):
        """Return the output kind: 'logits', 'probabilities' or 'class_ids'."""
        return (self.output or {}).get('kind') or 'logits'

    @property
    def output_name(self):
        """Return the output name, or None for the model's first output."""
        return (self.output or {}).get('name') or None

    @property
    def id_space(self):
        """Return the id space an inline class set declares (e.g. cityscapes_train_ids)."""
        if isinstance(self.classes, dict):
            return self.classes.get(ID_SPACE_KEY)
        return None


def preprocess_to_dict(pre):
    """Return a Preprocess as the card's ``preprocess`` mapping."""
    return {'channel_order': pre.channel_order, 'mean': [float(v) for v in pre.mean],
            'std': [float(v) for v in pre.std], 'scale': float(pre.scale),
            'input_size': [int(v) for v in pre.input_size] if pre.input_size else None,
            'size_divisor': int(pre.size_divisor), 'resize': pre.resize}


def preprocess_from_dict(data, where, required=PREPROCESS_REQUIRED):
    """
    Return a Preprocess from a mapping of preprocessing keys (a card's or model.options').

    ``required`` keys must be present; the others take Preprocess's defaults. Errors raise
    CardError naming ``where`` and the key.
    """
    if not isinstance(data, dict):
        raise CardError(f'{where}: expected a mapping of {", ".join(PREPROCESS_KEYS)}')
    unknown = sorted(set(data) - set(PREPROCESS_KEYS), key=str)
    if unknown:
        raise CardError(f'{where}: unknown key(s) {", ".join(map(str, unknown))}; valid: '
                        f'{", ".join(PREPROCESS_KEYS)}')
    missing = [k for k in required if data.get(k) is None]
    if missing:
        raise CardError(f'{where}: missing {", ".join(missing)}')
    fields = {}
    if data.get('channel_order') is not None:
        order = str(data['channel_order']).lower()
        if order not in ('rgb', 'bgr'):
            raise CardError(f"{where}.channel_order: 'rgb' or 'bgr', not "
                            f"{data['channel_order']!r}")
        fields['channel_order'] = order
    for key in ('mean', 'std'):
        if data.get(key) is not None:
            fields[key] = _numbers(data[key], 3, f'{where}.{key}')
    if data.get('scale') is not None:
        fields['scale'] = _number(data['scale'], f'{where}.scale', positive=True)
    if data.get('input_size') is not None:
        size = _numbers(data['input_size'], 2, f'{where}.input_size')
        if any(v <= 0 or v != int(v) for v in size):
            raise CardError(f'{where}.input_size: [width, height] positive integers, not '
                            f'{data["input_size"]!r}')
        fields['input_size'] = (int(size[0]), int(size[1]))
    if data.get('size_divisor') is not None:
        div = data['size_divisor']
        if isinstance(div, bool) or not isinstance(div, int) or div < 1:
            raise CardError(f'{where}.size_divisor: a positive integer, not {div!r}')
        fields['size_divisor'] = div
    if data.get('resize') is not None:
        if data['resize'] not in RESIZE_MODES:
            raise CardError(f"{where}.resize: 'stretch' or 'letterbox', not {data['resize']!r}")
        fields['resize'] = data['resize']
    try:
        return Preprocess(**fields)
    except (TypeError, ValueError) as exc:
        raise CardError(f'{where}: {exc}') from None


def _number(value, where, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CardError(f'{where}: a number, not {value!r}')
    if positive and not value > 0:
        raise CardError(f'{where}: must be positive, not {value!r}')
    return float(value)


def _numbers(value, count, where):
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise CardError(f'{where}: {count} numbers, not {value!r}')
    return tuple(_number(v, where) for v in value)


def validate(card, folder=None, source='<card>'):
    """
    Check every field of a card; raise CardError naming the field.

    ``folder`` is the card's folder: a class set given as a path is resolved (and loaded)
    relative to it. The class set must have ``num_classes`` classes.
    """
    if not isinstance(card.file, str) or not card.file.strip():
        raise CardError(f'{source}: file: the model file (relative to the card) is required')
    if card.format not in FORMATS:
        raise CardError(f'{source}: format: {card.format!r} is not one of {", ".join(FORMATS)}')
    n = card.num_classes
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= class_sets.MAX_CLASSES:
        raise CardError(f'{source}: num_classes: a positive integer, not {n!r}')
    preprocess_from_dict(card.preprocess, f'{source}: preprocess')
    out = card.output
    if not isinstance(out, dict) or set(out) - {'kind', 'name'}:
        raise CardError(f'{source}: output: a mapping with kind and name, not {out!r}')
    if (out.get('kind') or 'logits') not in OUTPUT_KINDS:
        raise CardError(f'{source}: output.kind: {out.get("kind")!r} is not one of '
                        f'{", ".join(OUTPUT_KINDS)}')
    if out.get('name') is not None and not isinstance(out['name'], str):
        raise CardError(f'{source}: output.name: a string or null, not {out["name"]!r}')
    for key in ('options', 'provenance'):
        if not isinstance(getattr(card, key), dict):
            raise CardError(f'{source}: {key}: a mapping, not {getattr(card, key)!r}')
    if card.classes is not None:
        classes = card_class_set(card, folder, source)
        if len(classes) != n:
            raise CardError(f'{source}: classes: the class set {classes.name!r} has '
                            f'{len(classes)} classes but num_classes is {n}')
    return card


def card_class_set(card, folder=None, source='<card>'):
    """Return the card's ClassSet (None when it gives none); errors name the field."""
    spec = card.classes
    if spec is None:
        return None
    try:
        if isinstance(spec, dict):
            data = {k: v for k, v in spec.items() if k != ID_SPACE_KEY}
            space = spec.get(ID_SPACE_KEY)
            if space is not None and not isinstance(space, str):
                raise CardError(f'{source}: classes.{ID_SPACE_KEY}: a name, not {space!r}')
            return class_sets.from_dict(data, f'{source}: classes')
        if not isinstance(spec, str) or not spec.strip():
            raise CardError(f'{source}: classes: a class-set name, a path or a mapping, '
                            f'not {spec!r}')
        text = spec.strip()
        looks_like_path = text.endswith(('.yaml', '.yml')) or '/' in text or os.sep in text
        if looks_like_path and folder is not None and not os.path.isabs(text):
            text = str(Path(folder) / text)
        return class_sets.load(text)
    except class_sets.ClassSetError as exc:
        raise CardError(f'{source}: classes: {exc}') from None


def card_from_dict(data, folder=None, source='<card>'):
    """Build and validate a ModelCard from its parsed YAML mapping."""
    if not isinstance(data, dict):
        raise CardError(f'{source}: a model card is a YAML mapping')
    if VERSION_KEY not in data:
        raise CardError(f'{source}: not a model card (no {VERSION_KEY}: {VERSION} key)')
    if data[VERSION_KEY] != VERSION:
        raise CardError(f'{source}: {VERSION_KEY}: version {data[VERSION_KEY]!r} is not '
                        f'supported (this code reads version {VERSION})')
    unknown = sorted(set(data) - set(TOP_KEYS), key=str)
    if unknown:
        raise CardError(f'{source}: unknown key(s) {", ".join(map(str, unknown))}; valid: '
                        f'{", ".join(TOP_KEYS)}')
    missing = [k for k in ('file', 'format', 'num_classes', 'preprocess') if k not in data]
    if missing:
        raise CardError(f'{source}: missing {", ".join(missing)}')
    output = data.get('output')
    if output is None:
        output = {'kind': 'logits', 'name': None}
    card = ModelCard(file=data['file'], format=data['format'], num_classes=data['num_classes'],
                     classes=data.get('classes'), preprocess=data['preprocess'],
                     output=output,
                     options=data.get('options') if data.get('options') is not None else {},
                     provenance=(data.get('provenance')
                                 if data.get('provenance') is not None else {}))
    return validate(card, folder, source)


def is_card_file(path):
    """Return True when ``path`` is a YAML file with the model-card version key."""
    path = Path(path)
    if not path.is_file() or path.suffix not in ('.yaml', '.yml'):
        return False
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except Exception:  # noqa: B902 - any unreadable file is not a card
        return False
    return isinstance(data, dict) and VERSION_KEY in data


def read_card(path):
    """Read and validate a model card (a card file, or a model directory holding one)."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        path = path / CARD_FILE
    if not path.is_file():
        raise CardError(f'model card {path} does not exist')
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except Exception as exc:  # noqa: B902 - YAML constructors raise many types
        raise CardError(f'{path}: cannot read the model card: {exc}') from None
    return card_from_dict(data, path.parent, str(path))


def write_card(card, path):
    """
    Validate and write a card; ``path`` is the card file or a model directory.

    Returns the path written.
    """
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        path = path / CARD_FILE
    validate(card, path.parent, str(path))
    text = yaml.safe_dump(card.to_dict(), sort_keys=False, default_flow_style=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def find_card(weights_path) -> Optional[Path]:
    """
    Return the card of a model path, or None.

    A directory: ``dir/model.yaml``. A card file itself: that file. Any other file: the
    ``.yaml`` with the same stem beside it, when that is a card, else the ``model.yaml``
    beside it when that card names this file.
    """
    if not weights_path:
        return None
    path = Path(os.path.expanduser(str(weights_path)))
    if path.is_dir():
        candidate = path / CARD_FILE
        return candidate if candidate.is_file() else None
    if path.suffix in ('.yaml', '.yml'):
        return path if is_card_file(path) else None
    candidate = path.with_suffix('.yaml')
    if is_card_file(candidate):
        return candidate
    # A file inside a model directory: that directory's card, when it names this file.
    candidate = path.parent / CARD_FILE
    if is_card_file(candidate):
        try:
            with open(candidate) as f:
                named = (yaml.safe_load(f) or {}).get('file')
        except Exception:  # noqa: B902 - an unreadable card names nothing
            named = None
        if named and (path.parent / os.path.expanduser(str(named))).resolve() == path.resolve():
            return candidate
    return None


def card_for(path, fmt, num_classes, preprocess, classes=None, output_kind='logits',
             output_name=None, options=None, provenance=None, card_path=None):
    """
    Return (ModelCard, card path) for a saved model file; the card goes beside it by default.

    ``preprocess`` is a Preprocess (or its mapping); ``classes`` a class-set name, path or
    mapping. The card's ``file`` is relative to the card's folder when possible.
    """
    path = Path(os.path.expanduser(str(path)))
    card_path = Path(card_path) if card_path else path.with_suffix('.yaml')
    if card_path.is_dir():
        card_path = card_path / CARD_FILE
    try:
        file = str(path.resolve().relative_to(card_path.resolve().parent))
    except ValueError:
        file = str(path.resolve())
    pre = preprocess if isinstance(preprocess, dict) else preprocess_to_dict(preprocess)
    card = ModelCard(file=file, format=fmt, num_classes=int(num_classes), classes=classes,
                     preprocess=dict(pre), output={'kind': output_kind, 'name': output_name},
                     options=dict(options or {}), provenance=dict(provenance or {}))
    return card, card_path


def save_card(card, path, fmt, num_classes, preprocess, class_set=None, provenance=None):
    """
    Write the card of a file just saved by one of our save helpers; return its path or None.

    ``card``: falsy = no card, True = beside the file (same stem, .yaml), else the card path
    (or a model directory).
    """
    if not card:
        return None
    made, card_path = card_for(path, fmt, num_classes, preprocess, class_set,
                               provenance=provenance,
                               card_path=None if card is True else card)
    return write_card(made, card_path)


def card_model_path(card, card_path):
    """Return the absolute path of the model file a card names (relative to the card)."""
    file = Path(os.path.expanduser(card.file))
    if not file.is_absolute():
        file = Path(card_path).parent / file
    return file

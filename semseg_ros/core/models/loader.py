"""
Load the model that ``model.backend`` / ``model.weights`` / ``model.options`` describe.

Two things happen on top of the registry's ``create_model``:

- ``model.backend: auto`` picks the backend from what ``model.weights`` is (``detect``): a
  model directory or file with a card, an ``.onnx`` file, a ``torch.export`` ``.pt2`` archive,
  a TorchScript archive, a Hugging Face ``save_pretrained`` directory, an Ultralytics ``.pt``
  file or model ``.yaml``. A bare state dict is refused with the backends that take one.
- A model card found for the weights (``card.find_card``) gives the file, the backend, the
  preprocessing, the output kind and name, the class count and the class set; ``model.options``
  still override it key by key.

Files are recognised by their content (zip members, pickle module names), never by running
them: Ultralytics ``.pt`` files are only named here; the backend loads them behind
``allow_pickle``.
"""

import os
from pathlib import Path
import zipfile

from semseg_ros.core.models.base import ModelError
from semseg_ros.core.models.card import card_class_set, card_model_path, find_card
from semseg_ros.core.models.card import preprocess_to_dict, read_card
from semseg_ros.core.models.fileopts import FILE_OPTIONS
from semseg_ros.core.models.registry import create_model
import yaml

# Backends that take a model file with its network inside.
FILE_BACKENDS = ('torchscript', 'export', 'onnx')
# Backends that take a bare state dict (they hold the network code).
STATE_DICT_BACKENDS = ('espnet', 'espnetv2', 'torchvision', 'smp')
# Backends with a class-count option, and its name.
CLASS_COUNT_OPTION = {'espnet': 'classes', 'espnetv2': 'classes', 'smp': 'classes'}
# Backends that download published weights / load pickles (the pipeline's options).
DOWNLOAD_BACKENDS = ('espnet', 'espnetv2', 'torchvision', 'huggingface')
PICKLE_BACKENDS = ('ultralytics',)
# Backends whose preprocessing a card may replace after loading (the model's own otherwise).
CARD_PREPROCESS_BACKENDS = ('espnet', 'espnetv2', 'torchvision', 'huggingface', 'smp')
# How far into a pickle to look for the module names of its classes.
SCAN_BYTES = 1 << 20


def _pickle_bytes(path):
    """Return the first bytes of the pickle inside a torch file (zip or legacy)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith('data.pkl')]
            if not names:
                return b''
            with archive.open(names[0]) as f:
                return f.read(SCAN_BYTES)
    with open(path, 'rb') as f:
        return f.read(SCAN_BYTES)


def detect(weights):
    """
    Return (backend, why) for a model path; raise ModelError when no backend takes it.

    ``why`` is a short phrase for the log ('an ONNX file', 'a TorchScript archive', ...).
    """
    text = str(weights or '').strip()
    if not text:
        raise ModelError('model.backend auto needs model.weights: a model directory, a card, '
                         'or a model file (.onnx, .pt2, TorchScript, Ultralytics .pt)')
    path = Path(os.path.expanduser(text))
    if not path.exists():
        raise ModelError(f'model.weights {path} does not exist (model.backend auto infers the '
                         'backend from the file; for a Hugging Face hub id set model.backend '
                         'huggingface)')
    card = find_card(path)
    if card is not None:
        return read_card(card).format, f'its model card {card}'
    if path.is_dir():
        if (path / 'config.json').is_file():
            return 'huggingface', 'a Hugging Face directory (config.json)'
        raise ModelError(f'{path} is a directory with neither a model card (model.yaml) nor a '
                         'Hugging Face config.json: name the model file in model.weights')
    suffix = path.suffix.lower()
    if suffix == '.onnx':
        return 'onnx', 'an ONNX file'
    if suffix in ('.yaml', '.yml'):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f'{path}: cannot read: {exc}') from None
        if isinstance(data, dict) and 'backbone' in data and 'head' in data:
            return 'ultralytics', 'an Ultralytics model config'
        raise ModelError(f'{path} is YAML but neither a model card (no semseg_ros_model_card '
                         'key) nor an Ultralytics model config')
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        parts = {n.split('/', 1)[1] if '/' in n else n for n in names}
        if any(p.startswith('models/') and p.endswith('.json') for p in parts) \
                or 'archive_format' in parts:
            return 'export', 'a torch.export (.pt2) archive'
        if 'constants.pkl' in parts or any(p.startswith('code/') for p in parts):
            return 'torchscript', 'a TorchScript archive'
    try:
        head = _pickle_bytes(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f'{path}: cannot read: {exc}') from None
    if b'ultralytics' in head:
        return 'ultralytics', 'an Ultralytics .pt file'
    if head[:1] == b'\x80' or zipfile.is_zipfile(path):
        raise ModelError(
            f'{path} is a PyTorch state dict or checkpoint: weights without their network, '
            f'which model.backend auto cannot run. The backends that take one are '
            f'{", ".join(STATE_DICT_BACKENDS)} (set model.backend and, for torchvision and '
            'smp, the architecture in model.options); or save the whole model as TorchScript, '
            'ONNX or .pt2 (docs/MODELS.md)')
    raise ModelError(f'{path}: not a model file model.backend auto knows (a card, .onnx, .pt2, '
                     'TorchScript, Hugging Face directory, Ultralytics .pt or .yaml)')


def card_options(card, backend):
    """Return the backend options a card implies (its options last)."""
    opts = {}
    if backend in FILE_BACKENDS:
        pre = preprocess_to_dict(card.preprocessing())
        opts.update({k: v for k, v in pre.items() if v is not None})
        opts['output_kind'] = card.output_kind
        opts['num_classes'] = int(card.num_classes)
        if backend == 'onnx' and card.output_name:
            opts['output'] = card.output_name
    elif backend in CLASS_COUNT_OPTION:
        opts[CLASS_COUNT_OPTION[backend]] = int(card.num_classes)
    opts.update(card.options)
    return opts


def load_model(backend, weights='', options=None, download=True, allow_pickle=False):
    """
    Build a model: the backend (or ``auto``), its weights, options, and a card if one is found.

    Returns the SegmentationModel; ``model.card`` (or None) and ``model.backend`` say what
    was used, ``model.warnings`` holds lines for the user.
    """
    options = dict(options or {})
    weights = str(weights or '').strip()
    card_path = find_card(weights) if weights else None
    card = read_card(card_path) if card_path is not None else None
    how = ''
    if backend == 'auto':
        backend, how = detect(weights)
    elif card is not None and card.format != backend:
        raise ModelError(f'{card_path} describes a {card.format!r} model but model.backend is '
                         f'{backend!r}: set model.backend to {card.format} or auto')
    opts = {}
    if card is not None:
        target = card_model_path(card, card_path)
        given = Path(os.path.expanduser(weights))
        if given.is_file() and given.suffix not in ('.yaml', '.yml') \
                and given.resolve() != target.resolve():
            raise ModelError(f'{card_path} describes {target}, not {given}')
        if not target.exists():
            raise ModelError(f'{card_path}: its model file {target} does not exist')
        weights = str(target)
        opts.update(card_options(card, backend))
    opts.update(options)
    opts['weights'] = weights
    if backend in DOWNLOAD_BACKENDS:
        opts['download'] = download
    if backend in PICKLE_BACKENDS:
        opts['allow_pickle'] = allow_pickle
    model = create_model(backend, **opts)
    model.backend = backend
    model.card = card
    model.card_path = card_path
    model.detected = how
    if card is not None:
        _apply_card(model, card, card_path, backend, options)
    return model


def _apply_card(model, card, card_path, backend, options):
    """Give the model the card's class set (and preprocessing); check the class count."""
    if int(model.num_classes) != int(card.num_classes):
        raise ModelError(f'{card_path} says num_classes {card.num_classes} but the model '
                         f'outputs {model.num_classes}')
    classes = card_class_set(card, Path(card_path).parent, str(card_path))
    if classes is not None:
        named = isinstance(card.classes, str) and not card.classes.endswith(('.yaml', '.yml')) \
            and '/' not in card.classes
        model.class_set = card.classes.strip() if named else None
        model.classes = classes
    if backend in CARD_PREPROCESS_BACKENDS:
        model.preprocess = card.preprocessing()
    if backend in FILE_BACKENDS or backend in CARD_PREPROCESS_BACKENDS:
        overridden = [k for k in FILE_OPTIONS if k in options]
        model.preprocess_source = f'model card {card_path}' + (
            f' (model.options override {", ".join(overridden)})' if overridden else '')

"""
Helpers shared by the model backends.

Optional imports with an install hint, the ``semseg_ros.yaml`` metadata stored inside model
files, safe loading of training checkpoints, class sets built from a model's own class names,
and running models exported with a fixed batch size.
"""

import importlib
import re

from semseg_ros.core import classes as class_sets
from semseg_ros.core.models.base import ModelError, Preprocess
from semseg_ros.core.weights import read_torch_file
from semseg_ros.core.weights import WeightsError
import torch
import yaml

META_FILE = 'semseg_ros.yaml'
PREPROCESS_KEYS = ('channel_order', 'mean', 'std', 'scale', 'input_size', 'size_divisor',
                   'resize')
# ImageNet normalisation in the engine's terms (pixels 0..255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = Preprocess(mean=tuple(255.0 * m for m in IMAGENET_MEAN),
                      std=tuple(255.0 * s for s in IMAGENET_STD), scale=1.0)
# Class sets whose colors and drivable flags a model's own class names may pick up.
KNOWN_SETS = ('camvid', 'cityscapes', 'voc', 'coco', 'ade20k')
# Where training scripts keep the weights inside a checkpoint, and the prefixes they add.
CHECKPOINT_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'weights')
PREFIXES = ('module.', 'model.', '_orig_mod.', 'net.')


def require(module, backend, package=None):
    """Import an optional library for a backend; a missing one raises ModelError with the fix."""
    package = package or module
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ModelError(
            f'model backend {backend!r} needs the Python package {package!r}, which cannot '
            f'be imported ({err}): pip install {package}') from None


def dump_metadata(num_classes, preprocess, class_set=None):
    """Return the YAML text that describes a model: class count, class set, preprocessing."""
    meta = {'num_classes': int(num_classes), 'class_set': class_set,
            'channel_order': preprocess.channel_order, 'mean': [float(v) for v in preprocess.mean],
            'std': [float(v) for v in preprocess.std], 'scale': float(preprocess.scale),
            'input_size': list(preprocess.input_size) if preprocess.input_size else None,
            'size_divisor': int(preprocess.size_divisor), 'resize': preprocess.resize}
    return yaml.safe_dump(meta, sort_keys=False)


def parse_metadata(text, path):
    """Return (metadata dict, Preprocess) from the YAML text stored with a model ('' = none)."""
    try:
        meta = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise ModelError(f'{path}: corrupt {META_FILE} metadata: {exc}') from None
    meta = meta or {}
    if not isinstance(meta, dict):
        raise ModelError(f'{path}: corrupt {META_FILE} metadata (not a mapping)')
    try:
        fields = {k: meta[k] for k in PREPROCESS_KEYS if meta.get(k) is not None}
        for key in ('mean', 'std', 'input_size'):
            if key in fields:
                fields[key] = tuple(fields[key])
        preprocess = Preprocess(**fields)
    except (TypeError, ValueError) as exc:
        raise ModelError(f'{path}: invalid preprocessing metadata: {exc}') from None
    return meta, preprocess


def load_checkpoint(path, expected=()):
    """
    Load a state dict safely (``weights_only=True``) from a plain file or a training checkpoint.

    Weights under 'state_dict', 'model' (and similar) keys are taken out, entries that are not
    tensors are dropped, and the prefixes that DataParallel ('module.'), Lightning ('model.')
    and torch.compile ('_orig_mod.') add are stripped while that matches more of ``expected``.
    """
    path = str(path)
    obj = read_torch_file(path)
    for key in CHECKPOINT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f'weights file {path} holds a {type(obj).__name__}, not a state dict')
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError(f'weights file {path} holds no tensors')
    expected = set(expected)
    stripped = {_strip(k, expected): v for k, v in state.items()}
    if len(expected & set(stripped)) > len(expected & set(state)):
        state = stripped
    return state


def _strip(key, expected):
    """Remove wrapper prefixes from a state-dict key until it is one of ``expected``."""
    while key not in expected:
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None:
            break
        key = key[len(prefix):]
    return key


def load_into(module, state, path, what):
    """Load ``state`` into ``module`` strictly; mismatches raise ModelError naming the keys."""
    own = module.state_dict()
    counters = {k for k in own if k.endswith('num_batches_tracked')}
    missing = sorted(set(own) - set(state) - counters)
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or reshaped:
        detail = ', '.join(f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}'
                           for k in reshaped[:3])
        raise ModelError(
            f'{path} does not fit {what}: {len(missing)} missing {missing[:3]}, '
            f'{len(unexpected)} unexpected {unexpected[:3]}, {len(reshaped)} of another '
            f'shape [{detail}]')
    full = {k: own[k] for k in counters if k not in state}
    full.update(state)
    module.load_state_dict(full, strict=True)


def _norm(name):
    return re.sub(r'[\s_\-]+', ' ', str(name).strip().lower())


def class_set_for(names, name, source):
    """
    Return (class-set name or None, ClassSet) for a model's own class names.

    When the names are exactly those of a set in config/classes, that set (and its name) is
    returned. When they are all names of one such set, its colors and drivable flags are
    used in the model's order. Otherwise the names get palette colors.
    """
    wanted = [_norm(n) for n in names]
    for known in KNOWN_SETS:
        try:
            ref = class_sets.load(known)
        except class_sets.ClassSetError:
            continue
        ref_names = [_norm(n) for n in ref.names]
        if ref_names == wanted:
            return known, ref
        if set(wanted) <= set(ref_names) and len(set(wanted)) == len(wanted):
            rows = [ref_names.index(n) for n in wanted]
            entries = [{'id': i, 'name': ref.names[r], 'color': [int(c) for c in ref.colors[r]],
                        'drivable': r in ref.drivable} for i, r in enumerate(rows)]
            return None, class_sets.from_dict({'name': name, 'classes': entries}, source)
    return None, named_class_set(names, name, source)


def named_class_set(names, name, source):
    """Return a ClassSet of the given names with palette colors (empty or repeated names fixed)."""
    colors = class_sets.palette(len(names))
    entries, seen = [], set()
    for i, raw in enumerate(names):
        text = str(raw).strip() or f'class_{i}'
        if text.lower() in seen:
            text = f'{text}_{i}'
        seen.add(text.lower())
        entries.append({'id': i, 'name': text, 'color': [int(c) for c in colors[i]]})
    return class_sets.from_dict({'name': name, 'classes': entries}, source)


def run_in_chunks(run, batch, size):
    """Call ``run`` on slices of exactly ``size`` frames (zero-padded); None = any batch size."""
    count = batch.shape[0]
    if not size or count == size:
        return run(batch)
    outs = []
    for start in range(0, count, size):
        part = batch[start:start + size]
        real = part.shape[0]
        if real < size:
            pad = part.new_zeros((size - real,) + tuple(part.shape[1:]))
            part = torch.cat([part, pad])
        outs.append(run(part)[:real])
    return torch.cat(outs)


def first_output(out):
    """Return the logits of a model output: a tensor, a dict's 'out' entry or a tuple's first."""
    if isinstance(out, dict):
        out = out['out'] if 'out' in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def static_dims(shape):
    """Return a shape with its symbolic or unknown dimensions as None."""
    return tuple(d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None
                 for d in shape)

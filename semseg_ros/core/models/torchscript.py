"""
TorchScript backend: any model saved with ``torch.jit.save``.

A TorchScript archive carries no class or preprocessing metadata of its own; ``save`` below
stores ours as the extra file ``semseg_ros.yaml`` inside the archive (num_classes, class_set,
channel_order, mean, std, scale, input_size, size_divisor). The preprocessing keys, the output
kind and the class count can also be given as options (see ``fileopts``), overriding the file.
The model is probed once (one blank frame) for its output: float (N, C, h, w) logits (or
probabilities) or integer (N, h, w) class ids. Without metadata or options the defaults of
Preprocess apply (RGB, x / 255) and the model carries a warning that says so.

Modules that ``torch.jit.script`` cannot compile (``undefined value ...``) are traced:
``torch.jit.trace(module.eval(), example)`` then ``save(traced, ...)``; a traced module runs
at the size it was traced at when its code computes sizes from the input.
"""

import os

from semseg_ros.core.models.base import ModelError
from semseg_ros.core.models.base import ModuleModel
from semseg_ros.core.models.base import Preprocess
from semseg_ros.core.models.card import save_card
from semseg_ros.core.models.common import parse_metadata
from semseg_ros.core.models.fileopts import describe, FILE_OPTIONS, kind_of
from semseg_ros.core.models.fileopts import num_classes_option, output_kind_option
from semseg_ros.core.models.fileopts import resolve_preprocess
from semseg_ros.core.models.registry import check_options
import torch
import yaml

META_FILE = 'semseg_ros.yaml'
DEFAULTS = dict(FILE_OPTIONS, weights='', cache='', download=True)


def save(module, path, num_classes, preprocess=Preprocess(), class_set=None, card=False,
         provenance=None):
    """
    Script (if needed) and save a module with its semseg_ros metadata.

    card: True writes a model card beside the file (a path: there); provenance goes in it.
    A module that cannot be scripted: trace it first (``torch.jit.trace``) and pass that.
    """
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    meta = {'num_classes': int(num_classes), 'class_set': class_set,
            'channel_order': preprocess.channel_order, 'mean': list(preprocess.mean),
            'std': list(preprocess.std), 'scale': preprocess.scale,
            'input_size': list(preprocess.input_size) if preprocess.input_size else None,
            'size_divisor': preprocess.size_divisor}
    torch.jit.save(scripted, path, _extra_files={META_FILE: yaml.safe_dump(meta)})
    return save_card(card, path, 'torchscript', num_classes, preprocess, class_set, provenance)


def probe(model, preprocess, path):
    """Run one blank frame; return the output (tensor) or raise ModelError with the reason."""
    div = max(1, int(preprocess.size_divisor))
    w, h = preprocess.input_size or (64 * div, 64 * div)
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, h, w))
    except Exception as exc:  # noqa: B902 - any failure of the user's model
        hint = '' if preprocess.input_size else (
            ' (a traced model may run only at the size it was traced at: give input_size '
            '[width, height] in model.options or the card)')
        raise ModelError(f'{path}: a probe run at {w}x{h} failed{hint}: '
                         f'{type(exc).__name__}: {str(exc)[:300]}') from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f'{path}: the model returned a {type(out).__name__}, not a tensor')
    return out


def build(options):
    """
    Load a TorchScript archive given by options['weights'].

    Options: ``weights`` (the file; required), the preprocessing keys, ``output_kind`` and
    ``num_classes`` (see ``fileopts``). ``cache`` and ``download`` are accepted and ignored.
    """
    options = check_options('torchscript', options, DEFAULTS)
    kind = output_kind_option(options, 'torchscript')
    wanted_classes = num_classes_option(options, 'torchscript')
    path = os.path.expanduser(options.get('weights') or '')
    if not path:
        raise ModelError('torchscript backend: parameter model.weights must name the '
                         '.pt/.ts file saved with torch.jit.save')
    if not os.path.isfile(path):
        raise ModelError(f'torchscript model file {path} does not exist')
    extra = {META_FILE: ''}
    try:
        module = torch.jit.load(path, map_location='cpu', _extra_files=extra)
    except Exception as exc:  # noqa: B902 - torch raises many types for bad archives
        raise ModelError(f'{path}: not a loadable TorchScript archive: {exc}') from None
    meta, _ = parse_metadata(extra[META_FILE], path)
    preprocess, source, warnings = resolve_preprocess(meta, options, path)
    name = os.path.splitext(os.path.basename(path))[0]
    model = ModuleModel(module, 1, preprocess, meta.get('class_set'), name)
    out = probe(model, preprocess, path)
    kind = kind_of(out.dtype, out.shape, kind if kind != 'auto' else meta.get('output_kind'),
                   path)
    channels = int(out.shape[1]) if kind != 'class_ids' else None
    return describe(model, kind, channels, wanted_classes, meta, source, warnings, path)

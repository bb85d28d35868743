"""
TorchScript backend: any model saved with ``torch.jit.save``.

A TorchScript archive carries no class or preprocessing metadata of its own; ``save`` below
stores ours as the extra file ``semseg_ros.yaml`` inside the archive (num_classes, class_set,
channel_order, mean, std, scale, input_size, size_divisor). Without it the model is probed once
for its class count and the defaults of Preprocess apply (RGB, x / 255).
"""

import os

from semseg_ros.core.models.base import ModelError
from semseg_ros.core.models.base import ModuleModel
from semseg_ros.core.models.base import Preprocess
from semseg_ros.core.models.common import parse_metadata
import torch
import yaml

META_FILE = 'semseg_ros.yaml'
OPTIONS = ('weights', 'cache', 'download')
PREPROCESS_KEYS = ('channel_order', 'mean', 'std', 'scale', 'input_size', 'size_divisor')


def save(module, path, num_classes, preprocess=Preprocess(), class_set=None):
    """Script (if needed) and save a module with its semseg_ros metadata."""
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    meta = {'num_classes': int(num_classes), 'class_set': class_set,
            'channel_order': preprocess.channel_order, 'mean': list(preprocess.mean),
            'std': list(preprocess.std), 'scale': preprocess.scale,
            'input_size': list(preprocess.input_size) if preprocess.input_size else None,
            'size_divisor': preprocess.size_divisor}
    torch.jit.save(scripted, path, _extra_files={META_FILE: yaml.safe_dump(meta)})


def _probe_classes(module, path):
    with torch.inference_mode():
        out = module(torch.zeros(1, 3, 64, 64))
    if isinstance(out, dict):
        out = out['out']
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ModelError(f'{path}: the model must return (N, C, H, W) logits')
    return int(out.shape[1])


def build(options):
    """Load a TorchScript archive given by options['weights']."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ModelError(f'torchscript backend: unknown options {sorted(unknown)}')
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
    meta, preprocess = parse_metadata(extra[META_FILE], path)
    num_classes = meta.get('num_classes') or _probe_classes(module, path)
    name = os.path.splitext(os.path.basename(path))[0]
    return ModuleModel(module, num_classes, preprocess, meta.get('class_set'), name)

"""
torchvision backend: the segmentation models of ``torchvision.models.segmentation`` by name.

Weights: a local file (a state dict, loaded with ``weights_only=True``; training checkpoints
with a 'state_dict' or 'model' entry and 'module.' prefixes are accepted) or, without one,
torchvision's published COCO-with-VOC-labels weights from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), downloaded there once (hash-checked) when ``download`` is
true. The class count follows the weights (21 = the VOC class set); the auxiliary head of
the published weights is loaded and then dropped, it is only used in training.
Input: RGB with ImageNet normalisation, at any size.
"""

import os
import re
import urllib.error

from semseg_ros.core.models.base import ModelError, ModuleModel
from semseg_ros.core.models.common import IMAGENET, load_checkpoint, load_into, require
from semseg_ros.core.models.registry import check_options
from semseg_ros.core.weights import WeightsError
import torch

MODELS = ('deeplabv3_mobilenet_v3_large', 'deeplabv3_resnet101', 'deeplabv3_resnet50',
          'fcn_resnet101', 'fcn_resnet50', 'lraspp_mobilenet_v3_large')
DEFAULTS = {'name': '', 'weights': '', 'download': True}
VOC_CLASSES = 21
# The last layer of each family: its weight's first dimension is the class count.
HEADS = {'deeplabv3': 'classifier.4.weight', 'fcn': 'classifier.4.weight',
         'lraspp': 'classifier.low_classifier.weight'}


def _name(opts):
    """Return the model name from options['name'], or from the weights file's name."""
    name = str(opts['name'] or '').strip().lower()
    if not name and opts['weights']:
        base = os.path.basename(str(opts['weights'])).lower()
        name = next((m for m in sorted(MODELS, key=len, reverse=True)
                     if base.startswith(m)), '')
    if not name:
        raise ModelError('torchvision backend: no model name (option name, or a weights file '
                         'named after the model); valid: ' + ', '.join(MODELS))
    if name not in MODELS:
        raise ModelError(f'torchvision backend: unknown model name {name!r}; valid: '
                         + ', '.join(MODELS))
    return name


def _construct(segmentation, name, num_classes, aux):
    kwargs = {'weights': None, 'weights_backbone': None, 'num_classes': num_classes}
    if not name.startswith('lraspp'):
        kwargs['aux_loss'] = aux
    return getattr(segmentation, name)(**kwargs)


def published_file(models, name):
    """Return (url, cache path) of torchvision's published weights for a model name."""
    url = models.get_model_weights(name).DEFAULT.url
    folder = os.path.join(torch.hub.get_dir(), 'checkpoints')
    return url, os.path.join(folder, os.path.basename(url))


def _fetch(models, name, download):
    """Return the local path of the published weights, downloading them when allowed."""
    url, path = published_file(models, name)
    if os.path.isfile(path):
        return path
    manual = f'download {url} yourself and place it at {path}, or give model.weights'
    if not download:
        raise WeightsError(f'torchvision weights for {name} are not in the torch hub cache and '
                           f'downloads are disabled; {manual}')
    found = re.search(r'-([a-f0-9]+)\.', os.path.basename(url))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, found.group(1) if found else None,
                                       progress=True)
    except (OSError, urllib.error.URLError, RuntimeError, ValueError) as err:
        raise WeightsError(f'could not download torchvision weights {url} ({err}); offline? '
                           f'{manual}') from None
    return path


def build(options):
    """
    Build a torchvision segmentation model with its weights.

    Options: ``name`` (one of MODELS; '' = guessed from the weights file name), ``weights``
    (a local state dict; '' = torchvision's published weights) and ``download`` (allow
    fetching the published weights into the torch hub cache).
    """
    opts = check_options('torchvision', options, DEFAULTS)
    name = _name(opts)
    tv = require('torchvision', 'torchvision')
    segmentation = require('torchvision.models.segmentation', 'torchvision')
    if opts['weights']:
        path = os.path.expanduser(str(opts['weights']))
    else:
        path = _fetch(tv.models, name, bool(opts['download']))
    probe = _construct(segmentation, name, VOC_CLASSES, False)
    expected = set(probe.state_dict())
    state = load_checkpoint(path, expected | {'aux_classifier.' + k for k in expected})
    aux = any(k.startswith('aux_classifier.') for k in state)
    head = state.get(HEADS[name.split('_')[0]])
    num_classes = int(head.shape[0]) if head is not None and head.ndim == 4 else VOC_CLASSES
    net = probe if (num_classes, aux) == (VOC_CLASSES, False) else _construct(
        segmentation, name, num_classes, aux)
    load_into(net, state, path, f'torchvision {name} ({num_classes} classes)')
    if aux:
        net.aux_classifier = None
    class_set = 'voc' if num_classes == VOC_CLASSES else None
    return ModuleModel(net.eval(), num_classes, IMAGENET, class_set, name)

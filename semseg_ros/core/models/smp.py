"""
segmentation_models_pytorch backend: an architecture rebuilt from options, your weights.

The network is made with ``smp.create_model(arch, encoder, classes, in_channels)`` and
``encoder_weights=None`` (nothing is downloaded), then loaded from your state dict with
``weights_only=True``. Training checkpoints are accepted: weights under a 'state_dict' or
'model' key, and 'module.' (DataParallel), 'model.' (Lightning) or '_orig_mod.'
(torch.compile) prefixes. ``classes`` 0 takes the class count from the weights; a one-class
(binary) model becomes two outputs, background and foreground, so that argmax and confidence
mean what they should. ``in_channels`` 1 feeds the gray level of the frame.

Input: RGB normalised with ``mean`` / ``std`` (0..1 units as in smp and timm; ImageNet by
default), at any size padded to a multiple of 32.
"""

import os

from semseg_ros.core import classes as class_sets
from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.common import IMAGENET_MEAN, IMAGENET_STD, load_checkpoint
from semseg_ros.core.models.common import load_into, require
from semseg_ros.core.models.registry import check_options
import torch

DEFAULTS = {'weights': '', 'download': True, 'arch': 'unet', 'encoder': 'resnet34',
            'classes': 0, 'in_channels': 3, 'encoder_depth': 0,
            'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD)}
SIZE_DIVISOR = 32
HEAD = 'segmentation_head.0.weight'


class SmpModel(SegmentationModel):
    """An smp network; binary models get a background channel, gray models a gray input."""

    def __init__(self, net, num_classes, preprocess, binary=False, gray=False, name='smp',
                 classes=None):
        super().__init__()
        self.net = net
        self.binary = binary
        self.gray = gray
        self.num_classes = int(num_classes)
        self.preprocess = preprocess
        self.classes = classes
        self.name = name

    def forward(self, batch):
        """Return logits (N, classes, H, W)."""
        if self.gray:
            batch = batch.mean(dim=1, keepdim=True)
        out = self.net(batch)
        if self.binary:
            out = torch.cat([torch.zeros_like(out), out], dim=1)
        return out


def arch_key(arch, known):
    """Return smp's key for an architecture name ('Unet++', 'DeepLabV3+', 'unet_plus_plus')."""
    key = str(arch).strip().lower().replace('++', 'plusplus').replace('+', 'plus')
    key = key.replace('_', '').replace('-', '').replace(' ', '')
    if key not in known:
        raise ModelError(f'smp backend: unknown architecture {arch!r}; valid: '
                         + ', '.join(sorted(known)))
    return key


def _create(smp, arch, encoder, classes, in_channels, depth):
    kwargs = {'encoder_name': encoder, 'encoder_weights': None, 'in_channels': in_channels,
              'classes': classes}
    if depth:
        kwargs['encoder_depth'] = int(depth)
    try:
        return smp.create_model(arch, **kwargs)
    except KeyError as exc:
        raise ModelError(f'smp backend: {str(exc).strip(chr(34))[:600]}') from None
    except (TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ModelError(f'smp backend: cannot build {arch} with encoder {encoder}: '
                         f'{exc}') from None


def build(options):
    """
    Rebuild an smp model and load the user's weights.

    Options: ``weights`` (state dict or checkpoint; required), ``arch`` (Unet, UnetPlusPlus,
    FPN, DeepLabV3Plus, PSPNet, ...), ``encoder`` (resnet34, efficientnet-b0, tu-... ),
    ``classes`` (0 = from the weights), ``in_channels`` (3, or 1 for gray models),
    ``encoder_depth`` (0 = the architecture's default), ``mean`` and ``std`` (0..1 units).
    ``download`` is accepted and ignored: nothing is downloaded.
    """
    opts = check_options('smp', options, DEFAULTS)
    path = os.path.expanduser(str(opts['weights'] or ''))
    if not path:
        raise ModelError('smp backend: parameter model.weights must name the state dict of '
                         'your trained model (pretrained encoder weights are never downloaded)')
    in_channels = int(opts['in_channels'])
    if in_channels not in (1, 3):
        raise ModelError(f'smp backend: in_channels must be 3 (color) or 1 (gray), got '
                         f'{in_channels}')
    mean, std = list(opts['mean']), list(opts['std'])
    if len(mean) != 3 or len(std) != 3:
        raise ModelError('smp backend: mean and std need three values (0..1 units)')
    smp = require('segmentation_models_pytorch', 'smp', 'segmentation-models-pytorch')
    known = {k.lower() for k in getattr(smp, 'MODEL_ARCHITECTURES_MAPPING', {})} or None
    arch = arch_key(opts['arch'], known) if known else str(opts['arch'])
    encoder = str(opts['encoder'])
    classes = int(opts['classes'])
    net = _create(smp, arch, encoder, classes or 1, in_channels, opts['encoder_depth'])
    state = load_checkpoint(path, net.state_dict())
    head = state.get(HEAD)
    if not classes and head is not None and head.ndim == 4:
        classes = int(head.shape[0])
        if classes != 1:
            net = _create(smp, arch, encoder, classes, in_channels, opts['encoder_depth'])
    classes = classes or 1
    what = f'smp {arch} / {encoder} with {classes} classes and {in_channels} input channels'
    load_into(net, state, path, what)
    if in_channels == 1:
        mean, std = [sum(mean) / 3] * 3, [sum(std) / 3] * 3
    try:
        preprocess = Preprocess('rgb', tuple(255.0 * float(m) for m in mean),
                                tuple(255.0 * float(s) for s in std), 1.0, None, SIZE_DIVISOR)
    except (TypeError, ValueError) as exc:
        raise ModelError(f'smp backend: invalid mean / std: {exc}') from None
    binary = classes == 1
    names = None
    if binary:
        names = class_sets.from_dict({'name': 'binary', 'classes': [
            {'id': 0, 'name': 'background', 'color': [0, 0, 0]},
            {'id': 1, 'name': 'foreground', 'color': [255, 255, 255]}]}, f'{path} (binary)')
    return SmpModel(net.eval(), 2 if binary else classes, preprocess, binary,
                    in_channels == 1, f'{arch}_{encoder}', names)

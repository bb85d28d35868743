"""
Hugging Face backend: ``transformers.AutoModelForSemanticSegmentation`` models.

SegFormer, BEiT, DPT, UperNet, MobileViT and the like, from a local directory (what
``save_pretrained`` writes) or a hub id (fetched into the Hugging Face cache unless
``download`` is false; offline, the cache must hold it).

Classes come from the model's ``config.id2label``: the model carries them as a ClassSet in
its ``classes`` attribute, and names a set of config/classes in ``class_set`` when the names
are exactly that set's (ADE20K SegFormers give 'ade20k'). Preprocessing comes from the image
processor config when there is one (image_mean / image_std, rescale factor, a fixed
height x width size), else ImageNet normalisation at the frame's size.
"""

import os

from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.common import class_set_for, IMAGENET, require
from semseg_ros.core.models.registry import check_options

DEFAULTS = {'weights': '', 'download': True}


class HuggingFaceModel(SegmentationModel):
    """A transformers semantic-segmentation model as a SegmentationModel."""

    def __init__(self, net, num_classes, preprocess, class_set=None, classes=None,
                 name='model'):
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.preprocess = preprocess
        self.class_set = class_set
        self.classes = classes
        self.name = name

    def forward(self, batch):
        """Return the model's logits (often at 1/4 of the input size)."""
        out = self.net(pixel_values=batch)
        return out.logits if hasattr(out, 'logits') else out[0]


def preprocess_from(processor):
    """Return the Preprocess that an image processor describes (ImageNet when None)."""
    if processor is None:
        return IMAGENET
    rescale = float(getattr(processor, 'rescale_factor', 1 / 255) or 1 / 255)
    if not getattr(processor, 'do_rescale', True):
        rescale = 1.0
    mean, std = getattr(processor, 'image_mean', None), getattr(processor, 'image_std', None)
    if getattr(processor, 'do_normalize', True) and mean is not None and std is not None:
        mean = tuple(float(m) / rescale for m in _three(mean))
        std = tuple(float(s) / rescale for s in _three(std))
        scale = 1.0
    else:
        mean, std, scale = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), rescale
    size = getattr(processor, 'size', None)
    height = _get(size, 'height')
    width = _get(size, 'width')
    input_size = None
    if getattr(processor, 'do_resize', False) and height and width:
        input_size = (int(width), int(height))
    divisor = getattr(processor, 'size_divisor', None) or getattr(
        processor, 'ensure_multiple_of', None) or 1
    return Preprocess('rgb', mean, std, scale, input_size, int(divisor))


def _three(values):
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return values * 3 if len(values) == 1 else values


def _get(size, key):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def build(options):
    """
    Load a semantic-segmentation model from a directory or a hub id (options['weights']).

    Options: ``weights`` (directory or hub id; required) and ``download`` (allow fetching a hub
    id into the Hugging Face cache).
    """
    opts = check_options('huggingface', options, DEFAULTS)
    source = str(opts['weights'] or '').strip()
    if not source:
        raise ModelError('huggingface backend: parameter model.weights must name a model '
                         'directory (save_pretrained) or a hub id such as '
                         'nvidia/segformer-b0-finetuned-ade-512-512')
    local = os.path.isdir(os.path.expanduser(source))
    if local:
        source = os.path.expanduser(source)
    elif source.startswith(('/', '.', '~')) or source.count('/') > 1:
        raise ModelError(f'huggingface model directory {source} does not exist')
    transformers = require('transformers', 'huggingface')
    transformers.utils.logging.disable_progress_bar()
    local_only = local or not opts['download']
    try:
        net = transformers.AutoModelForSemanticSegmentation.from_pretrained(
            source, local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        hint = '' if local else (' (offline? the hub id must be in the Hugging Face cache; '
                                 'or give a local directory)')
        raise ModelError(f'huggingface backend: cannot load a semantic-segmentation model from '
                         f'{source}: {str(exc)[:400]}{hint}') from None
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            source, local_files_only=local_only)
    except Exception:  # noqa: B902 - no or unreadable processor config: ImageNet defaults
        processor = None
    try:
        preprocess = preprocess_from(processor)
    except (TypeError, ValueError) as exc:
        raise ModelError(f'{source}: unusable image processor config: {exc}') from None
    config = net.config
    num_classes = int(config.num_labels)
    id2label = {int(k): v for k, v in (getattr(config, 'id2label', None) or {}).items()}
    names = [id2label.get(i, f'class_{i}') for i in range(num_classes)]
    name = os.path.basename(source.rstrip('/')) or 'huggingface'
    class_set, classes = class_set_for(names, name, f'{source} (config.id2label)')
    return HuggingFaceModel(net.eval(), num_classes, preprocess, class_set, classes, name)

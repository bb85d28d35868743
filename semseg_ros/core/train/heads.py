"""
Class mapping by name and head adaptation: a base model's classifier cut to a new class set.

Each class of the new set takes the output weights of the base class of the same name
(case, spaces and underscores ignored), else of a known synonym (CamVid ``Pavement`` ->
Cityscapes ``sidewalk``); the others start fresh. The classifier is the last convolution (or
linear layer) with one output per base class; it is replaced by one with one output per new
class, so everything before it keeps its trained weights.
"""

import copy
import re

from semseg_ros.core.models.base import ModelError
import torch
from torch import nn

# Names that denote the same thing in the common class sets (Cityscapes, CamVid, VOC, COCO,
# ADE20K). The first name of a group that the base set has initialises a new class of the
# group; for scoring the base model, every base class of the group counts as that class.
SYNONYMS = (
    ('road', 'street'),
    ('sidewalk', 'pavement'),
    ('building', 'wall', 'house'),
    ('vegetation', 'tree', 'plant', 'pottedplant'),
    ('trafficsign', 'signsymbol', 'sign', 'trafficlight'),
    ('person', 'pedestrian', 'human'),
    ('bicyclist', 'rider', 'bicycle', 'motorcycle', 'motorbike', 'cyclist'),
    ('car', 'truck', 'bus', 'vehicle'),
    ('background', 'unlabelled', 'unlabeled', 'void'),
    ('terrain', 'grass'),
)


def normal(name):
    """Return a class name without case, spaces, underscores or dashes."""
    return re.sub(r'[\s_\-]+', '', str(name).lower())


def _group(name):
    key = normal(name)
    for group in SYNONYMS:
        if key in group:
            return group
    return (key,)


def class_mapping(base_names, new_names, overrides=None):
    """
    Return {new class name: base class name or None}, the weights each new class starts from.

    ``overrides`` {new name: base name or null} wins over names and synonyms.
    """
    base_keys = {normal(n): n for n in base_names}
    overrides = {normal(k): v for k, v in (overrides or {}).items()}
    unknown = [k for k in overrides if k not in {normal(n) for n in new_names}]
    if unknown:
        raise ModelError(f'class map: {unknown} are not classes of the dataset '
                         f'({", ".join(new_names)})')
    mapping = {}
    for name in new_names:
        key = normal(name)
        if key in overrides:
            target = overrides[key]
            if target is not None and normal(target) not in base_keys:
                raise ModelError(f'class map: {target!r} is not a class of the base model '
                                 f'({", ".join(base_names)})')
            mapping[name] = None if target is None else base_keys[normal(target)]
        elif key in base_keys:
            mapping[name] = base_keys[key]
        else:
            mapping[name] = next((base_keys[k] for k in _group(name) if k in base_keys), None)
    return mapping


def scoring_table(base_names, new_names, mapping):
    """
    Return a list base id -> new id (or -1): how base-model predictions count on the dataset.

    A base class counts as the new class whose weights it gave, else as the new class of its
    synonym group; the rest count as wrong.
    """
    new_keys = {normal(n): i for i, n in enumerate(new_names)}
    table = []
    given = {normal(b): normal(n) for n, b in mapping.items() if b is not None}
    for name in base_names:
        key = normal(name)
        if key in given:
            table.append(new_keys[given[key]])
            continue
        target = next((new_keys[k] for k in _group(name) if k in new_keys), -1)
        table.append(target)
    return table


def _classifier(model, count):
    """Return (qualified name, module) of the last layer with ``count`` outputs."""
    found = None
    for name, module in model.named_modules():
        if 'aux' in name.split('.')[-1] or '.aux' in name or name.startswith('aux'):
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.out_channels == count:
            found = (name, module)
        elif isinstance(module, nn.Linear) and module.out_features == count:
            found = (name, module)
    if found is None:
        raise ModelError(f'no convolution with {count} outputs (one per base class) found in '
                         f'{type(model).__name__}: its head cannot be adapted')
    return found


def _new_layer(old, count):
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, count, bias=old.bias is not None)
    kind = type(old)
    kwargs = {'kernel_size': old.kernel_size, 'stride': old.stride, 'padding': old.padding,
              'dilation': old.dilation, 'bias': old.bias is not None}
    if isinstance(old, nn.ConvTranspose2d):
        if old.groups != 1:
            raise ModelError('a grouped transposed-convolution head cannot be adapted')
        kwargs['output_padding'] = old.output_padding
        return kind(old.in_channels, count, **kwargs)
    if old.groups != 1:
        raise ModelError('a grouped convolution head cannot be adapted')
    return kind(old.in_channels, count, **kwargs)


def adapt_head(model, base_classes, new_classes, mapping, probe_size=(64, 64)):
    """
    Return a copy of ``model`` whose classifier outputs one channel per new class.

    New class i copies the weights and bias of base class mapping[name_i]; the rest keep a
    fresh initialisation. The copy's ``num_classes``, ``classes`` and ``class_set`` follow the
    new set. A probe forward checks the new output count.
    """
    model = copy.deepcopy(model)
    base_index = {n: i for i, n in enumerate(base_classes.names)}
    name, old = _classifier(model, len(base_classes))
    layer = _new_layer(old, len(new_classes)).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        # Transposed convolutions keep their outputs in dimension 1 of the weight.
        out_dim = 1 if isinstance(old, nn.ConvTranspose2d) else 0
        for i, new_name in enumerate(new_classes.names):
            source = mapping.get(new_name)
            if source is None:
                continue
            j = base_index[source]
            layer.weight.select(out_dim, i).copy_(old.weight.select(out_dim, j))
            if old.bias is not None:
                layer.bias[i] = old.bias[j]
    parent = model
    parts = name.split('.')
    for part in parts[:-1]:
        parent = getattr(parent, part)
    setattr(parent, parts[-1], layer)
    model.num_classes = len(new_classes)
    model.classes = new_classes
    model.class_set = None
    width, height = probe_size
    div = max(1, int(model.preprocess.size_divisor))
    probe = torch.zeros(1, 3, -(-height // div) * div, -(-width // div) * div,
                        device=layer.weight.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.logits(probe)
    model.train(was_training)
    if out.shape[1] != len(new_classes):
        raise ModelError(f'after replacing {name}, {type(model).__name__} outputs '
                         f'{out.shape[1]} channels, not {len(new_classes)}: its head cannot '
                         'be adapted automatically')
    return model, name

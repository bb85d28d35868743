"""
Options shared by the model-file backends (torchscript, export, onnx).

A model file made elsewhere carries none of our metadata, so everything it needs can be given
as ``model.options`` (or by a model card, which the loader turns into the same options):

- preprocessing: ``channel_order`` (rgb | bgr), ``mean`` and ``std`` (three values each, in
  0..255 pixel units), ``scale``, ``input_size`` ([width, height]) and ``size_divisor``; each
  key given overrides the file's own metadata;
- ``output_kind``: ``auto`` (float outputs are logits, integer outputs class ids), ``logits``,
  ``probabilities`` or ``class_ids``;
- ``num_classes``: the class count (needed for a class-id output without metadata).

A file with no normalisation in its metadata and none given (channel_order, mean, std, scale)
runs with Preprocess's defaults, and the model carries one warning that says so
(``model.warnings``).
"""

import dataclasses

from semseg_ros.core.models.base import ModelError
from semseg_ros.core.models.card import OUTPUT_KINDS, preprocess_from_dict, PREPROCESS_KEYS
import torch

FILE_OPTIONS = dict(dict.fromkeys(PREPROCESS_KEYS), output_kind='auto', num_classes=0)
# Keys without which the input's normalisation is a guess (the warning).
NORMALISATION_KEYS = ('channel_order', 'mean', 'std', 'scale')
DEFAULTS_TEXT = 'channel_order rgb, mean [0, 0, 0], std [1, 1, 1], scale 1/255 (x / 255)'


def resolve_preprocess(meta, options, path, fixed_size=None):
    """
    Return (Preprocess, source, warnings) for a model file.

    meta: the file's metadata mapping (our keys, or ones a backend derived from another
    tool's metadata); options: the backend options (keys of PREPROCESS_KEYS override meta);
    fixed_size: (width, height) the file is fixed to, if any. ``source`` says where the
    preprocessing came from: 'model.options', 'file metadata', both, or 'defaults'.
    """
    given = {k: options[k] for k in PREPROCESS_KEYS if options.get(k) is not None}
    preprocess_from_dict(given, 'model.options', required=())  # errors name the option
    from_file = {k: meta[k] for k in PREPROCESS_KEYS if meta.get(k) is not None}
    merged = dict(from_file)
    merged.update(given)
    pre = preprocess_from_dict(merged, f'{path}: preprocessing', required=())
    if fixed_size and pre.input_size != tuple(fixed_size):
        if 'input_size' in given:
            raise ModelError(f'{path}: the file is fixed to {fixed_size[0]}x{fixed_size[1]} '
                             f'input; model.options input_size {list(given["input_size"])} '
                             'cannot change that')
        pre = dataclasses.replace(pre, input_size=(int(fixed_size[0]), int(fixed_size[1])))
    if given and from_file:
        source = 'model.options over file metadata'
    elif given:
        source = 'model.options'
    elif from_file:
        source = 'file metadata'
    else:
        source = 'defaults'
    warnings = []
    if not any(k in merged for k in NORMALISATION_KEYS):
        size = '%dx%d' % pre.input_size if pre.input_size else 'each frame its own'
        warnings.append(
            f'{path} carries no preprocessing metadata and none was given (model.options or a '
            f'model card): assuming {DEFAULTS_TEXT}, input size {size}. A model trained with '
            'another channel order or normalisation then gives wrong labels without any '
            'error: give channel_order, mean, std and scale in model.options, or write a card '
            '(semseg-ros-model card FILE --mean ... --std ...; docs/MODELS.md)')
    return pre, source, warnings


def output_kind_option(options, backend):
    """Return the output_kind option, checked ('auto' when not given)."""
    kind = options.get('output_kind') or 'auto'
    if kind != 'auto' and kind not in OUTPUT_KINDS:
        raise ModelError(f'{backend} backend: output_kind {kind!r} is not one of auto, '
                         f'{", ".join(OUTPUT_KINDS)}')
    return kind


def num_classes_option(options, backend):
    """Return the num_classes option as an int (0 = not given), checked."""
    value = options.get('num_classes') or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelError(f'{backend} backend: num_classes must be a positive integer, '
                         f'not {value!r}')
    return value


def kind_of(dtype, shape, requested, path):
    """
    Return the output kind of an output of ``dtype`` and ``shape`` (None entries = dynamic).

    Integer outputs are class ids ((N, h, w) or (N, 1, h, w)); float outputs are logits
    unless ``requested`` says probabilities. A float output called class ids, or an integer
    one called logits, is an error that says what the file holds.
    """
    is_int = dtype is not None and not dtype.is_floating_point and dtype != torch.bool
    shape = tuple(shape) if shape is not None else None
    if is_int or dtype == torch.bool:
        if requested in ('logits', 'probabilities'):
            raise ModelError(f'{path}: the output is {dtype} {shape} (class ids, the argmax is '
                             f'inside the model), not {requested}; use output_kind class_ids')
        if shape is not None and not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)):
            raise ModelError(f'{path}: the output holds integers of shape {shape}; class ids '
                             'must be (N, H, W) or (N, 1, H, W)')
        return 'class_ids'
    if requested == 'class_ids':
        raise ModelError(f'{path}: output_kind class_ids, but the output is {dtype} {shape} '
                         '(floats: logits or probabilities)')
    if shape is not None and len(shape) != 4:
        raise ModelError(f'{path}: the output has shape {shape}; expected (N, C, H, W) logits '
                         'or probabilities, or (N, H, W) integer class ids')
    return 'probabilities' if requested == 'probabilities' else 'logits'


def class_count(kind, channels, options_count, meta_count, path):
    """
    Return the class count: the option, else the metadata, else the output channels.

    A class-id output has no channel dimension to count, so it needs the option or metadata.
    An option that contradicts the output's channels is an error.
    """
    if kind != 'class_ids' and channels and options_count and options_count != channels:
        raise ModelError(f'{path}: num_classes {options_count} given, but the model outputs '
                         f'{channels} channels')
    count = options_count or meta_count or (channels if kind != 'class_ids' else None)
    if not count:
        raise ModelError(f'{path}: the model outputs class ids, so its class count cannot be '
                         'read from the output: give num_classes in model.options or a card')
    return int(count)


def describe(model, kind, channels, wanted_classes, meta, source, warnings, path):
    """Set a loaded file model's class count, output kind, preprocessing source and warnings."""
    model.num_classes = class_count(kind, channels, wanted_classes, meta.get('num_classes'),
                                    path)
    model.output_kind = kind
    model.preprocess_source = source
    model.warnings = tuple(warnings)
    return model

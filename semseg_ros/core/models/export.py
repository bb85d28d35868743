"""
torch.export backend: ``.pt2`` archives saved with ``torch.export.save``.

Metadata: ``torch.export.save`` takes extra files, so ``save`` below stores ours inside the
archive as ``semseg_ros.yaml`` (the keys of the TorchScript backend: num_classes, class_set,
channel_order, mean, std, scale, input_size, size_divisor). Archives without it work too:
the class count comes from the program's output shape (or one probe run) and the defaults of
Preprocess apply (RGB, x / 255), with a warning on the model. The preprocessing keys, the
output kind and the class count can be given as options (see ``fileopts``), overriding the
file; an integer (N, h, w) output is taken as class ids.

Shapes: a program exported with a static height and width runs only at that size, which then
becomes the model's input size; one exported with a static batch size is fed in chunks of
that size. Export with dynamic dimensions (``save(..., dynamic=True)``, the default) to run
frames at their own size and batch cameras freely.

An exported program is frozen in the mode it was exported in (eval); constants it created on
a device during export stay on that device, so export on the device you deploy to or on the
CPU with device-free code.
"""

import dataclasses
import os

from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.card import save_card
from semseg_ros.core.models.common import dump_metadata, first_output, META_FILE
from semseg_ros.core.models.common import parse_metadata, run_in_chunks, static_dims
from semseg_ros.core.models.fileopts import describe, FILE_OPTIONS, kind_of
from semseg_ros.core.models.fileopts import num_classes_option, output_kind_option
from semseg_ros.core.models.fileopts import resolve_preprocess
from semseg_ros.core.models.registry import check_options
import torch

DEFAULTS = dict(FILE_OPTIONS, weights='', download=True)


class ExportedModel(SegmentationModel):
    """An exported program as a SegmentationModel."""

    def __init__(self, module, num_classes, preprocess, class_set=None, name='model',
                 batch_size=None):
        super().__init__()
        self.module = module
        self.num_classes = int(num_classes)
        self.preprocess = preprocess
        self.class_set = class_set
        self.name = name
        self.batch_size = batch_size

    def train(self, mode=True):
        """Set the mode flag only: an exported program cannot switch between train and eval."""
        self.training = bool(mode)
        return self

    def forward(self, batch):
        """Run the program (in chunks when it was exported with a fixed batch size)."""
        return run_in_chunks(lambda x: first_output(self.module(x)), batch, self.batch_size)


def save(module, path, num_classes, preprocess=Preprocess(), class_set=None, dynamic=True,
         example_size=None, card=False, provenance=None):
    """
    Export a module with ``torch.export`` and save it with its semseg_ros metadata.

    dynamic: batch, height and width are dynamic; otherwise everything is fixed to one frame
    of ``example_size`` (width, height; default preprocess.input_size, else 64 x 64 rounded
    up to the size divisor), which then becomes the model's input size. card: True writes a
    model card beside the file (a path: there), with ``provenance``; returns its path or None.
    """
    div = max(1, int(preprocess.size_divisor))
    w, h = example_size or preprocess.input_size or (64, 64)
    w, h = -(-int(w) // div) * div, -(-int(h) // div) * div
    module = module.eval()
    if dynamic:
        auto = torch.export.Dim.AUTO
        example = torch.zeros(2, 3, h, w)
        shapes = ({0: auto, 2: auto, 3: auto},)
    else:
        example = torch.zeros(1, 3, h, w)
        shapes = None
        if not preprocess.input_size:
            preprocess = dataclasses.replace(preprocess, input_size=(w, h))
    program = torch.export.export(module, (example,), dynamic_shapes=shapes)
    torch.export.save(program, path, extra_files={
        META_FILE: dump_metadata(num_classes, preprocess, class_set)})
    return save_card(card, path, 'export', num_classes, preprocess, class_set, provenance)


def _user_input(program, path):
    """Return the placeholder node of the program's single user input."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        raise ModelError(f'{path}: the program takes {len(names)} inputs; a segmentation model '
                         'takes one image batch (N, 3, H, W)')
    for node in program.graph.nodes:
        if node.op == 'placeholder' and node.name == names[0]:
            return node
    raise ModelError(f'{path}: cannot find the program input {names[0]!r}')


def _shape(node):
    value = node.meta.get('val')
    shape = getattr(value, 'shape', None)
    return None if shape is None else tuple(shape)


def build(options):
    """
    Load a ``.pt2`` archive given by options['weights'].

    Options: ``weights`` (the file; required), the preprocessing keys, ``output_kind`` and
    ``num_classes`` (see ``fileopts``). ``download`` is accepted and ignored (a user file is
    never downloaded).
    """
    opts = check_options('export', options, DEFAULTS)
    requested = output_kind_option(opts, 'export')
    wanted_classes = num_classes_option(opts, 'export')
    path = os.path.expanduser(str(opts['weights'] or ''))
    if not path:
        raise ModelError('export backend: parameter model.weights must name the .pt2 file '
                         'saved with torch.export.save')
    if not os.path.isfile(path):
        raise ModelError(f'torch.export model file {path} does not exist')
    extra = {META_FILE: ''}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as exc:  # noqa: B902 - torch raises many types for bad archives
        raise ModelError(f'{path}: not a loadable torch.export archive: '
                         f'{type(exc).__name__}: {str(exc)[:300]}') from None
    meta, _ = parse_metadata(extra.get(META_FILE) or '', path)
    in_shape = _shape(_user_input(program, path))
    if in_shape is not None and len(in_shape) != 4:
        raise ModelError(f'{path}: the program input has shape {in_shape}; expected (N, 3, H, W)')
    dims = static_dims(in_shape) if in_shape else (None,) * 4
    if dims[1] not in (None, 3):
        raise ModelError(f'{path}: the program takes {dims[1]} channels; expected 3')
    fixed = (dims[3], dims[2]) if dims[2] and dims[3] else None
    preprocess, source, warnings = resolve_preprocess(meta, opts, path, fixed)
    module = program.module()
    model = ExportedModel(module, 1, preprocess, meta.get('class_set'),
                          os.path.splitext(os.path.basename(path))[0], dims[0])
    dtype, shape = _output(program)
    shape = static_dims(shape) if shape else None
    kind = kind_of(dtype, shape, requested if requested != 'auto' else meta.get('output_kind'),
                   path)
    channels = None
    if kind != 'class_ids':
        channels = shape[1] if shape else None
        if not channels and not meta.get('num_classes') and not wanted_classes:
            channels = _probe(model, dims, preprocess, path)
    return describe(model, kind, channels, wanted_classes, meta, source, warnings, path)


def _output(program):
    """Return (dtype, shape) of the program's first output (None, None when unknown)."""
    for node in program.graph.nodes:
        if node.op == 'output':
            outs = node.args[0]
            first = outs[0] if isinstance(outs, (tuple, list)) and outs else outs
            value = first.meta.get('val') if hasattr(first, 'meta') else None
            return getattr(value, 'dtype', None), _shape(first) if value is not None else None
    return None, None


def _probe(model, dims, preprocess, path):
    div = max(1, int(preprocess.size_divisor))
    h, w = dims[2] or 64 * div, dims[3] or 64 * div
    try:
        with torch.inference_mode():
            out = model(torch.zeros(dims[0] or 1, 3, h, w))
    except Exception as exc:  # noqa: B902 - any failure of the user's program
        raise ModelError(f'{path}: a probe run at {w}x{h} failed: {exc}') from None
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ModelError(f'{path}: the model must return (N, C, H, W) logits')
    return int(out.shape[1])

"""
ONNX backend: any ``.onnx`` file, run with onnxruntime.

Execution providers: on a CUDA device, TensorRT and CUDA when this onnxruntime build has them
(onnxruntime-gpu), then the CPU; on the CPU device, the CPU. The ``providers`` option names
them explicitly instead. A session is made for the device of the first batch it sees (the
engine's device), so building the model needs no device.

Input and output: the model's first input must be an image batch (N, 3, H, W) and its first
output (or the one named by ``output``) float logits or probabilities (N, C, h, w), or integer
class ids (N, h, w) from an argmax inside the model. Names, element types and shapes are read
from the file: a fixed height and width become the model's input size, a fixed batch size is
fed in chunks of that size, a fixed class count is taken as is. A YOLO instance-segmentation
export (detections + mask prototypes) is refused with a pointer to the ultralytics backend.

Metadata: ``save`` below exports a torch module and stores our metadata (num_classes,
class_set, channel_order, mean, std, scale, input_size, size_divisor) as the ONNX
metadata_props entry ``semseg_ros`` (YAML text). Ultralytics exports are read with their own
metadata (class names, stride; RGB x / 255). The preprocessing keys, the output kind and the
class count can also be given as options (see ``fileopts``), overriding the file; files with
none of these get the defaults of Preprocess (RGB, x / 255) and a warning.

Tensors stay on their device: on CUDA the input and output are bound to torch memory through
onnxruntime's io_binding; on the CPU the arrays are shared with numpy without copies.
"""

import ast
import os
import warnings

import numpy as np
from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.card import save_card
from semseg_ros.core.models.common import class_set_for, dump_metadata, parse_metadata
from semseg_ros.core.models.common import require, run_in_chunks, static_dims
from semseg_ros.core.models.fileopts import class_count, FILE_OPTIONS, kind_of
from semseg_ros.core.models.fileopts import num_classes_option, output_kind_option
from semseg_ros.core.models.fileopts import resolve_preprocess
from semseg_ros.core.models.registry import check_options
import torch

META_KEY = 'semseg_ros'
DEFAULTS = dict(FILE_OPTIONS, weights='', download=True, providers='auto', output='')
GPU_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
# onnxruntime element types the backend accepts: (numpy, torch).
FLOAT_TYPES = {
    'tensor(float)': (np.float32, torch.float32),
    'tensor(float16)': (np.float16, torch.float16),
    'tensor(double)': (np.float64, torch.float64),
}
# Integer outputs: class ids from an argmax inside the model.
INT_TYPES = {
    'tensor(int64)': (np.int64, torch.int64),
    'tensor(int32)': (np.int32, torch.int32),
    'tensor(int16)': (np.int16, torch.int16),
    'tensor(int8)': (np.int8, torch.int8),
    'tensor(uint8)': (np.uint8, torch.uint8),
    'tensor(uint16)': (np.uint16, torch.uint16),
    'tensor(bool)': (np.bool_, torch.bool),
}


def save(module, path, num_classes, preprocess=Preprocess(), class_set=None, dynamic=True,
         example_size=None, opset=17, card=False, provenance=None):
    """
    Export a module to ONNX (input 'input', output 'logits') with our metadata.

    dynamic: batch, height and width are dynamic axes; otherwise the file is fixed to one
    frame of ``example_size`` (width, height; default preprocess.input_size, else 64 x 64
    rounded up to the size divisor). Needs the ``onnx`` package. card: True writes a model
    card beside the file (a path: there), with ``provenance``; returns its path or None.
    """
    onnx = require('onnx', 'onnx')
    div = max(1, int(preprocess.size_divisor))
    w, h = example_size or preprocess.input_size or (64, 64)
    w, h = -(-int(w) // div) * div, -(-int(h) // div) * div
    axes = None
    if dynamic:
        axes = {'input': {0: 'batch', 2: 'height', 3: 'width'},
                'logits': {0: 'batch', 2: 'out_height', 3: 'out_width'}}
    module = module.eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated, but the torch.export-based one needs
        # the onnxscript package; both write the same operators for convolutional nets.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(module, (torch.zeros(1, 3, h, w),), str(path), input_names=['input'],
                          output_names=['logits'], dynamic_axes=axes, opset_version=opset,
                          dynamo=False)
    proto = onnx.load(str(path))
    for prop in list(proto.metadata_props):
        if prop.key == META_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key = META_KEY
    entry.value = dump_metadata(num_classes, preprocess, class_set)
    onnx.save(proto, str(path))
    return save_card(card, path, 'onnx', num_classes, preprocess, class_set, provenance)


def choose_providers(available, device, requested='auto'):
    """
    Return the execution providers (names or (name, options) pairs) for a device.

    requested: 'auto', or provider names (a list or a comma-separated string) that must all
    be available.
    """
    available = list(available)
    if requested and requested != 'auto':
        names = requested.split(',') if isinstance(requested, str) else list(requested)
        names = [str(n).strip() for n in names if str(n).strip()]
        missing = [n for n in names if n not in available]
        if missing:
            raise ModelError(f'onnx backend: execution provider(s) {", ".join(missing)} are not '
                             f'available; this onnxruntime has {", ".join(available)}')
        return names
    chosen = []
    if device.type == 'cuda':
        index = device.index or 0
        for name in GPU_PROVIDERS:
            if name in available:
                chosen.append((name, {'device_id': index}))
    chosen.append('CPUExecutionProvider')
    return chosen


class OnnxModel(SegmentationModel):
    """An onnxruntime session as a SegmentationModel (torch tensor in, torch tensor out)."""

    def __init__(self, ort, path, info, num_classes, preprocess, class_set=None, name='model',
                 providers='auto'):
        super().__init__()
        self._ort = ort
        self.path = path
        self.num_classes = int(num_classes)
        self.preprocess = preprocess
        self.class_set = class_set
        self.name = name
        self.requested = providers
        self.input_name, self.output_name = info['names']
        self.input_np, self.input_torch = info['input_type']
        self.output_np, self.output_torch = info['output_type']
        self.batch_size = info['batch_size']
        # Bind torch memory directly (None: on CUDA only).
        self.io_binding = None
        self._session = None
        self._device = None
        self._out_shapes = {}

    def session(self, device):
        """Return the session for a torch device, made on first use."""
        if self._session is None or self._device != device:
            providers = choose_providers(self._ort.get_available_providers(), device,
                                         self.requested)
            self._session = make_session(self._ort, self.path, providers)
            self._device = device
            self._out_shapes = {}
            active = self._session.get_providers()
            if device.type == 'cuda' and not any(p in active for p in GPU_PROVIDERS):
                warnings.warn(f'{self.path}: no CUDA execution provider in this onnxruntime '
                              '(install onnxruntime-gpu); the model runs on the CPU')
        return self._session

    @property
    def active_providers(self):
        """Return the providers of the current session ([] before the first run)."""
        return self._session.get_providers() if self._session is not None else []

    def forward(self, batch):
        """Run the model; the logits come back on the batch's device."""
        return run_in_chunks(self._run, batch, self.batch_size)

    def _run(self, batch):
        device = batch.device
        sess = self.session(device)
        x = batch.detach().to(self.input_torch).contiguous()
        bind = self.io_binding if self.io_binding is not None else device.type == 'cuda'
        if bind:
            return self._run_bound(sess, x)
        feed = {self.input_name: x.cpu().numpy()}
        out = sess.run([self.output_name], feed)[0]
        return torch.from_numpy(out).to(device)

    def _run_bound(self, sess, x):
        """Run with the input (and, once its shape is known, the output) in torch memory."""
        device = x.device
        kind = 'cuda' if device.type == 'cuda' else 'cpu'
        index = device.index or 0
        binding = sess.io_binding()
        binding.bind_input(self.input_name, kind, index, self.input_np, list(x.shape),
                           x.data_ptr())
        shape = self._out_shapes.get(tuple(x.shape))
        out = None
        if shape is None:
            binding.bind_output(self.output_name, kind, index)
        else:
            out = torch.empty(shape, dtype=self.output_torch, device=device)
            binding.bind_output(self.output_name, kind, index, self.output_np, list(shape),
                                out.data_ptr())
        if device.type == 'cuda':
            torch.cuda.current_stream(device).synchronize()
        sess.run_with_iobinding(binding)
        if out is None:
            host = binding.copy_outputs_to_cpu()[0]
            self._out_shapes[tuple(x.shape)] = tuple(host.shape)
            out = torch.from_numpy(np.ascontiguousarray(host)).to(device)
        return out


def make_session(ort, path, providers):
    """Create an onnxruntime session; failures raise ModelError naming the file."""
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # noqa: B902 - onnxruntime raises its own exception types
        raise ModelError(f'{path}: onnxruntime cannot load the model: '
                         f'{type(exc).__name__}: {str(exc)[:300]}') from None


def yolo_instance_head(outputs, meta_map):
    """
    Return a description when the outputs are those of a YOLO instance-segmentation head.

    Such a file has a (N, 4 + nc + 32, anchors) (or end-to-end (N, k, 6 + 32)) detection
    output and (N, 32, h, w) mask prototypes: no per-pixel class scores at all.
    """
    if str(meta_map.get('task', '')).strip() == 'segment':
        return "its Ultralytics metadata says task 'segment'"
    shapes = [(o.name, static_dims(o.shape) if o.shape else ()) for o in outputs]
    dets = [(n, d) for n, d in shapes if len(d) == 3]
    protos = [(n, d) for n, d in shapes if len(d) == 4 and d[1] == 32]
    if dets and protos:
        (dn, dd), (pn, pd) = dets[0], protos[0]
        return (f'output {dn!r} {list(dd)} holds boxes, class scores and 32 mask coefficients '
                f'per detection and output {pn!r} {list(pd)} the 32 mask prototypes')
    return None


def ultralytics_metadata(meta_map, path):
    """
    Return our metadata keys derived from an Ultralytics export's metadata ({} if none).

    Ultralytics models take RGB scaled to 0..1 at a multiple of the stride; ``names`` gives
    the classes (a Python dict literal, read with ast.literal_eval).
    """
    if 'ultralytics' not in str(meta_map.get('author', '')).lower() or 'names' not in meta_map:
        return {}
    try:
        raw = ast.literal_eval(meta_map['names'])
        stride = int(ast.literal_eval(str(meta_map.get('stride', '32'))))
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ModelError(f'{path}: unreadable Ultralytics metadata: {exc}') from None
    names = [raw[k] for k in sorted(raw)] if isinstance(raw, dict) else list(raw)
    return {'channel_order': 'rgb', 'mean': [0.0, 0.0, 0.0], 'std': [1.0, 1.0, 1.0],
            'scale': 1.0 / 255.0, 'size_divisor': max(1, stride), 'resize': 'letterbox',
            'names': names,
            'task': str(meta_map.get('task', ''))}


def _read_io(sess, path, output, requested='auto', meta_map=None):
    """Return the input/output names, types, static dims and output kind of a session."""
    inputs = sess.get_inputs()
    if not inputs:
        raise ModelError(f'{path}: the model has no inputs')
    if len(inputs) > 1:
        names = ', '.join(i.name for i in inputs)
        raise ModelError(f'{path}: the model takes {len(inputs)} inputs ({names}); a '
                         'segmentation model takes one image batch (N, 3, H, W)')
    inp = inputs[0]
    outputs = sess.get_outputs()
    yolo = yolo_instance_head(outputs, meta_map or {})
    if yolo:
        raise ModelError(
            f'{path} is a YOLO instance-segmentation export ({yolo}): it has no per-pixel '
            'class scores, so the onnx backend cannot run it. Run the Ultralytics .pt file '
            'with the ultralytics backend (model.backend: ultralytics, model.allow_pickle: '
            'true), which merges the instances into a class map, or export a semantic '
            '(YOLO -sem) model')
    names = [o.name for o in outputs]
    if output and output not in names:
        raise ModelError(f'{path}: no output named {output!r}; outputs: {", ".join(names)}')
    out = outputs[names.index(output) if output else 0]
    in_dims = static_dims(inp.shape) if inp.shape else (None,) * 4
    out_dims = static_dims(out.shape) if out.shape else None
    if len(in_dims) != 4 or in_dims[1] not in (None, 3):
        raise ModelError(f'{path}: input {inp.name!r} has shape {inp.shape}; expected '
                         '(N, 3, H, W)')
    if inp.type not in FLOAT_TYPES:
        raise ModelError(f'{path}: input {inp.name!r} is {inp.type}; expected a float tensor')
    types = dict(FLOAT_TYPES, **INT_TYPES)
    if out.type not in types:
        raise ModelError(f'{path}: output {out.name!r} is {out.type} {out.shape}; expected '
                         'float logits or probabilities (N, C, H, W) or integer class ids '
                         '(N, H, W)')
    kind = kind_of(types[out.type][1], out_dims, requested, f'{path}: output {out.name!r}')
    if kind != 'class_ids' and out_dims is None:
        out_dims = (None,) * 4
    return {'names': (inp.name, out.name), 'input_type': FLOAT_TYPES[inp.type],
            'output_type': types[out.type], 'batch_size': in_dims[0],
            'in_dims': in_dims, 'out_dims': out_dims, 'kind': kind}


def build(options):
    """
    Load an ONNX file given by options['weights'].

    Options: ``weights`` (the .onnx file; required), ``providers`` ('auto' or provider names),
    ``output`` (output name; '' = the first), the preprocessing keys, ``output_kind`` and
    ``num_classes`` (see ``fileopts``). ``download`` is accepted and ignored. Ultralytics
    exports (YOLO -sem: a class map per image) are read with their own metadata.
    """
    opts = check_options('onnx', options, DEFAULTS)
    requested = output_kind_option(opts, 'onnx')
    wanted_classes = num_classes_option(opts, 'onnx')
    path = os.path.expanduser(str(opts['weights'] or ''))
    if not path:
        raise ModelError('onnx backend: parameter model.weights must name the .onnx file')
    if not os.path.isfile(path):
        raise ModelError(f'ONNX model file {path} does not exist')
    ort = require('onnxruntime', 'onnx')
    cpu = torch.device('cpu')
    sess = make_session(ort, path, choose_providers(ort.get_available_providers(), cpu,
                                                    opts['providers']))
    meta_map = sess.get_modelmeta().custom_metadata_map
    meta, _ = parse_metadata(meta_map.get(META_KEY, ''), path)
    ultra = {} if meta else ultralytics_metadata(meta_map, path)
    if ultra:
        meta = dict(ultra)
    info = _read_io(sess, path, opts['output'] or '', requested, meta_map)
    _, _, h, w = info['in_dims']
    preprocess, source, warnings = resolve_preprocess(meta, opts, path,
                                                      (w, h) if h and w else None)
    name = os.path.splitext(os.path.basename(path))[0]
    model = OnnxModel(ort, path, info, 1, preprocess, meta.get('class_set'), name,
                      opts['providers'])
    model._session, model._device = sess, cpu
    kind = info['kind']
    meta_count = meta.get('num_classes')
    if ultra:
        names = ultra['names']
        if len(names) == 1:  # a one-class export emits 0/1: background and the class
            names = ['background'] + names
        meta_count = len(names)
        model.class_set, model.classes = class_set_for(names, name, f'{path} (names)')
    channels = None
    if kind != 'class_ids':
        channels = info['out_dims'][1]
        if not channels and not meta_count and not wanted_classes:
            div = max(1, int(preprocess.size_divisor))
            probe = torch.zeros(info['batch_size'] or 1, 3, h or 64 * div, w or 64 * div)
            try:
                channels = int(model(probe).shape[1])
            except Exception as exc:  # noqa: B902 - any failure of the user's model
                raise ModelError(f'{path}: a probe run failed: {exc}') from None
    model.num_classes = class_count(kind, channels, wanted_classes, meta_count, path)
    model.output_kind = kind
    model.preprocess_source = 'Ultralytics metadata' if ultra and source == 'file metadata' \
        else source
    model.warnings = tuple(warnings)
    return model

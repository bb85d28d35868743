"""
ONNX backend: any ``.onnx`` file, run with onnxruntime.

Execution providers: on a CUDA device, TensorRT and CUDA when this onnxruntime build has them
(onnxruntime-gpu), then the CPU; on the CPU device, the CPU. The ``providers`` option names
them explicitly instead. A session is made for the device of the first batch it sees (the
engine's device), so building the model needs no device.

Input and output: the model's first input must be an image batch (N, 3, H, W) and its first
output (or the one named by ``output``) float logits (N, C, h, w). Names, element types and
shapes are read from the file: a fixed height and width become the model's input size, a
fixed batch size is fed in chunks of that size, a fixed class count is taken as is.

Metadata: ``save`` below exports a torch module and stores our metadata (num_classes,
class_set, channel_order, mean, std, scale, input_size, size_divisor) as the ONNX
metadata_props entry ``semseg_ros`` (YAML text). Files without it get the defaults of
Preprocess (RGB, x / 255).

Tensors stay on their device: on CUDA the input and output are bound to torch memory through
onnxruntime's io_binding; on the CPU the arrays are shared with numpy without copies.
"""

import os
import warnings

import numpy as np
from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.common import dump_metadata, parse_metadata, require
from semseg_ros.core.models.common import run_in_chunks, static_dims
from semseg_ros.core.models.registry import check_options
import torch

META_KEY = 'semseg_ros'
DEFAULTS = {'weights': '', 'download': True, 'providers': 'auto', 'output': ''}
GPU_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
# onnxruntime element types the backend accepts: (numpy, torch).
FLOAT_TYPES = {
    'tensor(float)': (np.float32, torch.float32),
    'tensor(float16)': (np.float16, torch.float16),
    'tensor(double)': (np.float64, torch.float64),
}


def save(module, path, num_classes, preprocess=Preprocess(), class_set=None, dynamic=True,
         example_size=None, opset=17):
    """
    Export a module to ONNX (input 'input', output 'logits') with our metadata.

    dynamic: batch, height and width are dynamic axes; otherwise the file is fixed to one
    frame of ``example_size`` (width, height; default preprocess.input_size, else 64 x 64
    rounded up to the size divisor). Needs the ``onnx`` package.
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


def _read_io(sess, path, output):
    """Return the input/output names, types and static dims of a session."""
    inputs = sess.get_inputs()
    if not inputs:
        raise ModelError(f'{path}: the model has no inputs')
    if len(inputs) > 1:
        names = ', '.join(i.name for i in inputs)
        raise ModelError(f'{path}: the model takes {len(inputs)} inputs ({names}); a '
                         'segmentation model takes one image batch (N, 3, H, W)')
    inp = inputs[0]
    outputs = sess.get_outputs()
    names = [o.name for o in outputs]
    if output and output not in names:
        raise ModelError(f'{path}: no output named {output!r}; outputs: {", ".join(names)}')
    out = outputs[names.index(output) if output else 0]
    in_dims = static_dims(inp.shape) if inp.shape else (None,) * 4
    out_dims = static_dims(out.shape) if out.shape else (None,) * 4
    if len(in_dims) != 4 or in_dims[1] not in (None, 3):
        raise ModelError(f'{path}: input {inp.name!r} has shape {inp.shape}; expected '
                         '(N, 3, H, W)')
    if inp.type not in FLOAT_TYPES:
        raise ModelError(f'{path}: input {inp.name!r} is {inp.type}; expected a float tensor')
    if out.type not in FLOAT_TYPES or len(out_dims) != 4:
        raise ModelError(f'{path}: output {out.name!r} is {out.type} {out.shape}; expected float '
                         'logits (N, C, H, W) (export the logits, not the argmax)')
    return {'names': (inp.name, out.name), 'input_type': FLOAT_TYPES[inp.type],
            'output_type': FLOAT_TYPES[out.type], 'batch_size': in_dims[0],
            'in_dims': in_dims, 'out_dims': out_dims}


def build(options):
    """
    Load an ONNX file given by options['weights'].

    Options: ``weights`` (the .onnx file; required), ``providers`` ('auto' or provider names),
    ``output`` (output name; '' = the first). ``download`` is accepted and ignored.
    """
    opts = check_options('onnx', options, DEFAULTS)
    path = os.path.expanduser(str(opts['weights'] or ''))
    if not path:
        raise ModelError('onnx backend: parameter model.weights must name the .onnx file')
    if not os.path.isfile(path):
        raise ModelError(f'ONNX model file {path} does not exist')
    ort = require('onnxruntime', 'onnx')
    cpu = torch.device('cpu')
    sess = make_session(ort, path, choose_providers(ort.get_available_providers(), cpu,
                                                    opts['providers']))
    info = _read_io(sess, path, opts['output'] or '')
    meta_text = sess.get_modelmeta().custom_metadata_map.get(META_KEY, '')
    meta, preprocess = parse_metadata(meta_text, path)
    _, _, h, w = info['in_dims']
    if h and w and preprocess.input_size != (w, h):
        preprocess = Preprocess(preprocess.channel_order, preprocess.mean, preprocess.std,
                                preprocess.scale, (w, h), preprocess.size_divisor)
    name = os.path.splitext(os.path.basename(path))[0]
    model = OnnxModel(ort, path, info, 1, preprocess, meta.get('class_set'), name,
                      opts['providers'])
    model._session, model._device = sess, cpu
    num_classes = info['out_dims'][1] or meta.get('num_classes')
    if not num_classes:
        div = max(1, int(preprocess.size_divisor))
        probe = torch.zeros(info['batch_size'] or 1, 3, h or 64 * div, w or 64 * div)
        try:
            num_classes = int(model(probe).shape[1])
        except Exception as exc:  # noqa: B902 - any failure of the user's model
            raise ModelError(f'{path}: a probe run failed: {exc}') from None
    model.num_classes = int(num_classes)
    return model

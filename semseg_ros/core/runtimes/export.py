"""
Export a torch model to ONNX once, keep it in the cache folder, and check it against torch.

The file's key is a hash of what decides its content: the module tree and its weights, the
entry point (``forward`` or ``logits``), the input height and width, the opset and the
versions of torch and onnx. Beside each file a JSON record keeps the parity figures measured
per runtime (name and version): the labels of the runtime against torch's on one sample
frame. A runtime is used only where at least ``PARITY_MIN`` of the labels agree.
"""

import hashlib
import json
import os
import platform
import re
import statistics
import tempfile
import time
import warnings

from semseg_ros.core.models.common import first_output
from semseg_ros.core.runtimes.base import ExportError
import torch
import torch.nn.functional as F

OPSET = 17
# Bump when the export itself changes (names, axes): old cache files are then not used.
FORMAT = 1
PARITY_MIN = 0.999
SUBFOLDER = 'runtimes'


def weights_digest(module):
    """Return the sha256 (hex) of a module's tree (module types) and its state dict."""
    digest = hashlib.sha256()
    for name, sub in module.named_modules():
        kind = getattr(sub, 'original_name', None) or type(sub).__qualname__
        digest.update(f'{name}:{type(sub).__module__}.{kind}\n'.encode())
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to('cpu').contiguous()
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)}\n'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def library_versions():
    """Return the versions that shape an exported file."""
    try:
        import onnx
        onnx_version = onnx.__version__
    except ImportError:
        onnx_version = 'none'
    return {'torch': torch.__version__, 'onnx': onnx_version}


def export_key(digest, entry, shape, opset=OPSET):
    """Return the cache key (hex): weights, entry, (height, width), opset, versions."""
    fields = {'format': FORMAT, 'weights': digest, 'entry': entry,
              'input': [int(shape[0]), int(shape[1])], 'opset': int(opset),
              **library_versions()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _paths(folder, stem):
    return os.path.join(folder, stem + '.onnx'), os.path.join(folder, stem + '.json')


def _safe(name):
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', str(name))[:40] or 'model'


def cache_paths(folder, name, entry, shape, key):
    """Return (onnx file, JSON record) paths of an export in the cache folder."""
    return _paths(folder, f'{_safe(name)}-{entry}-{int(shape[1])}x{int(shape[0])}-{key[:16]}')


def file_paths(folder, name, digest):
    """Return (stem file, JSON record) paths in the cache folder for a model's own ONNX file."""
    return _paths(folder, f'{_safe(name)}-file-{digest[:16]}')


class _Entry(torch.nn.Module):
    """The entry point of a model as a module of its own (what the exporter traces)."""

    def __init__(self, model, entry):
        super().__init__()
        self.model = model
        self.entry = entry

    def forward(self, batch):
        return first_output(getattr(self.model, self.entry)(batch))


def export(model, entry, sample, path, opset=OPSET):
    """
    Export ``model.<entry>`` for inputs shaped like ``sample`` (batch dynamic) to ``path``.

    The TorchScript-based exporter (``dynamo=False``) is used: it needs no extra package and
    writes the same operators as the newer one for convolutional networks. Written to a
    temporary file in the same folder first, so a reader never sees half a file. The model's
    train/eval state is kept. Any failure raises ExportError.
    """
    folder = os.path.dirname(os.path.abspath(path))
    script = getattr(model, 'module', model) if entry == 'forward' else None
    if isinstance(script, torch.jit.ScriptModule):
        # A TorchScript model (e.g. a trained model directory's model.ts) is exported from its
        # own graph: the exporter cannot trace a script module called from a wrapper. Its
        # first output is the logits, as ModuleModel.forward takes them.
        wrapper = script.eval()
    else:
        wrapper = _Entry(model, entry).eval()
    training = model.training
    fd, tmp = tempfile.mkstemp(prefix='.export.', suffix='.onnx', dir=folder)
    os.close(fd)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # deprecation and tracer warnings
            torch.onnx.export(
                wrapper, (sample.clone(),), tmp, input_names=['input'], output_names=['logits'],
                dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}},
                opset_version=int(opset), dynamo=False)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: B902 - the exporter raises many types
        text = str(exc).strip().splitlines()
        raise ExportError(f'ONNX export of {getattr(model, "name", "the model")}.{entry} '
                          f'failed: {type(exc).__name__}: {text[0][:300] if text else ""}'
                          ) from None
    finally:
        model.train(training)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_record(path):
    """Return the JSON record beside an export ({} when absent or unreadable)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path, record):
    """Write the JSON record atomically (best effort: a read-only cache keeps it in memory)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix='.record.', suffix='.json', dir=folder)
        with os.fdopen(fd, 'w') as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def sample_batch(preprocess, shape, device, seed=0):
    """
    Return a deterministic sample frame (1, 3, h, w), normalised as the engine does it.

    Smooth random colour fields (a coarse random image resized bilinearly) rather than blank
    or white noise: a network gives confident, varied labels on it, so the parity figure
    measures the runtime rather than ties between classes.
    """
    h, w = int(shape[0]), int(shape[1])
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=gen) * 255.0
    image = F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
    return ((image - mean) / std * preprocess.scale).to(device)


def parity(reference, candidate, batch):
    """
    Run both callables on ``batch``; return {agreement, max_abs_diff, seconds}.

    agreement: the share of pixels whose argmax label is the same (shapes must match).
    """
    start = time.perf_counter()
    with torch.inference_mode():
        ref = first_output(reference(batch)).float()
        out = candidate(batch).float()
    if tuple(ref.shape) != tuple(out.shape):
        return {'agreement': 0.0, 'max_abs_diff': float('inf'),
                'error': f'output shape {tuple(out.shape)} vs torch {tuple(ref.shape)}',
                'seconds': time.perf_counter() - start}
    same = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    diff = (ref - out).abs()
    finite = bool(torch.isfinite(out).all())
    return {'agreement': same if finite else 0.0,
            'max_abs_diff': diff.max().item() if finite else float('inf'),
            'seconds': time.perf_counter() - start}


def machine_tag(threads, versions):
    """Return a text naming this machine's CPU, core count, thread budget and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        pass
    libs = ' '.join(f'{k} {v}' for k, v in sorted(versions.items()))
    return f'{cpu}, {os.cpu_count()} cores, {int(threads)} threads, {libs}'


def race(functions, batch, rounds=2, runs=2):
    """
    Time each function on batch, alternating (one warm-up call each first).

    Return {name: median ms}. ``rounds`` x ``runs`` timed calls each; the functions take
    turns so that a change of the machine's load falls on all of them.
    """
    times = {name: [] for name in functions}
    with torch.inference_mode():
        for function in functions.values():
            function(batch)
        for _ in range(rounds):
            for name, function in functions.items():
                for _ in range(runs):
                    start = time.perf_counter()
                    function(batch)
                    times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}

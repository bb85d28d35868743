"""
ONNX Runtime adapter: an ``InferenceSession`` behind the call of a torch model.

CPU: the batch is shared with numpy (no copy), the output comes back as a torch tensor over
onnxruntime's array. CUDA and TensorRT: input and output stay in torch's CUDA memory through
io binding. The session uses the node's thread budget (intra-op threads = torch's, one
inter-op thread, sequential execution) and its pool does not spin after a run, so it leaves
the cores to torch's postprocessing (measured: benchmarks/engine_bench.py --runtimes).

TensorRT runs through onnxruntime's TensorrtExecutionProvider (onnxruntime-gpu with TensorRT):
its engines are cached in the cache folder, fp16 on request, and the first build, which takes
minutes, reports its progress.
"""

import os

import numpy as np
from semseg_ros.core.runtimes.base import Heartbeat, import_runtime, RuntimeSetupError
import torch

CPU = 'CPUExecutionProvider'
CUDA = 'CUDAExecutionProvider'
TENSORRT = 'TensorrtExecutionProvider'
# onnxruntime element types -> (numpy, torch).
TYPES = {
    'tensor(float)': (np.float32, torch.float32),
    'tensor(float16)': (np.float16, torch.float16),
    'tensor(double)': (np.float64, torch.float64),
}
# Spinning pool threads keep cores busy after each run, slowing torch's postprocessing on
# small machines.
ALLOW_SPINNING = '0'


def providers_for(ort, runtime, device, fp16=False, cache=''):
    """
    Return the execution providers (names or (name, options)) of a runtime on a device.

    A provider the runtime needs and this onnxruntime build lacks raises RuntimeSetupError.
    """
    have = ort.get_available_providers()
    if runtime == 'tensorrt':
        if device.type != 'cuda':
            raise RuntimeSetupError(
                f'model.runtime tensorrt needs a CUDA device, not {device}: set device to cuda '
                '(or model.runtime to auto)')
        if TENSORRT not in have:
            raise RuntimeSetupError(
                f'model.runtime tensorrt: this onnxruntime ({ort.__version__}) has no '
                f'{TENSORRT} (it has {", ".join(have)}); install onnxruntime-gpu with '
                'TensorRT, or set model.runtime to auto or torch')
        index = device.index or 0
        options = {'device_id': index, 'trt_fp16_enable': bool(fp16),
                   'trt_engine_cache_enable': True, 'trt_engine_cache_path': cache,
                   'trt_timing_cache_enable': True, 'trt_timing_cache_path': cache}
        chosen = [(TENSORRT, options)]
        if CUDA in have:
            chosen.append((CUDA, {'device_id': index}))
        return chosen + [CPU]
    if device.type == 'cuda':
        if CUDA not in have:
            raise RuntimeSetupError(
                f'model.runtime onnxruntime on {device}: this onnxruntime ({ort.__version__}) '
                f'has no {CUDA} (it has {", ".join(have)}); install onnxruntime-gpu, or use '
                'device cpu, or model.runtime torch')
        return [(CUDA, {'device_id': device.index or 0}), CPU]
    return [CPU]


class OrtRunner:
    """Run one ONNX file with onnxruntime: ``runner(batch)`` -> logits on the batch's device."""

    def __init__(self, path, device, threads, runtime='onnxruntime', fp16=False, cache='',
                 report=None):
        ort = import_runtime('tensorrt' if runtime == 'tensorrt' else 'onnxruntime')
        self.path = str(path)
        self.device = device
        providers = providers_for(ort, runtime, device, fp16, cache)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry('session.intra_op.allow_spinning', ALLOW_SPINNING)
        if runtime == 'tensorrt' and cache:
            os.makedirs(cache, exist_ok=True)
        try:
            if runtime == 'tensorrt' and report is not None:
                name = os.path.basename(self.path)
                with Heartbeat(report, f'TensorRT engine for {name} (cache {cache})'):
                    self.session = ort.InferenceSession(self.path, options, providers=providers)
            else:
                self.session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as exc:  # noqa: B902 - onnxruntime raises its own types
            raise RuntimeSetupError(f'onnxruntime cannot load {self.path}: {exc}') from None
        self.providers = self.session.get_providers()
        self.version = ort.__version__
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if inp.type not in TYPES or out.type not in TYPES:
            raise RuntimeSetupError(f'{self.path}: input {inp.type} / output {out.type}; '
                                    'float tensors expected')
        self.input_name, self.output_name = inp.name, out.name
        self.input_np, self.input_torch = TYPES[inp.type]
        self.output_np, self.output_torch = TYPES[out.type]
        self._out_shapes = {}
        # TensorRT builds an engine per input shape on its first run: that run reports progress.
        self._report = report if runtime == 'tensorrt' else None
        self._built = set()

    def __call__(self, batch):
        """Run the session on a (N, 3, H, W) tensor; return its first output as a tensor."""
        x = batch.detach().to(self.input_torch).contiguous()
        if x.device.type == 'cuda':
            if self._report is not None and tuple(x.shape) not in self._built:
                name = os.path.basename(self.path)
                with Heartbeat(self._report, f'TensorRT engine for {name} {tuple(x.shape)}'):
                    out = self._run_bound(x)
                self._built.add(tuple(x.shape))
                return out
            return self._run_bound(x)
        out = self.session.run([self.output_name], {self.input_name: x.numpy()})[0]
        return torch.from_numpy(out)

    def _run_bound(self, x):
        """Run with input and output in torch CUDA memory (the output shape learnt once)."""
        index = x.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, 'cuda', index, self.input_np, list(x.shape),
                           x.data_ptr())
        shape = self._out_shapes.get(tuple(x.shape))
        out = None
        if shape is None:
            binding.bind_output(self.output_name, 'cuda', index)
        else:
            out = torch.empty(shape, dtype=self.output_torch, device=x.device)
            binding.bind_output(self.output_name, 'cuda', index, self.output_np, list(shape),
                                out.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()
        self.session.run_with_iobinding(binding)
        if out is None:
            host = binding.copy_outputs_to_cpu()[0]
            self._out_shapes[tuple(x.shape)] = tuple(host.shape)
            out = torch.from_numpy(np.ascontiguousarray(host)).to(x.device)
        return out

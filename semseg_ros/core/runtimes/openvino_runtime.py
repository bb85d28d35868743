"""
OpenVINO adapter: ``core.compile_model`` of an ONNX file behind the call of a torch model.

CPU only here (OpenVINO's GPU plugin is for Intel GPUs). Compiled for latency: one stream,
the node's thread budget, and fp32 inference unless bf16 is asked for (on CPUs with bf16 units
OpenVINO would otherwise run in bf16 by default, which changed 1.6 % of ESPNetv2's labels on
the parity sample here). bf16 needs a CPU that computes in it (AVX512-BF16 or AMX;
``bf16_units``, checked where the runtime is chosen). Compiled models are cached in the
cache folder, so a restart does not compile again. Once the output
shape of an input shape is known, the output is written straight into a torch tensor kept for
that shape: a new one per call would land on fresh pages past glibc's 32 MiB mmap limit
(ESPNet 1280x720: 44 MB of logits, 11 000 page faults and 5-10 ms per frame). So the tensor a
call returns is valid until the next call with the same input shape.
"""

import functools
import os

from semseg_ros.core.runtimes.base import import_runtime, RuntimeSetupError
import torch


@functools.lru_cache(maxsize=1)
def bf16_units():
    """Return True when OpenVINO is installed and the CPU computes in bf16 natively."""
    try:
        ov = import_runtime('openvino')
        return 'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    except Exception:  # noqa: B902 - not installed, or a plugin that cannot say
        return False


class OpenVinoRunner:
    """Run one ONNX file with OpenVINO on the CPU: ``runner(batch)`` -> logits tensor."""

    def __init__(self, path, device, threads, cache='', bf16=False):
        ov = import_runtime('openvino')
        if device.type != 'cpu':
            raise RuntimeSetupError(
                f'model.runtime openvino runs on the CPU here, not on {device}: set device to '
                'cpu, or model.runtime to auto, torch or tensorrt')
        self.path = str(path)
        self.device = device
        self.version = ov.__version__
        self._ov = ov
        config = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1,
                  'INFERENCE_NUM_THREADS': int(threads),
                  'INFERENCE_PRECISION_HINT': 'bf16' if bf16 else 'f32'}
        if cache:
            os.makedirs(cache, exist_ok=True)
            config['CACHE_DIR'] = cache
        try:
            self.compiled = ov.Core().compile_model(self.path, 'CPU', config)
        except Exception as exc:  # noqa: B902 - OpenVINO raises its own types
            raise RuntimeSetupError(f'OpenVINO cannot compile {self.path}: {exc}') from None
        self.providers = ['CPU']
        types = {ov.Type.f32: torch.float32, ov.Type.f16: torch.float16}
        self.input_torch = types.get(self.compiled.input(0).get_element_type(), torch.float32)
        # Written into torch memory only when the output is f32; else copied out.
        self._direct = self.compiled.output(0).get_element_type() == ov.Type.f32
        # Input shape -> (infer request, its output tensor or None). One request per shape:
        # a request whose output is a tensor of one shape cannot run another batch size.
        self._slots = {}

    def __call__(self, batch):
        """Run the compiled model on a (N, 3, H, W) float tensor; return its first output."""
        x = batch.detach().to('cpu', self.input_torch).contiguous()
        key = tuple(x.shape)
        request, out = self._slots.get(key) or (self.compiled.create_infer_request(), None)
        request.set_input_tensor(0, self._ov.Tensor(x.numpy(), shared_memory=True))
        request.infer()
        if out is not None:
            return out
        out = torch.from_numpy(request.get_output_tensor(0).data.copy())
        if self._direct:
            # From now on the request writes into this tensor.
            request.set_output_tensor(0, self._ov.Tensor(out.numpy(), shared_memory=True))
        self._slots[key] = (request, out if self._direct else None)
        return out

"""Runtimes: selection, the ONNX export cache, parity checks and fallbacks (no ROS graph)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.core import settings as cfg
from semseg_ros.core.engine import Frame, Segmenter
from semseg_ros.core.models.base import Preprocess, SegmentationModel
from semseg_ros.core.models.espnetv2 import adaptive_avg_pool, ESPNetv2, exportable_avg_pool
from semseg_ros.core.runtimes import base, prepare, Reporter, RuntimeSetupError
from semseg_ros.core.runtimes import choose
from semseg_ros.core.runtimes import export as onnx_export
from semseg_ros.core.runtimes.onnx_runtime import OrtRunner, providers_for
import torch
from torch import nn
import torch.nn.functional as F

pytest.importorskip('onnxruntime')


class Tiny(SegmentationModel):
    """Four classes from two convolutions; logits at half the input size."""

    num_classes = 4
    preprocess = Preprocess(size_divisor=4)
    name = 'tiny'

    def __init__(self, seed=0, flip_in_export=False, fail_export=False):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 4, 3, padding=1))
        self.flip_in_export = flip_in_export
        self.fail_export = fail_export

    def logits(self, batch):
        y = self.body(batch)
        if torch.onnx.is_in_onnx_export():
            if self.fail_export:
                raise RuntimeError('this module cannot be exported')
            if self.flip_in_export:
                y = y.flip(1)  # the export computes other labels than torch
        return y

    def forward(self, batch):
        return F.interpolate(self.logits(batch), size=batch.shape[2:], mode='bilinear',
                             align_corners=False)


def frames(sizes, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for w, h in sizes:
        coarse = rng.integers(0, 255, (h // 8, w // 8, 3)).astype(np.uint8)
        out.append(Frame(np.ascontiguousarray(np.kron(coarse, np.ones((8, 8, 1), np.uint8))),
                         'rgb'))
    return out


def labels(segmenter, batch):
    return [r['label'] for r in segmenter.process(batch, ('label',))]


class Log:
    def __init__(self):
        self.info, self.warnings = [], []

    def reporter(self):
        return Reporter(self.info.append, self.warnings.append)


def count_exports(monkeypatch):
    calls = []
    real = torch.onnx.export

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, 'export', counting)
    return calls


# Selection.
def test_auto_picks_onnxruntime_on_cpu_and_torch_elsewhere():
    model = Tiny()
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert choose.auto_runtime(model, cpu)[0] == 'onnxruntime'
    assert choose.auto_runtime(model, cuda)[0] == 'torch'
    assert choose.auto_runtime(model, cpu, compiled=True)[0] == 'torch'


@pytest.mark.parametrize('units, expected', [(True, 'openvino'), (False, 'torch')])
def test_auto_runs_bf16_on_openvino_only_with_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(choose, 'bf16_units', lambda: units)
    runtime, reason = choose.auto_runtime(Tiny(), torch.device('cpu'), precision='bf16')
    assert runtime == expected
    assert ('bf16 units' if units else 'autocast') in reason
    assert choose.auto_runtime(Tiny(), torch.device('cpu'), 'fp16')[0] == 'torch'


def test_auto_without_onnxruntime_runs_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import fails
    monkeypatch.setitem(sys.modules, 'openvino', None)
    runtime, reason = choose.auto_runtime(Tiny(), torch.device('cpu'))
    assert runtime == 'torch' and 'not installed' in reason


def fixed_race(monkeypatch, timings, module=choose):
    """Make a race (auto's unless module says) return fixed timings; return the raced names."""
    calls = []

    def race(functions, sample):
        calls.append(sorted(functions))
        return {name: timings[name] for name in functions}

    monkeypatch.setattr(module, 'race', race)
    return calls


def test_auto_runs_onnxruntime_with_torch_labels_and_says_so(cache, monkeypatch):
    calls = fixed_race(monkeypatch, {'torch': 2.0, 'onnxruntime': 1.0, 'openvino': 3.0})
    log = Log()
    model = Tiny()
    seg = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48),
                    runtime='auto', report=log.reporter())
    ref = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48))
    assert seg.runtime.runtime == 'onnxruntime' and ref.runtime.runtime == 'torch'
    assert seg.runtime.threads == torch.get_num_threads()
    summary = seg.runtime.summary()
    assert summary.startswith('onnxruntime (auto: fastest here (onnxruntime 1.0 ms, torch 2.0')
    assert '100.00 % equal' in summary
    assert len(calls) == 1 and 'torch' in calls[0] and 'onnxruntime' in calls[0]
    batch = frames([(64, 48), (100, 70)])
    for a, b in zip(labels(seg, batch), labels(ref, batch)):
        assert np.array_equal(a, b)
    assert any('exporting tiny.logits at 64x48' in line for line in log.info)
    assert not log.warnings


def test_auto_keeps_torch_where_it_is_fastest_and_races_once(cache, monkeypatch):
    calls = fixed_race(monkeypatch, {'torch': 1.0, 'onnxruntime': 2.0, 'openvino': 3.0})
    model = Tiny()
    choice = prepare(model, 'auto', 'cpu', (64, 48))
    assert choice.runtime == 'torch' and choice.model is model
    assert choice.reason.startswith('auto: fastest here (torch 1.0 ms')
    again = prepare(model, 'auto', 'cpu', (64, 48))
    assert again.runtime == 'torch' and len(calls) == 1, 'the timings were not kept'
    record = json.loads(next(cache.glob('*.json')).read_text())
    (timings,) = record['auto'].values()
    assert timings['torch'] == 1.0


def test_race_times_each_function_alternating():
    import time
    order = []

    def slow(batch):
        order.append('slow')
        time.sleep(0.004)

    def fast(batch):
        order.append('fast')

    timings = onnx_export.race({'slow': slow, 'fast': fast}, torch.zeros(1), rounds=2, runs=2)
    assert timings['slow'] >= 3.0 > timings['fast']
    assert order == ['slow', 'fast'] + ['slow', 'slow', 'fast', 'fast'] * 2


def test_setting_is_validated():
    assert cfg.from_values({}).runtime == 'auto'
    assert cfg.from_values({'model.runtime': 'openvino'}).runtime == 'openvino'
    with pytest.raises(cfg.SettingsError, match='model.runtime'):
        cfg.from_values({'model.runtime': 'tensorflow'})


# Export cache.
def test_second_build_hits_the_cache_and_size_changes_the_key(cache, monkeypatch):
    calls = count_exports(monkeypatch)
    model = Tiny()
    first = prepare(model, 'onnxruntime', 'cpu', (64, 48))
    assert len(calls) == 1 and first.runtime == 'onnxruntime'
    files = sorted(p.name for p in cache.glob('*.onnx'))
    assert files == [f for f in files if f.startswith('tiny-logits-64x48-')] and len(files) == 1
    log = Log()
    second = prepare(model, 'onnxruntime', 'cpu', (64, 48), report=log.reporter())
    assert len(calls) == 1, 'the second build exported again'
    assert any('from the cache' in line for line in log.info)
    assert second.runtime == 'onnxruntime'
    prepare(model, 'onnxruntime', 'cpu', (96, 48))
    assert len(calls) == 2
    assert len(list(cache.glob('*.onnx'))) == 2
    record = json.loads(next(cache.glob('tiny-logits-96x48-*.json')).read_text())
    assert record['input'] == [48, 96]
    assert any(tag.startswith('onnxruntime ') for tag in record['parity'])


def test_key_follows_weights_size_entry_and_opset():
    digest = onnx_export.weights_digest(Tiny(seed=0))
    assert digest == onnx_export.weights_digest(Tiny(seed=0))
    assert digest != onnx_export.weights_digest(Tiny(seed=1))
    key = onnx_export.export_key(digest, 'logits', (48, 64))
    assert key == onnx_export.export_key(digest, 'logits', (48, 64))
    assert key != onnx_export.export_key(digest, 'logits', (64, 48))
    assert key != onnx_export.export_key(digest, 'forward', (48, 64))
    assert key != onnx_export.export_key(digest, 'logits', (48, 64), opset=18)


def test_sizes_exported_on_first_use_when_the_model_has_no_size(cache):
    model = Tiny()
    seg = Segmenter(model, class_sets.generic(4), device='cpu', runtime='onnxruntime',
                    warmup=False)
    ref = Segmenter(model, class_sets.generic(4), device='cpu', warmup=False)
    batch = frames([(64, 48), (80, 56)])
    for a, b in zip(labels(seg, batch), labels(ref, batch)):
        assert np.array_equal(a, b)
    assert len(list(cache.glob('*.onnx'))) == 2


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
@pytest.mark.parametrize('max_batch', [3, 1])
def test_several_frames_run_on_the_export(cache, runtime, max_batch):
    # max_batch 1: three forwards of one shape in one call; OpenVINO writes each into the
    # same output tensor, so each frame's logits must be used before the next forward.
    if not base.available(runtime):
        pytest.skip(f'{runtime} is not installed')
    model = Tiny()
    seg = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48),
                    runtime=runtime, max_batch=max_batch)
    ref = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48),
                    max_batch=max_batch)
    batch = frames([(64, 48)] * 3, seed=5)
    for _ in range(2):  # the second call runs on the kept output tensor
        got, want = labels(seg, batch), labels(ref, batch)
        assert not np.array_equal(want[0], want[2])
        for a, b in zip(got, want):
            assert (a == b).mean() >= 0.999


# Parity check and fallbacks.
def test_export_that_differs_from_torch_falls_back_to_torch_with_a_warning(cache):
    model = Tiny(flip_in_export=True)
    with pytest.warns(RuntimeWarning, match='parity check failed'):
        choice = prepare(model, 'auto', 'cpu', (64, 48))
    assert choice.runtime == 'torch' and choice.model is model
    assert 'onnxruntime fell back' in choice.reason
    record = json.loads(next(cache.glob('*.json')).read_text())
    assert record['parity']  # one entry per runtime auto tried (onnxruntime, openvino)
    for figures in record['parity'].values():
        assert figures['agreement'] < onnx_export.PARITY_MIN
    # The failed figure is remembered: the next build falls back without a new check.
    log = Log()
    again = prepare(model, 'onnxruntime', 'cpu', (64, 48), report=log.reporter())
    assert again.runtime == 'torch' and len(log.warnings) == 1
    assert 'labels equal on' in log.warnings[0]


def test_export_failure_falls_back_to_torch(cache):
    model = Tiny(fail_export=True)
    log = Log()
    seg = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48),
                    runtime='onnxruntime', report=log.reporter())
    assert seg.runtime.runtime == 'torch'
    assert 'export' in seg.runtime.reason and 'cannot be exported' in log.warnings[0]
    assert seg.model is model
    assert not list(cache.glob('*.onnx'))


def test_fallback_for_one_frame_size_shows_in_the_summary(cache):
    model = Tiny(flip_in_export=True)
    log = Log()
    seg = Segmenter(model, class_sets.generic(4), device='cpu', runtime='onnxruntime',
                    warmup=False, report=log.reporter())
    ref = Segmenter(model, class_sets.generic(4), device='cpu', warmup=False)
    batch = frames([(64, 48)])
    assert np.array_equal(labels(seg, batch)[0], labels(ref, batch)[0])
    assert 'torch at 64x48' in seg.runtime.summary()


# Runtimes agree with torch.
@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_runtime_labels_agree_with_torch(cache, runtime):
    if not base.available(runtime):
        pytest.skip(f'{runtime} is not installed')
    model = Tiny(seed=3)
    seg = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(96, 64),
                    runtime=runtime)
    ref = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(96, 64))
    assert seg.runtime.runtime == runtime
    batch = frames([(96, 64), (120, 90)], seed=7)
    for a, b in zip(labels(seg, batch), labels(ref, batch)):
        assert (a == b).mean() >= 0.999


def test_onnx_backend_runs_on_the_runtimes(cache, tmp_path):
    pytest.importorskip('onnx')  # save() writes our metadata with it
    from semseg_ros.core.models.onnx import build, save
    path = tmp_path / 'tiny.onnx'
    save(Tiny(seed=4), path, 4, Tiny.preprocess, example_size=(64, 48))
    model = build({'weights': str(path)})
    ref = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48))
    batch = frames([(64, 48)], seed=2)
    expected = labels(ref, batch)[0]
    with pytest.raises(RuntimeSetupError, match='cannot run an ONNX model'):
        prepare(model, 'torch', 'cpu', (64, 48))
    for runtime in ('auto', 'onnxruntime', 'openvino'):
        if runtime == 'openvino' and not base.available('openvino'):
            continue
        seg = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48),
                        runtime=runtime)
        assert seg.runtime.runtime == ('onnxruntime' if runtime == 'auto' else runtime)
        assert (labels(seg, batch)[0] == expected).mean() >= 0.999


def test_espnetv2_pooling_exports_with_torch_results():
    torch.manual_seed(0)
    for shape, size in (((1, 4, 48, 96), (32, 64)), ((2, 3, 17, 23), (5, 9)),
                        ((1, 2, 32, 64), (16, 32)), ((1, 2, 8, 10), (5, 5))):
        x = torch.randn(*shape)
        expected = F.adaptive_avg_pool2d(x, size)
        assert torch.allclose(exportable_avg_pool(x, size), expected, atol=1e-6)
        assert torch.equal(adaptive_avg_pool(x, size), expected)  # eager: torch's kernel


def test_espnetv2_exports_with_identical_labels(cache):
    torch.manual_seed(0)
    model = ESPNetv2().eval()
    with torch.no_grad():  # trained-like statistics so that the random net has varied labels
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.1, 0.1)
    choice = prepare(model, 'onnxruntime', 'cpu', (64, 32))
    assert choice.runtime == 'onnxruntime', choice.reason
    ((key, figures),) = choice.model.parity.items()
    assert key == ('logits', 32, 64) and figures['agreement'] == 1.0


# Missing runtimes and providers.
def test_missing_runtime_package_is_named_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, 'openvino', None)
    with pytest.raises(RuntimeSetupError, match='pip install openvino'):
        prepare(Tiny(), 'openvino', 'cpu', (64, 48))


def test_tensorrt_needs_cuda_and_its_provider():
    with pytest.raises(RuntimeSetupError, match='needs a CUDA device'):
        prepare(Tiny(), 'tensorrt', 'cpu', (64, 48))

    class FakeOrt:
        __version__ = '0.0'

        def __init__(self, providers):
            self.providers = providers

        def get_available_providers(self):
            return self.providers

    cuda = torch.device('cuda:1')
    with pytest.raises(RuntimeSetupError, match='no TensorrtExecutionProvider'):
        providers_for(FakeOrt(['CPUExecutionProvider']), 'tensorrt', cuda)
    with pytest.raises(RuntimeSetupError, match='no CUDAExecutionProvider'):
        providers_for(FakeOrt(['CPUExecutionProvider']), 'onnxruntime', cuda)
    chosen = providers_for(FakeOrt(['TensorrtExecutionProvider', 'CUDAExecutionProvider',
                                    'CPUExecutionProvider']), 'tensorrt', cuda, fp16=True,
                           cache='/c/tensorrt')
    name, options = chosen[0]
    assert name == 'TensorrtExecutionProvider' and options['device_id'] == 1
    assert options['trt_fp16_enable'] and options['trt_engine_cache_path'] == '/c/tensorrt'
    assert [p if isinstance(p, str) else p[0] for p in chosen[1:]] == [
        'CUDAExecutionProvider', 'CPUExecutionProvider']


def test_options_that_need_torch_are_refused_by_other_runtimes():
    with pytest.raises(RuntimeSetupError, match='precision fp16'):
        prepare(Tiny(), 'onnxruntime', 'cpu', (64, 48), precision='fp16')
    with pytest.raises(RuntimeSetupError, match='torch.compile'):
        prepare(Tiny(), 'onnxruntime', 'cpu', (64, 48), compiled=True)
    with pytest.raises(RuntimeSetupError, match='openvino runs on the CPU'):
        choose.check_request('openvino', Tiny(), torch.device('cuda'), 'fp32', False)


def test_bf16_on_openvino_is_refused_with_the_fix_where_it_cannot_run(monkeypatch, tmp_path):
    if not base.available('openvino'):
        pytest.skip('openvino is not installed')
    monkeypatch.setattr(choose, 'bf16_units', lambda: False)
    with pytest.raises(RuntimeSetupError, match='needs a CPU with bf16 units.*precision to fp32'):
        prepare(Tiny(), 'openvino', 'cpu', (64, 48), precision='bf16')
    pytest.importorskip('onnx')
    from semseg_ros.core.models.onnx import build, save
    path = tmp_path / 'tiny.onnx'
    save(Tiny(), path, 4, Tiny.preprocess, example_size=(64, 48))
    with pytest.raises(RuntimeSetupError, match='an onnx backend model has none'):
        prepare(build({'weights': str(path)}), 'openvino', 'cpu', (64, 48), precision='bf16')


def test_bf16_parity_is_measured_against_torch_bf16():
    from semseg_ros.core.runtimes.model import parity_min
    assert parity_min({'agreement': 1.0}) == onnx_export.PARITY_MIN
    assert parity_min({'agreement': 0.99, 'torch_bf16': 0.99}) == pytest.approx(0.985)
    assert parity_min({'agreement': 1.0, 'torch_bf16': 1.0}) == pytest.approx(0.995)


def bf16_here():
    from semseg_ros.core.runtimes.openvino_runtime import bf16_units
    if not bf16_units():
        pytest.skip('needs OpenVINO and a CPU with bf16 units (AVX512-BF16 or AMX)')


def test_bf16_runs_on_openvino_in_bf16_with_torch_labels(cache):
    bf16_here()
    model = Tiny(seed=5)
    log = Log()
    seg = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(96, 64),
                    precision='bf16', runtime='auto', report=log.reporter())
    assert seg.runtime.runtime == 'openvino', seg.runtime.reason
    assert 'bf16 units' in seg.runtime.reason and 'torch bf16 autocast' in seg.runtime.reason
    runner = next(iter(seg.model.runners.values()))
    assert 'bfloat16' in str(runner.compiled.get_property('INFERENCE_PRECISION_HINT'))
    record = json.loads(next(cache.glob('*.json')).read_text())
    (tag, figures), = record['parity'].items()
    assert tag.endswith('cpu bf16') and 0.9 <= figures['torch_bf16'] <= 1.0
    ref = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(96, 64))
    batch = frames([(96, 64), (120, 90)], seed=7)
    for a, b in zip(labels(seg, batch), labels(ref, batch)):
        assert (a == b).mean() >= 0.98
    assert not log.warnings


def test_bf16_export_that_differs_falls_back_to_torch_autocast(cache):
    bf16_here()
    model = Tiny(flip_in_export=True)
    log = Log()
    seg = Segmenter(model, class_sets.generic(4), device='cpu', input_size=(64, 48),
                    precision='bf16', runtime='openvino', report=log.reporter())
    assert seg.runtime.runtime == 'torch' and 'parity check failed' in seg.runtime.reason
    assert seg.model is model and seg.dtype == torch.bfloat16
    assert 'labels equal on' in log.warnings[0]


def test_heartbeat_reports_while_a_slow_step_runs():
    import time
    lines = []
    with base.Heartbeat(lines.append, 'TensorRT engine', period=0.02):
        time.sleep(0.1)
    assert lines[0] == 'TensorRT engine: started'
    assert any('still running' in line for line in lines[1:-1])
    assert lines[-1].startswith('TensorRT engine: done in')


def test_runtime_threads_follow_torch(cache):
    path = cache.parent / 'tiny.onnx'
    onnx_export.export(Tiny(), 'logits', torch.zeros(1, 3, 32, 32), str(path))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        runner = OrtRunner(path, torch.device('cpu'), base.thread_budget())
        options = runner.session.get_session_options()
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('env, first, expected', [
    ({}, 'semseg_ros.core.engine', '30000'),
    ({'GOMP_SPINCOUNT': '123'}, 'semseg_ros.core.engine', '123'),
    ({'OMP_WAIT_POLICY': 'active'}, 'semseg_ros.core.engine', None),
    ({}, 'torch', None),  # torch loaded first: libgomp has read its settings already
])
def test_openmp_spin_is_short_before_torch_loads(env, first, expected):
    # Long spins of torch's idle OpenMP workers slowed OpenVINO in the node (__init__.py).
    code = (f'import os, sys, {first}, semseg_ros; assert "torch" in sys.modules; '
            'print(os.environ.get("GOMP_SPINCOUNT"))')
    clean = {k: v for k, v in os.environ.items()
             if k not in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}
    out = subprocess.run([sys.executable, '-c', code], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == str(expected)


@pytest.mark.parametrize('first, warned', [('semseg_ros', False), ('torch', True)])
def test_torch_imported_first_is_warned_of_where_a_runtime_runs(first, warned, tmp_path):
    code = (f'import {first}, warnings, torch\n'
            'from semseg_ros.core import classes\n'
            'from semseg_ros.core.engine import Segmenter\n'
            'from semseg_ros.core.models.base import ModuleModel, Preprocess\n'
            'model = ModuleModel(torch.nn.Conv2d(3, 3, 1), 3, Preprocess(), name="tiny")\n'
            'with warnings.catch_warnings(record=True) as seen:\n'
            '    warnings.simplefilter("always")\n'
            '    for runtime in ("torch", "onnxruntime"):\n'
            '        Segmenter(model, classes.generic(3), device="cpu", runtime=runtime,\n'
            '                  input_size=(32, 24))\n'
            '        print(runtime, any("GOMP_SPINCOUNT=30000" in str(w.message) '
            'for w in seen))\n')
    clean = {k: v for k, v in os.environ.items()
             if k not in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}
    clean.update(SEMSEG_ROS_EXPORT_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, '-c', code], env=clean, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[-4:] == ['torch', 'False', 'onnxruntime', str(warned)]


# CUDA (skipped without a GPU; benchmarks/gpu_check.sh runs these on a GPU machine).
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('runtime, precision', [('auto', 'fp32'), ('torch', 'fp16'),
                                                ('onnxruntime', 'fp32'), ('tensorrt', 'fp32'),
                                                ('tensorrt', 'fp16')])
def test_cuda_runtimes_agree_with_the_cpu(cache, runtime, precision):
    import onnxruntime as ort
    needs = {'onnxruntime': 'CUDAExecutionProvider',
             'tensorrt': 'TensorrtExecutionProvider'}.get(runtime)
    ref = Segmenter(Tiny(seed=3), class_sets.generic(4), device='cpu', input_size=(96, 64))
    kwargs = {'device': 'cuda', 'input_size': (96, 64), 'runtime': runtime,
              'precision': precision}
    if needs and needs not in ort.get_available_providers():
        with pytest.raises(RuntimeSetupError, match=needs):
            Segmenter(Tiny(seed=3), class_sets.generic(4), **kwargs)
        pytest.skip(f'this onnxruntime has no {needs} (the error says so)')
    seg = Segmenter(Tiny(seed=3), class_sets.generic(4), **kwargs)
    assert seg.runtime.runtime == ('torch' if runtime == 'auto' else runtime), seg.runtime
    batch = frames([(96, 64), (120, 90)], seed=7)
    for a, b in zip(labels(seg, batch), labels(ref, batch)):
        assert (a == b).mean() >= (0.99 if precision == 'fp16' else 0.999)


def test_a_torchscript_model_exports_from_its_own_graph(cache, tmp_path):
    # A traced model (as a trained model directory holds) runs on the runtimes too: the
    # exporter cannot trace a script module through a wrapper, so its own graph is exported.
    from semseg_ros.core.models import create_model, torchscript
    import warnings
    model = Tiny().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(model, torch.zeros(1, 3, 48, 64), check_trace=False)
    torchscript.save(traced, str(tmp_path / 'tiny.ts'), num_classes=4,
                     preprocess=model.preprocess)
    loaded = create_model('torchscript', weights=str(tmp_path / 'tiny.ts'))
    log = Log()
    choice = prepare(loaded, 'onnxruntime', 'cpu', (64, 48), upsample='labels',
                     report=log.reporter())
    assert choice.runtime == 'onnxruntime' and not choice.fallbacks, choice.summary()
    assert 'labels 100.00 % equal' in choice.reason and not log.warnings
    batch = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        assert torch.equal(choice.model(batch).argmax(1), model(batch).argmax(1))

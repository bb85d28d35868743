"""Graph forms of an export: PReLU split gives the same bits, and the faster form runs."""

import json
import os

import numpy as np
import pytest
from semseg_ros.core.models.base import Preprocess, SegmentationModel
from semseg_ros.core.runtimes import export as onnx_export
from semseg_ros.core.runtimes import graph, prepare
from test_runtimes import fixed_race, Log
import torch
from torch import nn

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')


class PReluNet(SegmentationModel):
    """Five classes through per-channel and single-slope PReLUs (slopes of both signs)."""

    num_classes = 5
    preprocess = Preprocess(size_divisor=4)
    name = 'prelunet'

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.PReLU(),
                                  nn.Conv2d(8, 5, 1))
        with torch.no_grad():
            self.body[1].weight.copy_(torch.linspace(-1.0, 1.6, 8))
            self.body[3].weight.fill_(-0.3)

    def forward(self, batch):
        return self.body(batch)


def exported(tmp_path, model=None, shape=(32, 48)):
    model = model or PReluNet()
    sample = onnx_export.sample_batch(model.preprocess, shape, 'cpu')
    return onnx_export.export(model, 'forward', sample, str(tmp_path / 'net.onnx'))


def session(path):
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def test_prelu_split_gives_the_same_bits(tmp_path):
    path = exported(tmp_path)
    split = graph.write_form(path, graph.PRELU_SPLIT)
    assert split == graph.form_path(path, graph.PRELU_SPLIT) and split != path
    model = onnx.load(split)
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert 'PRelu' not in ops and ops.count('Min') == 2
    names = [node.name for node in model.graph.node]
    assert len(names) == len(set(names))
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 3.0, (2, 3, 32, 48)).astype(np.float32)
    x[:, :, :4] = 0.0  # zeros, as after a padding
    x[0, 0, 5, 5], x[0, 1, 6, 6] = np.inf, -1e30
    plain, fast = session(path), session(split)
    a, b = (s.run(None, {'input': x})[0] for s in (plain, fast))
    assert np.array_equal(a, b, equal_nan=True)
    assert np.isfinite(a).sum() < a.size  # the infinity reached the output


def test_a_graph_without_prelu_has_no_split_form(tmp_path):
    model = PReluNet()
    model.body[1], model.body[3] = nn.ReLU(), nn.ReLU()
    path = exported(tmp_path, model)
    assert graph.write_form(path, graph.PRELU_SPLIT) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ['net.onnx']
    assert graph.write_form(path, graph.AS_EXPORTED) == path


def test_an_input_of_unknown_type_is_left_as_prelu():
    from onnx import helper, TensorProto
    node = helper.make_node('PRelu', ['x', 's'], ['y'])
    model = helper.make_model(helper.make_graph(
        [node], 'g', [helper.make_tensor_value_info('x', TensorProto.UNDEFINED, None),
                      helper.make_tensor_value_info('s', TensorProto.UNDEFINED, None)],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)]))
    assert graph.split_prelu(model) == 0
    assert [n.op_type for n in model.graph.node] == ['PRelu']


def fixed_forms(monkeypatch, timings):
    """Make the form race return fixed timings; return the list of raced form sets."""
    return fixed_race(monkeypatch, timings, onnx_export)


@pytest.mark.parametrize('faster', graph.FORMS)
def test_the_faster_form_runs_and_is_timed_once(cache, monkeypatch, faster):
    timings = {graph.AS_EXPORTED: 2.0, graph.PRELU_SPLIT: 3.0}
    timings[faster] = 1.0
    calls = fixed_forms(monkeypatch, timings)
    log = Log()
    model = PReluNet()
    choice = prepare(model, 'onnxruntime', 'cpu', (48, 32), report=log.reporter())
    assert calls == [sorted(graph.FORMS)]
    runner = choice.model.runners[('forward', 32, 48)]
    assert runner.path.endswith('.prelu-split.onnx') == (faster == graph.PRELU_SPLIT)
    assert ('graph: prelu split (1.0 ms vs 2.0 ms as exported)' in choice.reason) == (
        faster == graph.PRELU_SPLIT)
    assert '100.00 % equal' in choice.reason and not log.warnings
    record = json.loads(next(cache.glob('*.json')).read_text())
    (kept,) = record['forms'].values()
    assert kept == timings
    tags = list(record['parity'])
    assert len(tags) == 1 and tags[0].endswith(' prelu split') == (faster != graph.AS_EXPORTED)
    batch = onnx_export.sample_batch(model.preprocess, (32, 48), 'cpu')
    with torch.inference_mode():
        assert torch.equal(choice.model(batch).argmax(1), model(batch).argmax(1))
    from semseg_ros.core.runtimes.model import RuntimeModel
    built = []
    make = RuntimeModel.make_runner
    monkeypatch.setattr(RuntimeModel, 'make_runner',
                        lambda self, path: built.append(path) or make(self, path))
    again = prepare(model, 'onnxruntime', 'cpu', (48, 32))
    assert len(calls) == 1, 'the form timings were not kept'
    assert built == [runner.path], 'a later start builds only the faster form'
    assert again.model.runners[('forward', 32, 48)].path == runner.path


def test_auto_races_the_runtimes_again_when_a_form_changes(cache, monkeypatch):
    from semseg_ros.core.runtimes import choose
    races = []
    monkeypatch.setattr(choose, 'race', lambda functions, sample: races.append(1) or {
        name: {'torch': 3.0}.get(name, 1.0) for name in functions})
    fixed_forms(monkeypatch, {graph.AS_EXPORTED: 1.0, graph.PRELU_SPLIT: 2.0})
    model = PReluNet()
    prepare(model, 'auto', 'cpu', (48, 32))
    prepare(model, 'auto', 'cpu', (48, 32))
    assert len(races) == 1
    fixed_forms(monkeypatch, {graph.AS_EXPORTED: 2.0, graph.PRELU_SPLIT: 1.0})
    for path in cache.glob('*.json'):  # time the forms again, as on another machine
        record = json.loads(path.read_text())
        record.pop('forms')
        path.write_text(json.dumps(record))
    choice = prepare(model, 'auto', 'cpu', (48, 32))
    assert len(races) == 2 and 'graph: prelu split' in choice.reason
    record = json.loads(next(cache.glob('*.json')).read_text())
    assert len(record['auto']) == 2


def test_an_onnx_file_runs_split_from_the_cache_with_its_labels(cache, tmp_path, monkeypatch):
    from semseg_ros.core.models.onnx import build, save
    calls = fixed_forms(monkeypatch, {graph.AS_EXPORTED: 2.0, graph.PRELU_SPLIT: 1.0})
    folder = tmp_path / 'models'
    folder.mkdir()
    path = folder / 'net.onnx'
    save(PReluNet(), path, 5, PReluNet.preprocess, example_size=(48, 32))
    model = build({'weights': str(path)})
    choice = prepare(model, 'onnxruntime', 'cpu', (48, 32))
    runner = choice.model.runners[('forward', 32, 48)]
    # Not beside the user's file (its folder may be read-only): in the export cache.
    assert os.path.dirname(runner.path) == str(cache) and runner.path.endswith('split.onnx')
    assert os.listdir(folder) == ['net.onnx']
    assert calls == [sorted(graph.FORMS)]
    assert 'graph: prelu split' in choice.reason and '100.00 % equal' in choice.reason
    batch = onnx_export.sample_batch(model.preprocess, (32, 48), 'cpu')
    with torch.inference_mode():
        assert torch.equal(choice.model(batch), model(batch))
    record = json.loads(next(cache.glob('net-file-*.json')).read_text())
    assert list(record['forms'].values()) == [{graph.AS_EXPORTED: 2.0, graph.PRELU_SPLIT: 1.0}]


def test_a_split_form_that_cannot_run_leaves_the_export_running(cache, monkeypatch):
    def broken(path, form, stem=None):
        target = graph.form_path(stem or path, form)
        with open(target, 'wb') as f:
            f.write(b'not an onnx file')
        return target

    monkeypatch.setattr(graph, 'write_form', broken)
    log = Log()
    model = PReluNet()
    choice = prepare(model, 'onnxruntime', 'cpu', (48, 32), report=log.reporter())
    assert choice.runtime == 'onnxruntime' and not choice.fallbacks
    assert not choice.model.runners[('forward', 32, 48)].path.endswith('split.onnx')
    assert any('prelu split form' in w and 'cannot run' in w for w in log.warnings)
    assert '100.00 % equal' in choice.reason and 'graph:' not in choice.reason


def test_a_size_met_mid_stream_is_not_timed_but_uses_timings_kept(cache, monkeypatch):
    calls = fixed_forms(monkeypatch, {graph.AS_EXPORTED: 2.0, graph.PRELU_SPLIT: 1.0})
    model = PReluNet()
    batch = onnx_export.sample_batch(model.preprocess, (32, 48), 'cpu')
    key = ('forward', 32, 48)

    def first_use():
        choice = prepare(model, 'onnxruntime', 'cpu', None)  # no size: exported on first use
        with torch.inference_mode():
            assert torch.equal(choice.model(batch).argmax(1), model(batch).argmax(1))
        return choice.model.runners[key].path

    assert not first_use().endswith('split.onnx') and calls == []  # frames would wait
    prepare(model, 'onnxruntime', 'cpu', (48, 32))  # at start-up: timed and kept
    assert len(calls) == 1
    assert first_use().endswith('split.onnx') and len(calls) == 1

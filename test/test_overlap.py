"""Segmenter.submit: a runtime's forward beside the previous frame's postprocessing."""

import threading

import numpy as np
import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.core.engine import EngineError, Segmenter
from semseg_ros.core.runtimes import base
from test_runtimes import frames, Tiny
import torch

RUNTIMES = [r for r in ('onnxruntime', 'openvino') if base.available(r)]
OUTPUTS = ('label', 'color', 'drivable')


def engine(runtime, **kwargs):
    classes = class_sets.generic(4).with_drivable([1])
    return Segmenter(Tiny(), classes, device='cpu', input_size=(64, 48), runtime=runtime,
                     **kwargs)


def same(got, want):
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name


@pytest.fixture(params=RUNTIMES or [pytest.param('none', marks=pytest.mark.skip(
    'neither onnxruntime nor openvino is installed'))])
def runtime(request, cache):
    return request.param


def test_only_a_runtime_on_the_cpu_overlaps(runtime):
    assert engine(runtime).overlaps
    assert not engine('torch').overlaps


def test_submitted_frames_give_what_process_gives(runtime):
    seg, ref = engine(runtime), engine('torch')
    batch = frames([(64, 48)] * 4, seed=3)
    want = [ref.process([f], OUTPUTS)[0] for f in batch]
    assert not np.array_equal(want[0]['label'], want[1]['label'])
    # The node's order: submit the next frame, then finish the one before.
    held = seg.submit([batch[0]], OUTPUTS)
    got = []
    for frame in batch[1:]:
        pending = seg.submit([frame], OUTPUTS)
        got += held.result()
        held = pending
    got += held.result()
    for a, b in zip(got, want):
        same(a, b)
    assert set(held.timings) == {'preprocess', 'inference', 'postprocess'}
    assert held.timings['inference'] > 0 and seg.frames == 4


def test_older_submissions_are_finished_before_their_outputs_are_overwritten(runtime):
    # OpenVINO keeps two output tensors per input shape: a third submit must not leave the
    # first one's logits to be overwritten before it is postprocessed.
    seg, ref = engine(runtime), engine('torch')
    batch = frames([(64, 48)] * 5, seed=4)
    pending = [seg.submit([f], OUTPUTS) for f in batch]
    for p, f in zip(reversed(pending), reversed(batch)):
        same(p.result()[0], ref.process([f], OUTPUTS)[0])


@pytest.mark.parametrize('max_batch', [1, 3])
def test_several_frames_in_one_submit(runtime, max_batch):
    # max_batch 1: three forwards of one shape in one submit, while an earlier one is open.
    seg, ref = engine(runtime, max_batch=max_batch), engine('torch', max_batch=max_batch)
    first, rest = frames([(64, 48)], seed=6), frames([(64, 48)] * 3, seed=7)
    held = seg.submit(first, OUTPUTS)
    pending = seg.submit(rest, OUTPUTS)
    for a, b in zip(held.result() + pending.result(), ref.process(first + rest, OUTPUTS)):
        same(a, b)
    # process() between submits finishes the open ones first.
    held = seg.submit(first, OUTPUTS)
    same(seg.process(rest, OUTPUTS)[0], ref.process(rest, OUTPUTS)[0])
    same(held.result()[0], ref.process(first, OUTPUTS)[0])


def test_the_forward_runs_beside_the_caller_with_torch_on_one_thread(runtime, monkeypatch):
    seg = engine(runtime)
    batch = frames([(64, 48)] * 2, seed=8)
    started, release = threading.Event(), threading.Event()
    real = seg._infer
    seen = {}

    def slow_infer(x):
        seen['thread'] = threading.current_thread().name
        started.set()
        assert release.wait(10.0)
        return real(x)

    monkeypatch.setattr(seg, '_infer', slow_infer)
    budget = torch.get_num_threads()
    pending = seg.submit([batch[0]], OUTPUTS)
    assert started.wait(10.0) and pending.running
    assert seen['thread'].startswith('semseg_forward')
    # While the forward runs, the caller's torch work (the earlier frame's) runs on one
    # thread, and a runtime built meanwhile still gets the whole budget.
    with base.torch_on_one_thread():
        assert torch.get_num_threads() == 1
        assert base.thread_budget() == budget
    release.set()
    pending.wait()
    assert not pending.running
    assert pending.result()[0]['label'].shape == (48, 64)
    assert torch.get_num_threads() == budget


def test_a_failed_forward_is_raised_by_its_result_and_the_next_frame_runs(runtime, monkeypatch):
    seg, ref = engine(runtime), engine('torch')
    batch = frames([(64, 48)] * 2, seed=9)
    real = seg._infer

    def broken(x):
        raise RuntimeError('the runtime crashed')

    monkeypatch.setattr(seg, '_infer', broken)
    failed = seg.submit([batch[0]], OUTPUTS)
    monkeypatch.setattr(seg, '_infer', real)
    pending = seg.submit([batch[1]], OUTPUTS)
    with pytest.raises(RuntimeError, match='the runtime crashed'):
        failed.result()
    with pytest.raises(RuntimeError, match='the runtime crashed'):
        failed.result()  # the same error each time, never outputs
    same(pending.result()[0], ref.process([batch[1]], OUTPUTS)[0])


def test_bad_frames_raise_from_submit(runtime):
    seg = engine(runtime)
    bad = frames([(64, 48)])[0]._replace(color='yuv')
    with pytest.raises(EngineError, match='unknown channel order'):
        seg.submit([bad], OUTPUTS)
    with pytest.raises(EngineError, match='unknown outputs'):
        seg.submit(frames([(64, 48)]), ('label', 'depth'))
    assert seg.submit([], OUTPUTS).result() == []


def test_torch_runtime_does_the_work_in_submit():
    seg = engine('torch')
    batch = frames([(64, 48)], seed=10)
    pending = seg.submit(batch, OUTPUTS)
    assert not pending.running
    same(pending.result()[0], seg.process(batch, OUTPUTS)[0])

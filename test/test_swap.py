"""The live model swap without ROS: loads beside the running model, swaps between batches."""

import threading
import time
import weakref

import numpy as np
import pytest
from semseg_ros.core import classes
from semseg_ros.core import settings as cfg
from semseg_ros.core import swap
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.models.base import ModelError
from semseg_ros.core.models.base import ModuleModel
from semseg_ros.core.models.base import Preprocess
import torch


class Channels(torch.nn.Module):
    """Logits = input channels (red 0, green 1, blue 2)."""

    def forward(self, x):
        return x


class Reversed(torch.nn.Module):
    """Logits = blue, green, red, 0.5: four classes, black is class 3."""

    def forward(self, x):
        return torch.cat([x.flip(1), torch.full_like(x[:, :1], 0.5)], 1)


def segmenter(module, count, device='cpu', name='model'):
    model = ModuleModel(module, count, Preprocess(scale=1.0 / 255.0), name=name)
    return Segmenter(model, classes.generic(count, name), device=device, warmup=False)


def four_stripes(h=8, w=16):
    """Red, green, blue and black vertical stripes."""
    img = np.zeros((h, w, 3), np.uint8)
    q = w // 4
    img[:, :q, 0] = img[:, q:2 * q, 1] = img[:, 2 * q:3 * q, 2] = 255
    return img


# Label of each stripe under each model.
ANSWERS = {(0, 1, 2, 0): 'old', (2, 1, 0, 3): 'new'}
SETTINGS = cfg.from_values({'model.backend': 'torchscript', 'model.weights': '/new.ts'})


class Owner:
    """What the node does: a worker thread runs batches through the current segmenter."""

    def __init__(self, running):
        self.segmenter = running
        self.swapper = swap.ModelSwap()
        self.batches = []  # (monotonic time, [answer of each frame of the batch])
        self.stop = False
        self.thread = threading.Thread(target=self.run)

    def run(self):
        frames = [Frame(four_stripes(), 'rgb')] * 2  # two frames per batch
        while not self.stop:
            with self.swapper.batch():
                labels = self.segmenter.labels(frames)
            answers = [ANSWERS.get(tuple(int(v) for v in lab[0, ::4])) for lab in labels]
            self.batches.append((time.monotonic(), answers))
            time.sleep(0.002)

    def install(self, segmenter, base):
        self.segmenter = segmenter
        self.base = base


def test_swap_between_batches_while_the_old_model_runs():
    old = segmenter(Channels(), 3, name='old')
    gone = weakref.ref(old)
    owner = Owner(old)
    del old
    loading = threading.Event()
    release = threading.Event()

    def slow_build(settings, log):
        """Build the new model, then wait to be released: a load the test can see through."""
        new = segmenter(Reversed(), 4, name='new')
        loading.set()
        assert release.wait(30)
        return new, new.classes

    owner.swapper = swap.ModelSwap(build=slow_build)
    owner.thread.start()
    result = {}
    caller = threading.Thread(target=lambda: result.setdefault(
        'r', owner.swapper.swap(SETTINGS, owner.segmenter, owner.install)))
    try:
        caller.start()
        assert loading.wait(30)
        level, message, _ = owner.swapper.report()
        assert level == 'OK' and message.startswith('loading torchscript /new.ts')
        during = len(owner.batches)
        time.sleep(0.3)  # the load goes on; so do the batches, with the old model
        frames_during_load = len(owner.batches) - during
        release.set()
        caller.join(30)
        time.sleep(0.1)
    finally:
        release.set()
        owner.stop = True
        owner.thread.join(30)
    r = result['r']
    assert r.ok and r.reason == '' and r.classes_changed, r
    assert r.classes.startswith('old (3 classes') and '-> new (4 classes' in r.classes
    assert frames_during_load >= 5
    answers = [a for _, batch in owner.batches for a in batch]
    assert None not in answers  # every frame entirely one model's
    assert all(len(set(batch)) == 1 for _, batch in owner.batches)  # no batch mixes models
    first_new = answers.index('new')
    assert set(answers[:first_new]) == {'old'} and set(answers[first_new:]) == {'new'}
    assert gone() is None  # the old segmenter was freed
    assert owner.swapper.swaps == 1 and owner.swapper.report()[:2] == ('OK', 'ok')


def test_failed_load_keeps_the_old_model_and_says_why():
    old = segmenter(Channels(), 3, name='old')
    installed = []

    def missing(settings, log):
        raise ModelError(f'torchscript model file {settings.weights} does not exist')

    swapper = swap.ModelSwap(build=missing)
    swapper.track(old, SETTINGS)
    r = swapper.swap(SETTINGS, old, lambda *a: installed.append(a))
    assert not r.ok and not installed
    assert r.reason == 'torchscript model file /new.ts does not exist'
    assert r.model == swapper.running != ''
    level, message, values = swapper.report()
    assert level == 'WARN' and 'does not exist' in message
    assert values['failed swaps'] == '1' and values['last swap'].startswith('failed: ')
    # Unexpected error types are named; long errors are clipped (the log gets them whole).
    swapper._build = lambda settings, log: {}['x' * 2000]
    r = swapper.swap(SETTINGS, old, lambda *a: installed.append(a))
    assert r.reason.startswith("KeyError: 'xxx") and 'more characters in the log' in r.reason
    assert len(r.reason) < swap.REASON_LIMIT + 60 and len(r.detail) > 2000
    # Out of device memory: the reason says how to swap models that do not fit together.
    swapper._build = lambda settings, log: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB'))
    r = swapper.swap(SETTINGS, old, lambda *a: installed.append(a))
    assert r.reason.startswith('out of device memory loading the new model beside the '
                               'running one') and 'Tried to allocate 2.00 GiB' in r.reason
    assert 'deactivate, clean up, set the parameters and configure' in r.reason
    # An error in the exchange itself is reported, and does not block later swaps.
    swapper._build = lambda settings, log: (segmenter(Channels(), 3), classes.generic(3))
    r = swapper.swap(SETTINGS, old, lambda *a: 1 / 0)
    assert not r.ok and r.reason == ('model swap failed unexpectedly: ZeroDivisionError: '
                                     'division by zero')
    assert swapper.loading is None
    # A good load afterwards clears the warning.
    swapper._build = lambda settings, log: (segmenter(Channels(), 3), classes.generic(3))
    assert swapper.swap(SETTINGS, old, lambda *a: installed.append(a)).ok
    assert len(installed) == 1 and swapper.report()[0] == 'OK'


def test_one_swap_at_a_time():
    old = segmenter(Channels(), 3)
    release = threading.Event()

    def blocked(settings, log):
        assert release.wait(30)
        raise ModelError('released')

    swapper = swap.ModelSwap(build=blocked)
    first = threading.Thread(target=swapper.swap, args=(SETTINGS, old, print))
    first.start()
    try:
        while swapper.loading is None:
            time.sleep(0.01)
        r = swapper.swap(SETTINGS, old, print)
        assert not r.ok and 'already in progress (torchscript /new.ts)' in r.reason
    finally:
        release.set()
        first.join(30)
    assert swapper.failures == 1  # the refused call changes nothing


def test_swap_parameters():
    assert {'model.weights', 'model.backend', 'model.options', 'classes'} <= \
        swap.SWAP_PARAMETERS
    assert swap.needs_swap(['overlay_alpha', 'model.weights'])
    assert not swap.needs_swap(['overlay_alpha', 'drivable_classes', 'outputs.color'])
    assert not swap.SWAP_PARAMETERS & {s.name for s in cfg.PARAMETERS if s.read_only}


class Big(torch.nn.Module):
    """Logits = input channels, with a 64 MiB buffer that makes the model's memory visible."""

    def __init__(self):
        super().__init__()
        self.register_buffer('ballast', torch.zeros(16 * 2**20))

    def forward(self, x):
        return x + self.ballast[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_old_model_memory_is_freed_after_the_swap():
    old = segmenter(Big(), 3, device='cuda')
    gone = weakref.ref(old)
    torch.cuda.synchronize()
    one = 64 * 2**20
    base = torch.cuda.memory_allocated() - one
    holder = {'seg': old}
    del old
    swapper = swap.ModelSwap(build=lambda s, log: (segmenter(Big(), 3, device='cuda'),
                                                   classes.generic(3)))
    r = swapper.swap(SETTINGS, holder['seg'], lambda seg, base: holder.update(seg=seg))
    assert r.ok, r.reason
    assert gone() is None
    after = torch.cuda.memory_allocated() - base
    assert one <= after < 1.5 * one  # one model left, not two
    assert torch.cuda.max_memory_allocated() - base >= 2 * one  # both, during the swap
    assert r.memory.endswith('after') and 'at the peak' in r.memory
    frame = Frame(four_stripes(), 'rgb')
    assert holder['seg'].labels([frame])[0][0, ::4].tolist() == [0, 1, 2, 0]

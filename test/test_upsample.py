"""Exact label upsampling from low-resolution logits (semseg_ros.core.upsample)."""

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
from semseg_ros.core import classes, render
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.models.base import ModuleModel, Preprocess
from semseg_ros.core.models.espnetv2 import ESPNetv2
from semseg_ros.core.upsample import bilinear_taps, dense_labels, sparse_labels
import torch
import torch.nn.functional as F


def smooth_logits(channels, h, w, seed, cells=4):
    """Logits with regions and borders like a real network's (low-frequency + noise)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, max(1, h // cells), max(1, w // cells), generator=gen)
    base = F.interpolate(coarse * 4, size=(h, w), mode='bilinear', align_corners=False)[0]
    return base + 0.2 * torch.randn(channels, h, w, generator=gen)


@pytest.mark.parametrize('size_in,size_out', [(4, 10), (10, 4), (7, 7), (1, 5), (5, 1),
                                              (256, 720), (512, 720), (90, 1280)])
def test_taps_reproduce_torch_interpolation(size_in, size_out):
    lower, upper, weight = bilinear_taps(size_in, size_out)
    ramp = torch.arange(size_in, dtype=torch.float32) ** 2  # not linear: checks both taps
    ours = ramp[lower] * (1 - weight) + ramp[upper] * weight
    theirs = F.interpolate(ramp[None, None, None], size=(1, size_out), mode='bilinear',
                           align_corners=False)[0, 0, 0]
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('shape,size', [((20, 64, 128), (180, 320)), ((20, 256, 512), (720, 1280)),
                                        ((5, 33, 47), (100, 61)), ((3, 40, 40), (17, 23)),
                                        ((300, 12, 16), (36, 48))])
def test_sparse_labels_equal_dense_labels(shape, size):
    logits = smooth_logits(*shape, seed=sum(size))
    dense = dense_labels(logits, size)
    sparse = sparse_labels(logits, size)
    assert sparse.shape == size
    assert sparse.dtype == (torch.uint8 if shape[0] <= 256 else torch.int32)
    # Only float rounding at near-ties may differ.
    assert (dense == sparse).float().mean().item() >= 0.9999


def test_piecewise_constant_logits_give_identical_labels():
    labels = torch.zeros(30, 40, dtype=torch.long)
    labels[:, 13:] = 2
    labels[18:, :25] = 1
    logits = F.one_hot(labels, 3).permute(2, 0, 1).float() * 5.0
    for size in ((90, 120), (31, 41), (12, 16)):
        assert torch.equal(sparse_labels(logits, size).long(), dense_labels(logits, size))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6), st.integers(1, 24), st.integers(1, 24), st.integers(1, 60),
       st.integers(1, 60), st.integers(0, 2 ** 16))
def test_sparse_labels_fuzz(channels, h, w, out_h, out_w, seed):
    logits = smooth_logits(channels, h, w, seed, cells=2)
    dense = dense_labels(logits, (out_h, out_w))
    sparse = sparse_labels(logits, (out_h, out_w))
    assert sparse.shape == (out_h, out_w)
    assert (dense != sparse).sum().item() <= max(1, out_h * out_w // 1000)


class HalfResolution(torch.nn.Module):
    """Logits at half resolution from ``logits``; ``forward`` upsamples them (like ESPNetv2)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def logits(self, batch):
        self.calls.append('logits')
        # Class 1 where the red channel is bright, else class 0.
        red = F.avg_pool2d(batch[:, :1], 2)
        return torch.cat([0.5 - red, red - 0.5], 1) * 10

    def forward(self, batch):
        self.calls.append('forward')
        return F.interpolate(self.logits(batch), size=batch.shape[2:], mode='bilinear',
                             align_corners=True)


class Wrapped(ModuleModel):
    """ModuleModel that passes ``logits`` through to the module."""

    def logits(self, batch):
        return self.module.logits(batch)


@pytest.mark.parametrize('upsample,calls', [('logits', ['logits']),
                                            ('labels', ['forward', 'logits'])])
def test_engine_takes_low_resolution_logits_only_when_it_resizes_them(upsample, calls):
    module = HalfResolution()
    model = Wrapped(module, 2, Preprocess(), name='half')
    two = classes.generic(2)
    seg = Segmenter(model, two, device='cpu', upsample=upsample, warmup=False)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:, 0] = 255
    out = seg.process([Frame(image, 'rgb')], ('label', 'confidence'))[0]
    assert module.calls == calls
    assert out['label'].shape == (40, 60) and out['confidence'].shape == (40, 60)
    assert (out['label'][:, :29] == 0).all() and (out['label'][:, 31:] == 1).all()
    # softmax(+5, -5) = 0.99995 away from the border.
    assert (out['confidence'][:, :27] == 255).all()


def test_espnetv2_forward_is_its_logits_upsampled():
    model = ESPNetv2().eval()
    batch = torch.randn(1, 3, 64, 128)
    with torch.inference_mode():
        low = model.logits(batch)
        full = model(batch)
    assert low.shape == (1, 20, 32, 64)
    expected = F.interpolate(low, size=(64, 128), mode='bilinear', align_corners=True)
    assert torch.allclose(full, expected)


@pytest.mark.parametrize('shape', [(12, 720, 1280), (20, 7, 5), (300, 40, 3), (2, 1, 1)])
def test_banded_max_probability_equals_softmax_max(shape):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3
    top = logits.max(dim=0)
    ours = render.max_probability(logits, top.values)
    assert torch.allclose(ours, torch.softmax(logits, dim=0).max(dim=0).values, atol=1e-6)

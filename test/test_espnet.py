"""Tests of our ESPNet implementation (random weights, and the published CamVid weights)."""

import cv2
import numpy as np
import pytest
from semseg_ros.core.metrics import ConfusionMatrix
from semseg_ros.core.models.base import SegmentationModel
from semseg_ros.core.models.espnet import build, ESPNet
from semseg_ros.core.weights import load_state_dict_file
import torch

ROAD = 3


def tensors(state):
    """Return the state dict without BatchNorm's step counters (absent from the file)."""
    return {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return ESPNet().eval()


def test_interface(model):
    assert isinstance(model, SegmentationModel)
    assert model.num_classes == 12
    assert model.class_set == 'camvid'
    assert model.name == 'espnet'
    pre = model.preprocess
    assert pre.channel_order == 'bgr'
    assert pre.input_size == (480, 360)
    assert pre.size_divisor == 8
    assert pre.scale == pytest.approx(1 / 255)


@pytest.mark.parametrize('shape', [(2, 3, 64, 96), (1, 3, 360, 480)])
def test_output_shape(model, shape):
    with torch.inference_mode():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 12) + shape[2:]
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_batch_matches_single_frames(model):
    x = torch.randn(2, 3, 48, 64)
    with torch.inference_mode():
        both = model(x)
        first = model(x[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-4)


def test_rejects_sides_not_multiple_of_8(model):
    with pytest.raises(ValueError, match='multiples of 8'):
        model(torch.zeros(1, 3, 60, 64))


def test_state_dict_layout(model):
    state = tensors(model.state_dict())
    assert len(state) == 189
    assert sum(v.numel() for v in state.values()) == 358193
    assert state['conv.conv.weight'].shape == (12, 19 + 12, 3, 3)
    assert state['encoder.level3.7.d16.conv.weight'].shape == (25, 25, 3, 3)


def test_published_weights_load_strict(espnet_weights):
    state = load_state_dict_file(espnet_weights)
    net = ESPNet()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in tensors(net.state_dict()).items()}
    net.load_state_dict(state, strict=True)


def test_published_weights_segment_road(espnet_weights, camvid_val):
    torch.set_num_threads(2)
    net = build({'weights': str(espnet_weights), 'download': False})
    assert not net.training
    pre = net.preprocess
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    cm = ConfusionMatrix(11, ignore_index=11)
    names = sorted(p.name for p in (camvid_val / 'images').glob('*.png'))[::25][:5]
    assert names
    for name in names:
        bgr = cv2.imread(str(camvid_val / 'images' / name), cv2.IMREAD_COLOR)
        label = cv2.imread(str(camvid_val / 'labels' / name), cv2.IMREAD_UNCHANGED)
        x = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            logits = net((x - mean) / std * pre.scale)
        assert logits.shape == (1, 12, 360, 480)
        pred = logits[0].argmax(0).numpy()
        cm.update(pred, label)
        # The bottom centre of a CamVid frame is road, seen from the car.
        assert np.mean(pred[-40:, 200:280] == ROAD) > 0.9
    assert cm.pixel_accuracy() > 0.88
    assert cm.iou()[ROAD] > 0.93

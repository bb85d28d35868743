"""Tests of our ESPNetv2 (s=2.0, Cityscapes) implementation."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from semseg_ros.core.models import espnetv2
from semseg_ros.core.models.base import ModelError, SegmentationModel
import torch

ASSETS = Path(__file__).resolve().parents[1].parent / 'shared' / 'assets'
WEIGHTS = ASSETS / 'models' / 'espnetv2_s_2.0_city_1024x512.pth'
CAMVID = ASSETS / 'camvid_val'
# Published file: 526 tensors (with BN buffers), 789,242 learnable parameters.
TENSORS = 526
PARAMETERS = 789242
# Spread over the sequence; each has about 25-33 % road.
ROAD_IMAGES = ('0016E5_07959.png', '0016E5_08039.png', '0016E5_08139.png')
CAMVID_ROAD = 3
CITYSCAPES_ROAD = 0


def needs(path):
    """Return ``path``, or skip the test when the shared assets are absent."""
    if not path.exists():
        pytest.skip(f'needs the shared test assets ({path} is absent: a user clone has no '
                    '../shared)')
    return path


@pytest.fixture(scope='module')
def trained():
    """ESPNetv2 with the published Cityscapes weights, through build()."""
    path = needs(WEIGHTS)
    return espnetv2.build({'weights': str(path), 'download': False})


def test_interface():
    model = espnetv2.ESPNetv2()
    assert isinstance(model, SegmentationModel)
    assert model.num_classes == 20
    assert model.class_set == 'cityscapes'
    assert model.name == 'espnetv2'
    pre = model.preprocess
    assert pre.channel_order == 'rgb'
    assert pre.input_size == (1024, 512)
    assert pre.size_divisor == 16
    assert pre.scale == 1.0
    assert np.allclose(pre.mean, [123.675, 116.28, 103.53])
    assert np.allclose(pre.std, [58.395, 57.12, 57.375])


@pytest.mark.parametrize('height, width', [(64, 96), (72, 100)])
def test_random_init_output_shape(height, width):
    torch.manual_seed(0)
    model = espnetv2.ESPNetv2().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert out.shape == (2, 20, height, width)
    assert torch.isfinite(out).all()


def test_tensor_and_parameter_counts():
    model = espnetv2.ESPNetv2()
    assert len(model.state_dict()) == TENSORS
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS


def test_state_dict_matches_file():
    state = torch.load(needs(WEIGHTS), map_location='cpu', weights_only=True)
    ours = espnetv2.ESPNetv2().state_dict()
    assert len(state) == TENSORS
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in state.items()}


def test_build_rejects_unknown_option():
    with pytest.raises(ModelError, match='weigths'):
        espnetv2.build({'weigths': 'x.pth'})


def test_load_weights_rejects_other_state_dict():
    model = espnetv2.ESPNetv2()
    state = model.state_dict()
    del state['bu_dec_l4.merge_layer.3.bias']
    with pytest.raises(ModelError, match='other.pth'):
        espnetv2.load_weights(model, state, 'other.pth')


def test_load_weights_strips_data_parallel_prefix():
    model = espnetv2.ESPNetv2()
    state = {f'module.{k}': v for k, v in espnetv2.ESPNetv2().state_dict().items()}
    espnetv2.load_weights(model, state)
    key = 'bu_dec_l4.merge_layer.3.weight'
    assert torch.equal(model.state_dict()[key], state[f'module.{key}'])


def _prepare(image, pre):
    """Resize an RGB uint8 image to the model input and normalise it as the engine does."""
    image = cv2.resize(image, pre.input_size, interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(image).float().permute(2, 0, 1)
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    return (x - mean) / std * pre.scale


def test_road_is_predicted_road(trained):
    folder = needs(CAMVID)
    images, labels = [], []
    for name in ROAD_IMAGES:
        bgr = cv2.imread(str(folder / 'images' / name), cv2.IMREAD_COLOR)
        images.append(_prepare(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), trained.preprocess))
        labels.append(cv2.imread(str(folder / 'labels' / name), cv2.IMREAD_UNCHANGED))
    with torch.no_grad():
        logits = trained(torch.stack(images))
    assert logits.shape == (len(ROAD_IMAGES), 20, 512, 1024)
    for name, label, pred in zip(ROAD_IMAGES, labels, logits.argmax(1).numpy()):
        pred = cv2.resize(pred.astype(np.uint8), label.shape[::-1],
                          interpolation=cv2.INTER_NEAREST)
        road = label == CAMVID_ROAD
        said_road = pred == CITYSCAPES_ROAD
        recall = (said_road & road).sum() / road.sum()
        precision = (said_road & road).sum() / said_road.sum()
        assert recall > 0.9, f'{name}: road recall {recall:.3f}'
        assert precision > 0.9, f'{name}: road precision {precision:.3f}'

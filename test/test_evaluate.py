"""semseg-ros-eval on datasets the test writes, with a model whose answer is known."""

import json

import cv2
import numpy as np
import pytest
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.tools import evaluate
import torch
import yaml


class Channels(torch.nn.Module):
    """Logits = input channels: red pixels are class 0, green 1, blue 2."""

    def forward(self, x):
        return x


@pytest.fixture
def setup(tmp_path):
    model = tmp_path / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    classes = tmp_path / 'rgb.yaml'
    classes.write_text(yaml.safe_dump({'name': 'rgb', 'classes': [
        {'id': 0, 'name': 'red', 'color': [255, 0, 0]},
        {'id': 1, 'name': 'green', 'color': [0, 255, 0]},
        {'id': 2, 'name': 'blue', 'color': [0, 0, 255]}]}))
    data = tmp_path / 'data'
    (data / 'images').mkdir(parents=True)
    (data / 'labels').mkdir()
    for i in range(5):
        rgb = np.zeros((16, 24, 3), np.uint8)
        rgb[:, :8, 0] = 255
        rgb[:, 8:16, 1] = 255
        rgb[:, 16:, 2] = 255
        truth = np.zeros((16, 24), np.uint8)
        truth[:, 8:16] = 1
        truth[:, 16:] = 2
        if i == 4:
            truth[:, 16:] = 1  # one frame labels its blue band green: known errors
        cv2.imwrite(str(data / 'images' / f'f{i}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(data / 'labels' / f'f{i}.png'), truth)
    params = ['-p', 'model.backend:=torchscript', '-p', f'model.weights:={model}',
              '-p', f'classes:={classes}']
    return data, params, tmp_path / 'out'


def test_known_scores_and_pictures(setup, capsys):
    data, params, out = setup
    assert evaluate.main([str(data), *params, '--output', str(out), '--quiet']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    # 5 frames x 384 px; frame 4 has 128 'green' pixels predicted blue.
    assert metrics['images'] == 5
    assert metrics['pixel_accuracy'] == pytest.approx(1 - 128 / 1920)
    assert metrics['iou']['red'] == pytest.approx(1.0)
    assert metrics['iou']['green'] == pytest.approx(640 / 768)
    assert metrics['iou']['blue'] == pytest.approx(512 / 640)
    assert cv2.imread(str(out / 'confusion.png')) is not None
    mosaic = cv2.imread(str(out / 'mosaic.png'))
    assert mosaic.shape[0] == 4 * 180
    text = capsys.readouterr().out
    assert 'mIoU' in text and 'pixel accuracy' in text


def test_map_scores_another_class_set(setup, tmp_path):
    data, params, out = setup
    mapping = tmp_path / 'map.yaml'
    mapping.write_text(yaml.safe_dump({'red': 'red', 'green': 'green', 'blue': None}))
    assert evaluate.main([str(data), *params, '--map', str(mapping), '--output', str(out),
                          '--quiet']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['iou']['blue'] == 0.0  # unmapped predictions count as wrong


@pytest.mark.parametrize('runtime', ['torch', 'onnxruntime'])
def test_model_runtime_reaches_the_engine(setup, tmp_path, monkeypatch, runtime):
    monkeypatch.setenv('SEMSEG_ROS_CACHE', str(tmp_path / 'cache'))
    data, params, out = setup
    assert evaluate.main([str(data), *params, '-p', f'model.runtime:={runtime}', '--output',
                          str(out), '--quiet']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['runtime'].startswith(f'{runtime} (requested')
    assert metrics['pixel_accuracy'] == pytest.approx(1 - 128 / 1920)


@pytest.mark.parametrize('extra,message', [
    (['-p', 'precision:=fp8'], 'parameter precision'),
    (['-p', 'bogus'], 'name:=value'),
    (['--images', '/nonexistent'], 'is not a folder'),
])
def test_errors_are_clear(setup, capsys, extra, message):
    data, params, out = setup
    assert evaluate.main([str(data), *params, *extra, '--output', str(out), '--quiet']) == 1
    assert message in capsys.readouterr().err


def test_real_espnet_on_a_few_camvid_images(espnet_weights, camvid_val, tmp_path):
    out = tmp_path / 'out'
    args = [str(camvid_val), '-p', f'model.weights:={espnet_weights}', '--limit', '8',
            '--output', str(out), '--quiet']
    assert evaluate.main(args) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['pixel_accuracy'] > 0.9 and metrics['iou']['Road'] > 0.95

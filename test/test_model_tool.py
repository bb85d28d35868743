"""semseg-ros-model (inspect, check, card) and the eval tool's class-set warnings."""

import argparse

import cv2
import numpy as np
import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.tools import evaluate
from semseg_ros.tools.model import main
import torch
import yaml

pytestmark = pytest.mark.filterwarnings(
    'ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning',
    'ignore:The feature will be removed:DeprecationWarning')
MEAN = [100.0, 110.0, 120.0]
STD = [50.0, 60.0, 70.0]


class Net(torch.nn.Module):
    """Three classes from the channels' normalised values: right only with the right input."""

    def forward(self, x):
        return torch.stack([x[:, 0], x[:, 1], torch.full_like(x[:, 0], 0.002)], dim=1)


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / 'net.onnx'
    torch.onnx.export(Net(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                      input_names=['x'], output_names=['y'],
                      dynamic_axes={'x': {0: 'n', 2: 'h', 3: 'w'}})
    return path


@pytest.fixture
def three(tmp_path):
    path = tmp_path / 'three.yaml'
    path.write_text(yaml.safe_dump({'name': 'three', 'classes': [
        {'id': 0, 'name': 'a', 'color': [255, 0, 0]}, {'id': 1, 'name': 'b', 'color': [0, 255, 0]},
        {'id': 2, 'name': 'void', 'color': [0, 0, 0]}]}))
    return path


@pytest.fixture
def labelled(tmp_path):
    """Two images and the labels Net gives with the right preprocessing (RGB, MEAN, STD)."""
    root = tmp_path / 'data'
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        x = (rgb.astype(np.float64) - MEAN) / STD / 255.0
        scores = np.stack([x[..., 0], x[..., 1], np.full(x.shape[:2], 0.002)])
        cv2.imwrite(str(root / 'images' / f'{i}.png'), rgb[:, :, ::-1])
        cv2.imwrite(str(root / 'labels' / f'{i}.png'), scores.argmax(0).astype(np.uint8))
    return root


def test_inspect_warns_without_metadata(plain, capsys):
    assert main(['inspect', str(plain)]) == 0
    text = capsys.readouterr().out
    assert 'backend:       onnx (an ONNX file)' in text and 'card:          none' in text
    assert 'output y: tensor(float)' in text and 'from:        defaults' in text
    assert 'WARNING:' in text and 'no preprocessing metadata' in text


def test_card_then_check_scores_the_labelled_folder(plain, labelled, three, capsys):
    assert main(['check', str(plain), '--data', str(labelled), '--classes', str(three)]) == 0
    bad = capsys.readouterr().out
    assert 'WARNING' in bad
    accuracy_without = float(bad.split('pixel accuracy ')[1].split(',')[0])
    assert main(['card', str(plain), '--mean', *map(str, MEAN), '--std', *map(str, STD),
                 '--classes', str(three), '--trained-on', 'nothing']) == 0
    card = yaml.safe_load(plain.with_suffix('.yaml').read_text())
    assert card['file'] == 'net.onnx' and card['format'] == 'onnx'
    assert card['classes']['name'] == 'three' and card['preprocess']['mean'] == MEAN
    assert card['provenance']['trained_on'] == 'nothing'
    capsys.readouterr()
    assert main(['inspect', str(plain)]) == 0
    text = capsys.readouterr().out
    assert 'model card' in text and 'WARNING' not in text and '3 (three' in text
    assert main(['check', str(plain), '--data', str(labelled), '--compare', str(plain)]) == 0
    text = capsys.readouterr().out
    assert 'agreement with' in text and '1.000000 of the pixels (0 differ)' in text
    accuracy = float(text.split('pixel accuracy ')[1].split(',')[0])
    assert accuracy > 0.99 and accuracy_without < 0.9  # float32 vs float64 at ties
    # An existing card is kept unless --force.
    assert main(['card', str(plain), '--mean', '0', '0', '0', '--std', '1', '1', '1',
                 '--classes', 'camvid']) == 1
    assert 'exists' in capsys.readouterr().err


def test_card_that_does_not_fit_is_not_written(plain, capsys):
    assert main(['card', str(plain), '--mean', '0', '0', '0', '--std', '1', '1', '1',
                 '--classes', 'camvid']) == 1
    err = capsys.readouterr().err
    assert 'num_classes 12' in err and 'no card written' in err
    assert not plain.with_suffix('.yaml').exists()


def test_bad_files_exit_non_zero(tmp_path, capsys):
    junk = tmp_path / 'junk.onnx'
    junk.write_bytes(b'not a model')
    state = tmp_path / 'weights.pth'
    torch.save({'w': torch.zeros(2)}, str(state))
    for args in (['inspect', str(junk)], ['inspect', str(state)],
                 ['check', str(tmp_path / 'none.onnx')], ['inspect', str(tmp_path)]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith('semseg-ros-model: error:') and err.count('\n') == 1


def _eval_args(tmp_path, classes=None, mapping=None):
    return argparse.Namespace(dataset=str(tmp_path), classes=classes, map=mapping)


def test_eval_warns_about_the_labels_class_set(tmp_path, three):
    coco = class_sets.load('coco')
    said = []
    assert evaluate.dataset_classes(_eval_args(tmp_path), coco, said.append) is coco
    assert len(said) == 1 and "labels' class set is not given" in said[0]
    assert "'coco'" in said[0] and '--classes' in said[0]
    # Same count, other names: said; a classes.yaml in the dataset folder is the labels' set.
    said.clear()
    model = class_sets.from_dict({'name': 'm', 'classes': [
        {'id': i, 'name': n, 'color': [i, i, i]} for i, n in enumerate(('a', 'x', 'void'))]})
    (tmp_path / 'classes.yaml').write_text(three.read_text())
    data = evaluate.dataset_classes(_eval_args(tmp_path), model, said.append)
    assert data.name == 'three' and len(said) == 1 and 'x vs b' in said[0]
    said.clear()
    evaluate.dataset_classes(_eval_args(tmp_path, str(three), 'map.yaml'), model, said.append)
    assert said == []

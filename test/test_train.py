"""Training: a real learning test, head adaptation, export round trip, gate and deploy rule."""

import csv

import numpy as np
import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.models import registry
from semseg_ros.core.models.card import read_card
from semseg_ros.core.train import dataset
from semseg_ros.core.train import export
from semseg_ros.core.train import heads
from semseg_ros.core.train import loop
from semseg_ros.core.train.augment import SegmentationSamples
from semseg_ros.tools import train as train_tool
import synthetic
import torch
import yaml

# The base model of the tool tests knows three of the five synthetic classes (other names).
BASE_CLASSES = {'name': 'base', 'ignore_id': 3, 'classes': [
    {'id': 0, 'name': 'Ground', 'color': [90, 90, 90]},
    {'id': 1, 'name': 'Disc', 'color': [220, 40, 40]},
    {'id': 2, 'name': 'Box', 'color': [40, 200, 40]},
    {'id': 3, 'name': 'unlabelled', 'color': [0, 0, 0]}]}


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    """Draw a train and a val folder of synthetic scenes, with different seeds."""
    root = tmp_path_factory.mktemp('scenes')
    return (synthetic.draw_dataset(root / 'train', 24, seed=1),
            synthetic.draw_dataset(root / 'val', 12, seed=2))


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one torch thread: on a shared CPU it is many times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tinynet_backend():
    """Register the test backend 'tinynet' (synthetic.build) in the model registry."""
    registry.register('tinynet', 'synthetic:build')
    yield
    registry._BACKENDS.pop('tinynet', None)


def test_a_random_net_learns_the_scenes(scenes, tmp_path):
    classes = synthetic.shapes()
    net = synthetic.TinyNet()
    size = (64, 48)
    train = SegmentationSamples(dataset.pairs(scenes[0]), classes, net.preprocess, size,
                                train=True, seed=0)
    val = SegmentationSamples(dataset.pairs(scenes[1]), classes, net.preprocess, size,
                              train=False)
    untrained = loop.evaluate(net, torch.utils.data.DataLoader(
        val, batch_size=4, collate_fn=loop.collate_eval), len(classes), classes.ignore_id,
        torch.device('cpu')).mean_iou()
    config = loop.TrainConfig(epochs=6, batch=4, lr=5e-3, progress=False)
    history = loop.fit(net, train, val, tmp_path, config, log=lambda *_: None)
    assert untrained < 0.35
    assert history[0]['epoch'] == 0
    assert history[0]['val_miou'] == pytest.approx(untrained, abs=1e-4)
    assert history[-1]['train_loss'] < 0.5 * history[1]['train_loss']
    assert max(row['val_miou'] for row in history) > 0.75
    rows = list(csv.DictReader(open(tmp_path / loop.CURVES_CSV)))
    assert [int(r['epoch']) for r in rows] == list(range(0, 7))
    assert (tmp_path / loop.CURVES_PNG).stat().st_size > 1000
    best = torch.load(tmp_path / loop.BEST, weights_only=True)
    assert best['val_miou'] == pytest.approx(max(row['val_miou'] for row in history), abs=1e-5)


def test_resume_continues_the_run(scenes, tmp_path):
    classes = synthetic.shapes()
    items = dataset.pairs(scenes[0])[:8]
    make = lambda net, train: SegmentationSamples(  # noqa: E731
        items, classes, net.preprocess, (64, 48), train=train)
    net = synthetic.TinyNet()
    loop.fit(net, make(net, True), make(net, False), tmp_path,
             loop.TrainConfig(epochs=1, progress=False), log=lambda *_: None)
    again = synthetic.TinyNet()
    lines = []
    history = loop.fit(again, make(again, True), make(again, False), tmp_path,
                       loop.TrainConfig(epochs=2, progress=False), resume=True,
                       log=lines.append)
    assert [row['epoch'] for row in history] == [0, 1, 2]
    assert lines[0].startswith('resumed after epoch 1')
    with pytest.raises(FileNotFoundError, match='--resume'):
        loop.fit(again, make(again, True), make(again, False), tmp_path / 'new',
                 loop.TrainConfig(epochs=1, progress=False), resume=True)


def test_time_limit_stops_the_run(scenes, tmp_path):
    classes = synthetic.shapes()
    net = synthetic.TinyNet()
    items = dataset.pairs(scenes[0])
    train = SegmentationSamples(items, classes, net.preprocess, (64, 48), train=True)
    val = SegmentationSamples(items[:2], classes, net.preprocess, (64, 48), train=False)
    history = loop.fit(net, train, val, tmp_path,
                       loop.TrainConfig(minutes=0.001, batch=2, progress=False),
                       log=lambda *_: None)
    # The base, then one partial epoch (at least one step), validated and saved.
    assert [row['epoch'] for row in history] == [0, 1]
    assert (tmp_path / loop.LAST).is_file()


def test_class_mapping_by_name_and_synonym():
    cityscapes = class_sets.load('cityscapes')
    camvid = class_sets.load('camvid')
    mapping = heads.class_mapping(cityscapes.names, camvid.names)
    assert mapping == {
        'Sky': 'sky', 'Building': 'building', 'Pole': 'pole', 'Road': 'road',
        'Pavement': 'sidewalk', 'Tree': 'vegetation', 'SignSymbol': 'traffic sign',
        'Fence': 'fence', 'Car': 'car', 'Pedestrian': 'person', 'Bicyclist': 'rider',
        'Unlabelled': 'background'}
    table = heads.scoring_table(cityscapes.names, camvid.names, mapping)
    scored = {cityscapes.names[b]: camvid.names[t] if t >= 0 else None
              for b, t in enumerate(table)}
    assert scored['wall'] == 'Building' and scored['traffic light'] == 'SignSymbol'
    assert scored['truck'] == 'Car' and scored['motorcycle'] == 'Bicyclist'
    assert scored['terrain'] is None and scored['train'] is None
    custom = heads.class_mapping(cityscapes.names, camvid.names, {'Tree': 'terrain',
                                                                  'Car': None})
    assert custom['Tree'] == 'terrain' and custom['Car'] is None
    with pytest.raises(Exception, match='not a class of the base model'):
        heads.class_mapping(cityscapes.names, camvid.names, {'Tree': 'forest'})


def test_adapted_head_keeps_shared_class_weights():
    base_classes = class_sets.from_dict(BASE_CLASSES)
    classes = synthetic.shapes()
    base = synthetic.TinyNet(len(base_classes)).eval()
    mapping = heads.class_mapping(base_classes.names, classes.names)
    assert mapping == {'ground': 'Ground', 'disc': 'Disc', 'box': 'Box', 'bar': None,
                       'void': 'unlabelled'}
    adapted, layer = heads.adapt_head(base, base_classes, classes, mapping)
    assert layer == 'head' and adapted.num_classes == 5
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        before, after = base.logits(x), adapted.logits(x)
    for new, old in ((0, 0), (1, 1), (2, 2), (4, 3)):
        assert torch.allclose(after[:, new], before[:, old])
    assert not torch.allclose(after[:, 3], before[:, 0])
    assert base.num_classes == 4  # the base model is left as it was


def test_espnetv2_head_adapts_to_camvid(espnetv2_weights):
    base = registry.create_model('espnetv2', weights=str(espnetv2_weights), download=False)
    cityscapes, camvid = class_sets.load('cityscapes'), class_sets.load('camvid')
    mapping = heads.class_mapping(cityscapes.names, camvid.names)
    adapted, layer = heads.adapt_head(base, cityscapes, camvid, mapping)
    assert layer == 'bu_dec_l4.merge_layer.3'
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before, after = base.logits(x), adapted.logits(x)
    assert after.shape[1] == 12
    assert torch.allclose(after[:, 3], before[:, 0])  # Road <- road


def test_export_round_trip_gives_the_trained_labels(scenes, tmp_path):
    classes = synthetic.shapes()
    net = synthetic.TinyNet()
    items = dataset.pairs(scenes[1])
    samples = SegmentationSamples(items, classes, net.preprocess, (64, 48), train=True)
    loop.fit(net, samples, SegmentationSamples(items[:2], classes, net.preprocess, (64, 48),
                                               train=False),
             tmp_path / 'run', loop.TrainConfig(epochs=1, progress=False),
             log=lambda *_: None)
    card_path = export.export_model_dir(net, classes, tmp_path / 'out', (64, 48),
                                        {'base_model': 'tinynet'})
    card = read_card(card_path)
    assert card.format == 'torchscript' and card.num_classes == 5
    assert card.preprocess['input_size'] == [64, 48]
    assert card.provenance['tool'] == 'semseg-ros-train'
    loaded, how = train_tool.load_exported(tmp_path / 'out')
    trained = Segmenter(net, classes, device='cpu', input_size=(64, 48), warmup=False)
    exported = Segmenter(loaded, classes, device='cpu', warmup=False)
    assert exported.input_size == (64, 48)
    for image, _ in items[:4]:
        frame = [Frame(dataset.read_image(image), 'bgr')]
        expected = trained.process(frame, ('label',))[0]['label']
        got = exported.process(frame, ('label',))[0]['label']
        assert np.array_equal(got, expected), how


def write_base(tmp_path):
    """Write the base class set, random TinyNet weights and a params file naming them."""
    classes_yaml = tmp_path / 'base_classes.yaml'
    classes_yaml.write_text(yaml.safe_dump(BASE_CLASSES))
    torch.manual_seed(3)
    weights = tmp_path / 'base.pt'
    torch.save(synthetic.TinyNet(4).state_dict(), weights)
    return synthetic.base_params(tmp_path, classes_yaml, weights)


def test_tool_trains_exports_and_gates(scenes, tmp_path, tinynet_backend, monkeypatch):
    params = write_base(tmp_path)
    out = tmp_path / 'OUT'
    calls = []
    from semseg_ros import deploy

    def fake_deploy(*args, **kwargs):
        calls.append((args, kwargs))
        return deploy.DeployResult(True, '', 0.5, {})

    monkeypatch.setattr(deploy, 'deploy', fake_deploy)
    code = train_tool.main([str(scenes[0]), str(out), '--params', str(params), '--val',
                            str(scenes[1]), '--epochs', '4', '--lr', '5e-3', '--device', 'cpu',
                            '--no-progress', '--deploy', '/semseg'])
    assert code == 0
    card = read_card(out)
    assert card.num_classes == 5 and card.provenance['metrics']['gate'] == 'passed'
    mapping = yaml.safe_load((out / 'train' / 'class_mapping.yaml').read_text())
    assert mapping['head_init']['bar'] is None and mapping['head_init']['disc'] == 'Disc'
    assert mapping['base_scored_as']['unlabelled'] == 'void'
    gate = yaml.safe_load((out / 'train' / 'gate.json').read_text())
    assert gate['passed'] and gate['trained']['miou'] > gate['base']['miou']
    assert gate['trained']['miou'] > 0.5
    for name in ('gate.md', 'gate.png', 'curves.csv', 'curves.png', 'last.pt', 'best.pt'):
        assert (out / 'train' / name).is_file(), name
    assert calls == [(('/semseg', str(out.resolve())), {'timeout': 30.0})]


def test_gate_failure_never_deploys(scenes, tmp_path, tinynet_backend, monkeypatch, capsys):
    params = write_base(tmp_path)
    calls = []
    from semseg_ros import deploy
    monkeypatch.setattr(deploy, 'deploy', lambda *a, **k: calls.append(a))
    code = train_tool.main([str(scenes[0]), str(tmp_path / 'OUT'), '--params', str(params),
                            '--val', str(scenes[1]), '--epochs', '1', '--limit', '4',
                            '--device', 'cpu', '--no-progress', '--gate-margin', '1.0',
                            '--deploy', '/semseg'])
    assert code == train_tool.GATE_FAILED
    assert calls == []
    out = capsys.readouterr().out
    assert 'Gate FAILED' in out and 'is NOT deployed to /semseg' in out
    assert read_card(tmp_path / 'OUT').provenance['metrics']['gate'] == 'failed'


def test_tool_refuses_color_masks_before_training(scenes, tmp_path, tinynet_backend, capsys):
    params = write_base(tmp_path)
    bad = tmp_path / 'bad'
    synthetic.draw_dataset(bad, 4, seed=5)
    label = dataset.pairs(bad)[2][1]
    ids = dataset.read_label(label, synthetic.shapes())
    import cv2
    cv2.imwrite(str(label), synthetic.shapes().colors[ids][:, :, ::-1])
    code = train_tool.main([str(bad), str(tmp_path / 'OUT'), '--params', str(params),
                            '--epochs', '1', '--no-progress'])
    assert code == 1
    err = capsys.readouterr().err
    assert 'a color mask' in err and label.name in err and '--format color' in err
    assert not (tmp_path / 'OUT' / 'train' / 'last.pt').exists()


# Run in a process where the ROS packages cannot be imported, as on a GPU machine without ROS.
NO_ROS = """
import sys
BLOCKED = ('rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'rosbags', 'ament_index_python')
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is blocked: no ROS here')
sys.meta_path.insert(0, Block())
import torch
torch.set_num_threads(1)
from semseg_ros.core.models import registry
from semseg_ros.tools import train
registry.register('tinynet', 'synthetic:build')
sys.exit(train.main(sys.argv[1:]))
"""


def test_training_runs_without_ros(scenes, tmp_path):
    import os
    import subprocess
    import sys
    params = write_base(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(synthetic.Path(synthetic.__file__).parent), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run(
        [sys.executable, '-c', NO_ROS, str(scenes[0]), str(tmp_path / 'OUT'), '--params',
         str(params), '--val', str(scenes[1]), '--epochs', '1', '--limit', '4',
         '--device', 'cpu', '--no-progress'], capture_output=True, text=True, env=env,
        timeout=300)
    assert result.returncode in (0, train_tool.GATE_FAILED), result.stdout + result.stderr
    assert read_card(tmp_path / 'OUT').num_classes == 5


def test_ultralytics_path_ends_in_the_same_model_directory(scenes, tmp_path, tinynet_backend):
    pytest.importorskip('ultralytics')
    params = write_base(tmp_path)
    out = tmp_path / 'OUT'
    code = train_tool.main([str(scenes[0]), str(out), '--params', str(params), '--val',
                            str(scenes[1]), '--ultralytics', 'yolo26n-sem.yaml', '--epochs', '2',
                            '--limit', '8', '--batch', '4', '--device', 'cpu', '--no-progress'])
    assert code in (0, train_tool.GATE_FAILED)
    data = yaml.safe_load((out / 'train' / 'ultralytics_data' / 'data.yaml').read_text())
    assert data['names'] == {0: 'ground', 1: 'disc', 2: 'box', 3: 'bar'}
    assert data['label_mapping'][4] == 'ignore_label'
    card = read_card(out)
    assert card.format == 'torchscript' and card.num_classes == 4
    assert card.preprocess['input_size'] == [64, 64] and card.preprocess['size_divisor'] == 32
    gate = yaml.safe_load((out / 'train' / 'gate.json').read_text())
    assert gate['images'] == 8 and 0.0 <= gate['trained']['miou'] <= 1.0
    loaded, _ = train_tool.load_exported(out)
    assert loaded.num_classes == 4

"""Model cards: write, read back, validation errors that name the field, finding a card."""

import pytest
from semseg_ros.core.models.base import ModelError, Preprocess
from semseg_ros.core.models.card import card_class_set, CARD_FILE, card_model_path
from semseg_ros.core.models.card import CardError, find_card, ModelCard
from semseg_ros.core.models.card import preprocess_to_dict, read_card, write_card
import yaml

PRE = {'channel_order': 'bgr', 'mean': [110.33, 108.41, 105.03], 'std': [72.13, 72.69, 69.90],
       'scale': 0.00392157, 'input_size': [480, 360], 'size_divisor': 1}


def _card(**kw):
    fields = {'file': 'model.ts', 'format': 'torchscript', 'num_classes': 12,
              'classes': 'camvid', 'preprocess': dict(PRE),
              'provenance': {'trained_on': 'CamVid train (367)', 'metrics': {'miou': 0.65}}}
    fields.update(kw)
    return ModelCard(**fields)


def test_write_read_round_trip(tmp_path):
    path = write_card(_card(), tmp_path)
    assert path == tmp_path / CARD_FILE
    data = yaml.safe_load(path.read_text())
    assert list(data)[0] == 'semseg_ros_model_card' and data['semseg_ros_model_card'] == 1
    card = read_card(tmp_path)
    assert card == _card()
    pre = card.preprocessing()
    assert pre == Preprocess('bgr', (110.33, 108.41, 105.03), (72.13, 72.69, 69.90),
                             0.00392157, (480, 360), 1)
    assert preprocess_to_dict(pre) == dict(PRE, resize='stretch')
    assert card.output_kind == 'logits' and card.output_name is None
    assert card_class_set(card).name == 'camvid'
    assert card_model_path(card, path) == tmp_path / 'model.ts'


def test_inline_classes_with_id_space(tmp_path):
    classes = {'name': 'lanes', 'id_space': 'custom', 'ignore_id': 2,
               'classes': [{'id': 0, 'name': 'bg', 'color': [0, 0, 0]},
                           {'id': 1, 'name': 'lane', 'color': [255, 0, 0], 'drivable': True},
                           {'id': 2, 'name': 'void', 'color': [9, 9, 9]}]}
    output = {'kind': 'class_ids', 'name': 'labels'}
    write_card(_card(num_classes=3, classes=classes, output=output), tmp_path / 'net.yaml')
    card = read_card(tmp_path / 'net.yaml')
    assert card.id_space == 'custom' and card.output_kind == 'class_ids'
    assert card.output_name == 'labels'
    cs = card_class_set(card)
    assert cs.names == ('bg', 'lane', 'void') and cs.drivable == (1,) and cs.ignore_id == 2


def test_class_set_path_relative_to_card(tmp_path):
    (tmp_path / 'sets').mkdir()
    (tmp_path / 'sets' / 'two.yaml').write_text(
        'name: two\nclasses:\n  - {id: 0, name: a, color: [0, 0, 0]}\n'
        '  - {id: 1, name: b, color: [1, 1, 1]}\n')
    write_card(_card(num_classes=2, classes='sets/two.yaml'), tmp_path)
    assert card_class_set(read_card(tmp_path), tmp_path).names == ('a', 'b')


@pytest.mark.parametrize('change, words', [
    ({'format': 'caffe'}, ['format', 'caffe']),
    ({'num_classes': 0}, ['num_classes']),
    ({'num_classes': 5}, ['classes', '12 classes', 'num_classes is 5']),
    ({'classes': 'nosuchset'}, ['classes', 'nosuchset']),
    ({'preprocess': {'channel_order': 'rgb'}}, ['preprocess', 'missing', 'mean']),
    ({'preprocess': dict(PRE, mean=[1, 2])}, ['preprocess.mean', '3 numbers']),
    ({'preprocess': dict(PRE, std=[1, 0, 1])}, ['preprocess', 'std']),
    ({'preprocess': dict(PRE, channel_order='hsv')}, ['channel_order', 'hsv']),
    ({'preprocess': dict(PRE, input_size=[480])}, ['input_size']),
    ({'preprocess': dict(PRE, colour='x')}, ['unknown', 'colour']),
    ({'output': {'kind': 'argmax'}}, ['output.kind', 'argmax']),
    ({'file': ''}, ['file']),
    ({'options': 'x'}, ['options']),
])
def test_invalid_fields_are_named(tmp_path, change, words):
    with pytest.raises(CardError) as err:
        write_card(_card(**change), tmp_path)
    for word in words:
        assert word in str(err.value)
    assert isinstance(err.value, ModelError)


def test_read_errors(tmp_path):
    path = tmp_path / 'm.yaml'
    with pytest.raises(CardError, match='does not exist'):
        read_card(path)
    path.write_text('file: a.onnx\n')
    with pytest.raises(CardError, match='not a model card'):
        read_card(path)
    path.write_text('semseg_ros_model_card: 7\n')
    with pytest.raises(CardError, match='version 7'):
        read_card(path)
    data = _card().to_dict()
    data['colour'] = 1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CardError, match='unknown key.*colour'):
        read_card(path)
    del data['colour'], data['format']
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CardError, match='missing format'):
        read_card(path)
    path.write_text('semseg_ros_model_card: [1\n')
    with pytest.raises(CardError, match='cannot read'):
        read_card(path)


def test_resize_mode_round_trips_and_is_checked(tmp_path):
    write_card(_card(preprocess=dict(PRE, resize='letterbox')), tmp_path)
    assert read_card(tmp_path).preprocessing().resize == 'letterbox'
    with pytest.raises(CardError, match="resize: 'stretch' or 'letterbox', not 'crop'"):
        write_card(_card(preprocess=dict(PRE, resize='crop')), tmp_path)
    path = tmp_path / CARD_FILE
    path.write_text(path.read_text().replace('letterbox', 'crop'))
    with pytest.raises(CardError, match="resize: 'stretch' or 'letterbox', not 'crop'"):
        read_card(tmp_path)


def test_find_card(tmp_path):
    assert find_card('') is None
    assert find_card(tmp_path) is None
    write_card(_card(), tmp_path)
    assert find_card(tmp_path) == tmp_path / CARD_FILE
    net = tmp_path / 'net.onnx'
    net.write_bytes(b'x')
    assert find_card(net) is None
    # A YAML beside the file that is not a card (an ultralytics config) is not taken.
    (tmp_path / 'net.yaml').write_text('nc: 80\n')
    assert find_card(net) is None
    write_card(_card(file='net.onnx', format='onnx'), tmp_path / 'net.yaml')
    assert find_card(net) == tmp_path / 'net.yaml'
    assert find_card(tmp_path / 'net.yaml') == tmp_path / 'net.yaml'
    assert find_card(tmp_path / 'other.yaml') is None


def test_save_helpers_write_a_card(tmp_path):
    import torch
    from semseg_ros.core.models import torchscript
    from semseg_ros.core.models.loader import load_model

    pre = Preprocess('bgr', (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 0.5, None, 2)
    net = torch.nn.Conv2d(3, 12, 1)
    written = torchscript.save(net, str(tmp_path / 'net.ts'), 12, pre, 'camvid', card=True,
                               provenance={'tool': 'test'})
    assert written == tmp_path / 'net.yaml'
    card = read_card(written)
    assert card.file == 'net.ts' and card.format == 'torchscript' and card.classes == 'camvid'
    assert card.preprocessing() == pre and card.provenance == {'tool': 'test'}
    model = load_model('auto', str(tmp_path / 'net.ts'))
    assert model.card == card and model.preprocess == pre and model.class_set == 'camvid'
    # Into a model directory.
    (tmp_path / 'OUT').mkdir()
    written = torchscript.save(net, str(tmp_path / 'OUT' / 'model.ts'), 12, pre, card=tmp_path
                               / 'OUT')
    assert written == tmp_path / 'OUT' / CARD_FILE and read_card(written).file == 'model.ts'
    assert load_model('auto', str(tmp_path / 'OUT')).num_classes == 12

"""Tests of the model registry."""

import subprocess
import sys

import pytest
from semseg_ros.core import models
from semseg_ros.core.models import available_backends, create_model, ModelError
from semseg_ros.core.models import registry
from semseg_ros.core.weights import WeightsError
import torch


def test_available_backends():
    names = available_backends()
    assert names == sorted(names)
    assert {'espnet', 'espnetv2'} <= set(names)


def test_reexports():
    for name in ('create_model', 'available_backends', 'SegmentationModel', 'Preprocess',
                 'ModelError'):
        assert hasattr(models, name)


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ModelError) as err:
        create_model('no-such-net')
    msg = str(err.value)
    assert 'no-such-net' in msg
    for name in available_backends():
        assert name in msg


def test_unknown_option_is_named():
    with pytest.raises(ModelError) as err:
        create_model('espnet', weigths='x.pth', colour=1)
    msg = str(err.value)
    assert 'weigths' in msg and 'colour' in msg and 'weights' in msg


def test_import_is_lazy():
    code = ('import sys; import semseg_ros.core.models as m; m.available_backends(); '
            "print(sorted(k for k in sys.modules if k.startswith('semseg_ros.core.models.')))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout
    assert 'espnet' not in out
    assert 'registry' in out


def test_missing_module_is_a_model_error(monkeypatch):
    monkeypatch.setitem(registry._BACKENDS, 'ghost', 'semseg_ros.no_such_module:build')
    with pytest.raises(ModelError, match='ghost'):
        create_model('ghost')


def test_builder_must_return_a_model(monkeypatch):
    monkeypatch.setitem(registry._BACKENDS, 'bad', 'torch.nn:Identity')
    with pytest.raises(ModelError, match='not a SegmentationModel'):
        create_model('bad')


def test_register_validates_target():
    with pytest.raises(ValueError):
        registry.register('x', 'no_colon')


def test_espnet_missing_weights_offline(tmp_path):
    with pytest.raises(WeightsError) as err:
        create_model('espnet', cache=str(tmp_path), download=False)
    assert 'espnet_p_2_q_8_camvid.pth' in str(err.value)


def test_espnet_with_explicit_weights(espnet_weights):
    model = create_model('espnet', weights=str(espnet_weights))
    assert model.name == 'espnet' and model.num_classes == 12
    assert not model.training
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 12, 64, 64)


def test_espnet_rejects_wrong_state_dict(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'w': torch.zeros(1)}, path)
    with pytest.raises(ModelError, match='other.pth'):
        create_model('espnet', weights=str(path))


def test_espnet_accepts_its_own_saved_state_dict(tmp_path):
    from semseg_ros.core.models.espnet import ESPNet

    path = tmp_path / 'mine.pth'
    torch.manual_seed(1)
    net = ESPNet()
    torch.save(dict(net.state_dict()), path)
    model = create_model('espnet', weights=str(path))
    torch.testing.assert_close(model.state_dict()['classifier.weight'],
                               net.state_dict()['classifier.weight'])

"""Settings -> model, class set and Segmenter (shared by the node and the tools)."""

import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.core import pipeline
from semseg_ros.core import settings as cfg
from semseg_ros.core.models import ModelError
from semseg_ros.core.models import registry
from semseg_ros.core.models.base import ModuleModel
from semseg_ros.core.models.base import Preprocess
import torch

SEEN = {}


def build_probe(options):
    """Record the options a backend receives; return a 3-class identity model."""
    SEEN.clear()
    SEEN.update(options)
    model = ModuleModel(torch.nn.Identity(), 3, Preprocess(), name='probe')
    if options.get('own_classes'):
        model.classes = class_sets.from_dict({'name': 'own', 'classes': [
            {'id': i, 'name': n, 'color': [i, i, i]} for i, n in enumerate('abc')]})
    return model


@pytest.fixture(autouse=True)
def probe_backend():
    registry.register('probe', 'test_pipeline:build_probe')
    yield
    registry._BACKENDS.pop('probe', None)


def test_options_reach_the_backend():
    s = cfg.from_values({'model.backend': 'probe', 'model.weights': 'w.pt',
                         'model.options': '{arch: unet, classes: 3}', 'warmup': False})
    seg = pipeline.build_segmenter(s)
    assert SEEN == {'arch': 'unet', 'classes': 3, 'weights': 'w.pt'}
    assert seg.classes.name == 'generic'


def test_the_classes_a_model_carries_are_used():
    s = cfg.from_values({'model.backend': 'probe', 'model.options': '{own_classes: true}',
                         'drivable_classes': ['b'], 'warmup': False})
    seg = pipeline.build_segmenter(s)
    assert seg.classes.names == ('a', 'b', 'c') and seg.classes.drivable == (1,)


def test_unknown_backend_option_is_rejected():
    s = cfg.from_values({'model.backend': 'torchscript', 'model.options': '{arch: unet}'})
    with pytest.raises(ModelError, match='unknown option'):
        pipeline.build_model(s)


def test_allow_pickle_only_goes_to_backends_that_load_pickles():
    s = cfg.from_values({'model.backend': 'probe', 'model.allow_pickle': True})
    pipeline.build_model(s)
    assert 'allow_pickle' not in SEEN

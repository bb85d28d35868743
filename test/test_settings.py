"""Parameter specs and validation, without ROS."""

from pathlib import Path

import pytest
from semseg_ros.core import settings
from semseg_ros.core.settings import SettingsError

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'semseg.yaml'


def test_params_file_matches_the_specs():
    s = settings.load_params_file(CONFIG)
    assert s.backend == 'espnet'
    assert s.outputs == settings.OUTPUT_NAMES
    assert s.input_reliability == 'best_effort' and s.output_reliability == 'reliable'
    assert s.drivable_classes == ()
    assert s.input_size is None


def test_every_parameter_has_a_description():
    for spec in settings.PARAMETERS:
        assert len(spec.description) > 20, spec.name


def test_defaults_are_valid():
    assert settings.from_values({}).device == 'auto'


@pytest.mark.parametrize('name,value,message', [
    ('precision', 'fp8', 'parameter precision: .fp8. is not one of fp32, fp16, bf16'),
    ('overlay_alpha', 1.5, r'parameter overlay_alpha: 1.5 is outside 0.0..1.0'),
    ('qos.input.depth', 0, r'parameter qos.input.depth: 0 is outside'),
    ('qos.input.reliability', 'sometimes', 'parameter qos.input.reliability'),
    ('device', 'gpu', "parameter device: 'gpu' is not"),
    ('device', 'cuda:x', "parameter device: 'cuda:x'"),
    ('model.input_width', 'wide', 'parameter model.input_width: expected int'),
    ('warmup', 1, 'parameter warmup: expected bool'),
    ('model.backend', ' ', 'parameter model.backend: empty'),
    ('no.such', 1, 'unknown parameter'),
])
def test_invalid_values_name_the_parameter(name, value, message):
    with pytest.raises(SettingsError, match=message):
        settings.from_values({name: value})


def test_input_size_needs_both():
    with pytest.raises(SettingsError, match='set both or neither'):
        settings.from_values({'model.input_width': 320})
    s = settings.from_values({'model.input_width': 320, 'model.input_height': 240})
    assert s.input_size == (320, 240)


def test_outputs_and_drivable_lists():
    s = settings.from_values({'outputs.overlay': False, 'drivable_classes': ['Road', ' ']})
    assert 'overlay' not in s.outputs and 'label' in s.outputs
    assert s.drivable_classes == ('Road',)


def test_int_accepted_for_float():
    assert settings.from_values({'overlay_alpha': 1}).overlay_alpha == 1.0

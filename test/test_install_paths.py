"""Installed data lookup without an ament index, camera_info names, demo summaries."""

import importlib.util
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
from semseg_ros.core import classes
from semseg_ros.core import names
from semseg_ros.core import paths
from semseg_ros.core import settings
from semseg_ros.tools import demo

ROOT = Path(__file__).resolve().parents[1]


def installed_prefix(tmp_path):
    """Return a prefix with share/semseg_ros/config holding a params file and one class set."""
    prefix = tmp_path / 'prefix'
    config = prefix / 'share' / 'semseg_ros' / 'config'
    (config / 'classes').mkdir(parents=True)
    shutil.copy(ROOT / 'config' / 'semseg.yaml', config / 'semseg.yaml')
    shutil.copy(ROOT / 'config' / 'classes' / 'camvid.yaml', config / 'classes' / 'road.yaml')
    return prefix


def test_class_sets_and_params_found_in_the_interpreter_prefix(tmp_path, monkeypatch):
    # .venv/bin/semseg-ros-eval run without an activated venv: no AMENT_PREFIX_PATH, but
    # sys.prefix is the venv, whose share/semseg_ros holds the installed config.
    prefix = installed_prefix(tmp_path)
    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    monkeypatch.delenv('SEMSEG_ROS_CLASSES_PATH', raising=False)
    monkeypatch.setattr(sys, 'prefix', str(prefix))
    share = prefix / 'share' / 'semseg_ros'
    assert paths.share_dirs()[0] == share
    assert classes.find('road') == share / 'config' / 'classes' / 'road.yaml'
    assert 'road' in classes.available()
    assert settings.find_params_file() == str(share / 'config' / 'semseg.yaml')
    with pytest.raises(classes.ClassSetError, match='one of: .*road'):
        classes.find('no_such_set')


def test_prefix_found_from_the_package_location(tmp_path, monkeypatch):
    # A colcon install or a system pip install: <prefix>/lib/pythonX.Y/site-packages/semseg_ros.
    prefix = installed_prefix(tmp_path)
    package = prefix / 'lib' / 'python3.12' / 'site-packages' / 'semseg_ros' / 'core'
    package.mkdir(parents=True)
    shutil.copy(Path(paths.__file__), package / 'paths.py')
    spec = importlib.util.spec_from_file_location('installed_paths', package / 'paths.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    monkeypatch.setattr(sys, 'prefix', str(tmp_path / 'elsewhere'))
    assert prefix / 'share' / 'semseg_ros' in module.share_dirs()
    assert module.find_data('config', 'classes', 'road.yaml') == \
        prefix / 'share' / 'semseg_ros' / 'config' / 'classes' / 'road.yaml'


@pytest.mark.parametrize('image, info', [
    ('/cam/image_raw', '/cam/camera_info'),
    ('image', 'camera_info'),
    ('front/image', 'front/camera_info'),
    ('~/left/image_rect', '~/left/camera_info'),
    ('/image', '/camera_info'),
])
def test_camera_info_follows_the_image_topic(image, info):
    assert names.camera_info_topic(image) == info


@pytest.mark.parametrize('bad', ['', '/cam/', '  '])
def test_camera_info_of_a_bad_topic(bad):
    with pytest.raises(ValueError, match='not an image topic'):
        names.camera_info_topic(bad)


@pytest.mark.parametrize('path', sorted((ROOT / 'launch').glob('*.launch.py')),
                         ids=lambda p: p.name)
def test_launch_files_remap_camera_info_with_the_image(path):
    text = path.read_text()
    assert "('camera_info', " in text and 'camera_info_topic(' in text


class Recorder:
    """What demo.summary reads of the viewer."""

    def __init__(self, count):
        self.received = [(100.0 + i * 0.1, 100.0 + i * 0.1 - 0.03) for i in range(count)]
        self.sizes = {(480, 360)}
        self.folder = Path('demo_output')


def test_demo_summary_says_when_most_frames_were_lost():
    assert 'lost' not in demo.summary(Recorder(98), 100)
    lost = demo.summary(Recorder(5), 100)
    assert lost.startswith('semseg demo: 5/100 frames segmented (480x360), 10.0 Hz, '
                           'latency p50 30 ms')
    assert 'most frames were lost (95 of 100 never came back)' in lost
    assert 'nothing came back' in demo.summary(Recorder(0), 100)


def test_demo_camera_command_has_no_empty_override():
    # The demo passes a source only when there is one: an empty `-p source:=` is not a
    # valid override and stopped the camera source of every clone without ../shared.
    _, camera = demo.commands(demo.parse_args(['--frames', '3']))
    assert not any(a.startswith('source:=') for a in camera)
    _, camera = demo.commands(demo.parse_args(['--source', 'drive.mp4']))
    assert 'source:=drive.mp4' in camera


def make_dry_run(tmp_path, *args, path_first=None):
    """Return the commands `make -n` would run for a venv in tmp_path (nothing is run)."""
    env = {'PATH': os.pathsep.join(([str(path_first)] if path_first else [])
                                   + ['/usr/local/bin', '/usr/bin', '/bin']),
           'HOME': str(tmp_path)}
    done = subprocess.run(['make', '-n', '-B', 'venv', f'VENV={tmp_path / "venv"}', *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fake_python(folder, name, works):
    """Write an executable `name` that succeeds (a Python) or fails (a dead pyenv shim)."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text('#!/bin/sh\nexit 0\n' if works else '#!/bin/sh\nexit 127\n')
    path.chmod(0o755)


def test_make_venv_upgrades_pip_before_the_requirements(tmp_path):
    lines = make_dry_run(tmp_path, 'PYTHON=python3.12').splitlines()
    venv = next(i for i, line in enumerate(lines) if 'python3.12 -m venv' in line)
    pip = next(i for i, line in enumerate(lines) if "'pip>=23.1'" in line)
    requirements = next(i for i, line in enumerate(lines) if '-r requirements.txt' in line)
    assert venv < pip < requirements


def test_make_takes_python311_or_python312(tmp_path):
    bin_dir = tmp_path / 'bin'
    fake_python(bin_dir, 'python3.11', works=False)
    fake_python(bin_dir, 'python3.12', works=True)
    assert 'python3.12 -m venv' in make_dry_run(tmp_path, path_first=bin_dir)
    fake_python(bin_dir, 'python3.11', works=True)
    assert 'python3.11 -m venv' in make_dry_run(tmp_path, path_first=bin_dir)
    # An explicit choice wins.
    assert '/opt/py/bin/python3.12 -m venv' in make_dry_run(
        tmp_path, 'PYTHON=/opt/py/bin/python3.12', path_first=bin_dir)

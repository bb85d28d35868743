"""Launch files and example configs: well formed, every argument described, params valid."""

import ast
from pathlib import Path

import pytest
from semseg_ros.core import settings

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
CONFIGS = [ROOT / 'config' / 'semseg.yaml'] + sorted((ROOT / 'config' / 'examples').glob('*.yaml'))


def calls(tree, name):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, 'id', getattr(node.func, 'attr', None)) == name]


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_arguments_are_described(path):
    tree = ast.parse(path.read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert 'generate_launch_description' in functions
    arguments = calls(tree, 'DeclareLaunchArgument')
    assert arguments
    for call in arguments:
        keywords = {k.arg: k.value for k in call.keywords}
        assert 'description' in keywords, ast.dump(call.args[0])
        assert 'default_value' in keywords, ast.dump(call.args[0])
    text = path.read_text()
    assert 'subprocess' not in text and 'eval(' not in text


def test_main_launch_file_runs_our_executable():
    text = (ROOT / 'launch' / 'semseg.launch.py').read_text()
    tree = ast.parse(text)
    node = calls(tree, 'Node')[0]
    keywords = {k.arg: k.value for k in node.keywords}
    assert ast.literal_eval(keywords['package']) == 'semseg_ros'
    executable = ast.literal_eval(keywords['executable'])
    setup = (ROOT / 'setup.py').read_text()
    assert f"'{executable} = semseg_ros.node:main'" in setup
    for name in ('params_file', 'namespace', 'image_topic', 'log_level'):
        assert f"'{name}'" in text


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_params_files_are_valid(path):
    s = settings.load_params_file(path)
    assert s.backend


def test_example_configs_do_what_their_names_say():
    examples = ROOT / 'config' / 'examples'
    assert settings.load_params_file(examples / 'three_cameras.yaml').cameras == \
        ('front', 'left', 'rear')
    assert settings.load_params_file(examples / 'compressed.yaml').input_transport == 'compressed'

"""precision int8: NNCF quantization for OpenVINO, its mIoU gate, cache and errors (no ROS)."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.core import settings as cfg
from semseg_ros.core.engine import Frame, Segmenter
from semseg_ros.core.models.base import Preprocess, SegmentationModel
from semseg_ros.core.runtimes import int8, RuntimeSetupError
from test_runtimes import Log
import torch
from torch import nn

pytest.importorskip('openvino')
pytest.importorskip('nncf')

CLASSES = 3
COLORS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)


class Blocks(SegmentationModel):
    """Three classes, one per dominant color channel: a small net with fixed, clear weights."""

    num_classes = CLASSES
    preprocess = Preprocess(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), size_divisor=4)
    name = 'blocks'

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, CLASSES, 1))
        with torch.no_grad():
            # Start from the identity on colors, plus small random texture filters.
            for conv in self.body[:3:2]:
                conv.weight.mul_(0.05)
                conv.bias.zero_()
            self.body[0].weight[:3, :, 1, 1] += torch.eye(3)
            self.body[2].weight[:3, :3, 1, 1] += torch.eye(3)
            self.body[4].weight.zero_()
            self.body[4].weight[:, :3, 0, 0] = torch.eye(3) * 4.0
            self.body[4].bias.zero_()

    def forward(self, batch):
        return self.body(batch)


def scene(seed, size=(64, 48)):
    """Return (RGB frame, class ids): colored blocks with some noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    ids = np.kron(rng.integers(0, CLASSES, (h // 8, w // 8)), np.ones((8, 8), np.int64))
    rgb = COLORS[ids].astype(np.int16) + rng.integers(-30, 30, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), ids.astype(np.uint8)


def write_frames(folder, seeds, labels=False):
    """Write scenes as PNGs (images/ and labels/ when labelled); return the folder."""
    image_dir = folder / 'images' if labels else folder
    image_dir.mkdir(parents=True)
    if labels:
        (folder / 'labels').mkdir()
    for seed in seeds:
        rgb, ids = scene(seed)
        cv2.imwrite(str(image_dir / f'f{seed:03d}.png'), rgb[:, :, ::-1])
        if labels:
            cv2.imwrite(str(folder / 'labels' / f'f{seed:03d}.png'), ids)
    return folder


def class_set():
    return class_sets.from_dict({'name': 'blocks', 'classes': [
        {'id': i, 'name': n, 'color': c.tolist()}
        for i, (n, c) in enumerate(zip(('red', 'green', 'blue'), COLORS))]})


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv('SEMSEG_ROS_EXPORT_CACHE', str(tmp_path / 'runtimes'))
    calibration = write_frames(tmp_path / 'calibration', range(24))
    validation = write_frames(tmp_path / 'validation', range(100, 110), labels=True)
    return tmp_path, calibration, validation


def segmenter(log, calibration, validation='', max_drop=0.01, runtime='auto', **kw):
    plan = {'calibration_folder': str(calibration), 'validation_folder': str(validation),
            'max_miou_drop': max_drop, 'calibration_frames': 16}
    return Segmenter(Blocks(), class_set(), device='cpu', precision='int8',
                     input_size=(64, 48), runtime=runtime, warmup=False,
                     report=log.reporter(), int8=plan, **kw)


def records(cache):
    return [json.loads(p.read_text()) for p in sorted((cache / 'int8').glob('*.json'))]


def test_int8_with_labels_is_accepted_cached_and_segments_like_fp32(folders, capfd):
    tmp, calibration, validation = folders
    log = Log()
    seg = segmenter(log, calibration, validation)
    # NNCF's progress bars come as report lines, not on stdout (a node's launch log).
    assert '\u2501' not in capfd.readouterr().out
    assert any(line.startswith('int8: NNCF: Statistics collection 100%') for line in log.info)
    assert seg.runtime.runtime == 'openvino'
    assert 'int8: mIoU' in seg.runtime.reason and 'labels of 10 validation frames' in \
        seg.runtime.reason, seg.runtime.reason
    (record,) = records(tmp / 'runtimes')
    assert record['accepted'] and record['drop'] <= 0.01 and record['calibration_frames'] == 16
    assert record['fp32_miou'] > 0.9, record  # the task is easy: the gate measures something
    (xml,) = (tmp / 'runtimes' / 'int8').glob('*.xml')
    assert 'type="FakeQuantize"' in xml.read_text()  # int8 layers, not an fp32 copy
    # The quantized model's labels match the fp32 torch model's on new scenes.
    reference = Segmenter(Blocks(), class_set(), device='cpu', runtime='torch', warmup=False,
                          input_size=(64, 48))
    same = []
    for seed in range(200, 206):
        rgb, ids = scene(seed)
        got = seg.process([Frame(rgb, 'rgb')], ('label',))[0]['label']
        want = reference.process([Frame(rgb, 'rgb')], ('label',))[0]['label']
        same.append(np.mean(got == want))
        assert np.mean(got == ids) > 0.9
    assert np.mean(same) > 0.98
    # A second start takes the quantized model from the cache: no quantization again.
    log2 = Log()
    again = segmenter(log2, calibration, validation)
    assert any('quantized model from the cache' in line for line in log2.info), log2.info
    assert not any('quantizing' in line for line in log2.info)
    assert again.runtime.reason == seg.runtime.reason
    # The same frames copied again (new file times) keep the key.
    for path in list(calibration.glob('*.png')) + list(validation.rglob('*.png')):
        os.utime(path, (1e9, 1e9))
    log_copy = Log()
    segmenter(log_copy, calibration, validation)
    assert any('quantized model from the cache' in line for line in log_copy.info)
    # New calibration frames are a new quantization (the key covers the files).
    write_frames(calibration / 'more', range(30, 32))
    (calibration / 'more' / 'f030.png').rename(calibration / 'f030.png')
    log3 = Log()
    segmenter(log3, calibration, validation)
    assert any('quantizing' in line for line in log3.info)


def test_progress_bars_become_report_lines_and_other_output_stays(capfd):
    pytest.importorskip('rich')
    import rich
    from semseg_ros.core.runtimes.int8 import progress_to
    lines = []
    with progress_to(lines.append):
        rich.get_console().print('[bold]Statistics collection[/bold] \u2501\u2501\u2501 100% 8/8')
        print('a tool line')  # e.g. a heartbeat the eval tool prints: not held back
    rich.get_console().print('after')
    assert lines == ['int8: NNCF: Statistics collection 100% 8/8']
    assert capfd.readouterr().out == 'a tool line\nafter\n'


def test_without_labels_the_gate_uses_the_fp32_labels(folders):
    tmp, calibration, _ = folders
    log = Log()
    seg = segmenter(log, calibration)
    assert "the fp32 model's labels on 8 held-out calibration frames" in seg.runtime.reason
    (record,) = records(tmp / 'runtimes')
    assert record['fp32_miou'] == pytest.approx(1.0)


def test_a_drop_above_the_limit_runs_fp32_with_a_warning_and_is_remembered(
        folders, monkeypatch):
    tmp, calibration, validation = folders
    real = int8.miou
    calls = []

    def worse(run, items, count, ignore):
        # The fp32 model is measured first; every later (quantized) model loses 0.2.
        calls.append(1)
        return real(run, items, count, ignore) - (0.0 if len(calls) == 1 else 0.2)

    monkeypatch.setattr(int8, 'miou', worse)
    log = Log()
    seg = segmenter(log, calibration, validation)
    assert seg.runtime.runtime == 'openvino'
    assert 'fp32: int8 refused: mIoU' in seg.runtime.reason, seg.runtime.reason
    assert any('runs in fp32 (openvino) instead' in w and 'drop 0.2' in w
               for w in log.warnings), log.warnings
    (record,) = records(tmp / 'runtimes')
    assert not record['accepted'] and record['drop'] == pytest.approx(0.2)
    assert not any(p.suffix == '.xml' for p in (tmp / 'runtimes' / 'int8').iterdir())
    rgb, ids = scene(300)
    assert np.mean(seg.process([Frame(rgb, 'rgb')], ('label',))[0]['label'] == ids) > 0.9
    # Refused once, refused at the next start without quantizing again.
    monkeypatch.setattr(int8, 'miou', real)
    log2 = Log()
    segmenter(log2, calibration, validation)
    assert not any('quantizing' in line for line in log2.info)
    assert any('int8 refused' in w for w in log2.warnings)


def test_int8_settings_and_setup_errors(folders, tmp_path):
    _, calibration, validation = folders
    with pytest.raises(cfg.SettingsError, match='int8.calibration_folder'):
        cfg.from_values({'precision': 'int8'})
    settings = cfg.from_values({'precision': 'int8', 'int8.calibration_folder': 'frames',
                                'int8.max_miou_drop': 0.02})
    assert settings.int8 == {'calibration_folder': 'frames', 'validation_folder': '',
                             'max_miou_drop': 0.02, 'calibration_frames': 64}
    assert cfg.from_values({'int8.calibration_folder': 'x'}).int8 is None  # fp32: unused
    with pytest.raises(cfg.SettingsError, match='outside'):
        cfg.from_values({'int8.max_miou_drop': 2.0})
    empty = tmp_path / 'empty'
    empty.mkdir()
    cases = [
        ({'calibration': empty}, 'holds no image'),
        ({'calibration': tmp_path / 'missing'}, 'is not a folder'),
        ({'calibration': calibration, 'runtime': 'onnxruntime'}, 'runs on OpenVINO on the CPU'),
        ({'calibration': calibration, 'validation': calibration}, 'images/ and labels/'),
    ]
    for case, message in cases:
        with pytest.raises(RuntimeSetupError, match=message):
            segmenter(Log(), case['calibration'], case.get('validation', ''),
                      runtime=case.get('runtime', 'auto'))
    with pytest.raises(RuntimeSetupError, match='fixed input size'):
        Segmenter(Blocks(), class_set(), device='cpu', precision='int8', warmup=False,
                  report=Log().reporter(), int8={'calibration_folder': str(calibration)})
    # Labels outside the class set name the file.
    bad = write_frames(tmp_path / 'bad', [400], labels=True)
    cv2.imwrite(str(bad / 'labels' / 'f400.png'), np.full((48, 64), 7, np.uint8))
    with pytest.raises(RuntimeSetupError, match='f400.png: label ids \\[7\\]'):
        segmenter(Log(), calibration, bad)


def test_a_missing_nncf_says_how_to_install_it(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_nncf(name, *args, **kwargs):
        if name == 'nncf' or name.startswith('nncf.'):
            raise ImportError('No module named nncf')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_nncf)
    with pytest.raises(RuntimeSetupError, match='pip install nncf'):
        int8.nncf_module()


def test_without_labels_some_frames_are_always_held_out(tmp_path):
    few = write_frames(tmp_path / 'few', range(6))
    chosen, held_out = int8.calibration_files(int8.Int8Plan(str(few), calibration_frames=64))
    assert len(held_out) == 1 and len(chosen) == 5 and not set(chosen) & set(held_out)
    many = write_frames(tmp_path / 'many', range(100))
    chosen, held_out = int8.calibration_files(int8.Int8Plan(str(many), calibration_frames=20))
    assert len(chosen) == 20 and len(held_out) == int8.HELD_OUT_FRAMES
    assert not set(chosen) & set(held_out)
    # With labels, every frame may calibrate.
    chosen, held_out = int8.calibration_files(
        int8.Int8Plan(str(few), validation_folder='labelled', calibration_frames=64))
    assert len(chosen) == 6 and held_out == []
    one = write_frames(tmp_path / 'one', [0])
    with pytest.raises(RuntimeSetupError, match='holds 1 image'):
        int8.calibration_files(int8.Int8Plan(str(one)))


def test_a_validation_set_of_other_classes_is_refused(folders):
    _, calibration, validation = folders
    camvid = class_sets.load('camvid')
    (validation / 'classes.yaml').write_text(__import__('yaml').safe_dump(camvid.to_dict()))
    with pytest.raises(RuntimeSetupError, match='names 12 classes'):
        segmenter(Log(), calibration, validation)


def test_a_failing_quantizer_runs_fp32_and_is_tried_again_next_start(folders, monkeypatch):
    tmp, calibration, validation = folders
    nncf = int8.nncf_module()

    def broken(*args, **kwargs):
        raise MemoryError('out of memory')

    monkeypatch.setattr(nncf, 'quantize_with_accuracy_control', broken)
    log = Log()
    seg = segmenter(log, calibration, validation)
    assert 'fp32: NNCF quantization failed: MemoryError: out of memory' in seg.runtime.reason
    assert any('runs in fp32 (openvino) instead' in w for w in log.warnings)
    assert records(tmp / 'runtimes') == []  # not a verdict on the model: nothing cached
    monkeypatch.undo()
    monkeypatch.setenv('SEMSEG_ROS_EXPORT_CACHE', str(tmp / 'runtimes'))
    assert 'int8: mIoU' in segmenter(Log(), calibration, validation).runtime.reason


def test_nncf_sends_no_telemetry(tmp_path):
    # A fresh interpreter without pytest (NNCF turns its telemetry off inside pytest itself).
    pytest.importorskip('nncf')
    code = ('import os\n'
            'from semseg_ros.core.runtimes import int8\n'
            'int8.nncf_module()\n'
            'from nncf.telemetry import decorator, wrapper\n'
            'stub = isinstance(decorator.telemetry, wrapper.NNCFTelemetryStub)\n'
            'print(type(decorator.telemetry).__name__, stub, os.environ.get("NNCF_CI"))\n')
    env = {k: v for k, v in os.environ.items() if k not in ('CI', 'NNCF_CI', 'NNCF_DEV')}
    env['HOME'] = str(tmp_path)  # openvino-telemetry keeps its client id in ~/intel
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1].split()[1:] == ['True', 'None'], out

"""
YOLO semantic models (YOLO26 -sem) in the ultralytics and onnx backends.

YOLO instance ONNX exports are refused with a pointer to the ultralytics backend.
Random-weight models are built from the package's own configs; exports use the package's own
exporter (offline). Nothing is downloaded.
"""

import numpy as np
import pytest
from semseg_ros.core.engine import Frame, Segmenter
from semseg_ros.core.models import create_model, ModelError
from semseg_ros.core.models.loader import detect, load_model
import torch

pytest.importorskip('ultralytics')
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning',
                                        'ignore::torch.jit.TracerWarning')


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Keep the library off the network; exports of .yaml models land in tmp_path."""
    monkeypatch.setenv('YOLO_OFFLINE', '1')
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def sem_pt(tmp_path):
    from ultralytics import YOLO

    torch.manual_seed(0)
    path = tmp_path / 'yolo26n-sem.pt'
    YOLO('yolo26n-sem.yaml').save(str(path))
    return path


def frames(size=(64, 64), count=2):
    rng = np.random.default_rng(1)
    return [Frame(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), 'rgb')
            for _ in range(count)]


def test_semantic_model_runs_in_the_ultralytics_backend(sem_pt):
    with pytest.raises(ModelError, match='allow_pickle'):
        create_model('ultralytics', weights=str(sem_pt))
    model = create_model('ultralytics', weights=str(sem_pt), allow_pickle=True)
    assert model.num_classes == 19 and len(model.classes) == 19
    assert model.preprocess.size_divisor == 32 and model.preprocess.scale == 1 / 255
    batch = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        out = model(batch)
        direct = model.net(batch)
    assert out.shape == (2, 19, 8, 12)
    torch.testing.assert_close(out, direct if torch.is_tensor(direct) else direct[0])
    seg = Segmenter(model, model.classes, device='cpu')
    result = seg.process(frames((100, 72)), ('label', 'confidence'))
    assert result[0]['label'].shape == (72, 100) and result[0]['label'].max() < 19
    assert result[0]['confidence'].shape == (72, 100) and seg.warnings == []
    # backend auto recognises the pickle by its module names, without loading it.
    assert detect(sem_pt)[0] == 'ultralytics'
    assert load_model('auto', str(sem_pt), allow_pickle=True).num_classes == 19
    # At a fixed imgsz the frame is letterboxed, as Ultralytics trains and predicts.
    fixed = create_model('ultralytics', weights=str(sem_pt), allow_pickle=True, imgsz=64)
    assert fixed.preprocess.input_size == (64, 64) and fixed.preprocess.resize == 'letterbox'


def test_semantic_onnx_export_runs_in_the_onnx_backend(sem_pt):
    from ultralytics import YOLO

    path = YOLO(str(sem_pt)).export(format='onnx', imgsz=64, simplify=False, dynamic=False)
    model = load_model('auto', path)
    # The export bakes the argmax in: a (1, 64, 64) uint8 class map; names and stride from
    # its metadata, so no warning about the preprocessing.
    assert model.backend == 'onnx' and model.output_kind == 'class_ids'
    assert model.num_classes == 19 and len(model.classes) == 19 and model.warnings == ()
    assert model.preprocess_source == 'Ultralytics metadata'
    assert model.preprocess.input_size == (64, 64) and model.preprocess.scale == 1 / 255
    seg = Segmenter(model, model.classes, device='cpu')
    result = seg.process(frames(), ('label', 'confidence'))
    assert set(result[0]) == {'label'} and any('confidence' in w for w in seg.warnings)
    eager = create_model('ultralytics', weights=str(sem_pt), allow_pickle=True)
    want = Segmenter(eager, eager.classes, device='cpu').process(frames(), ('label',))
    same = np.mean([np.mean(a['label'] == b['label']) for a, b in zip(result, want)])
    assert same >= 0.999
    # A 96x64 frame is letterboxed into the fixed 64x64 input (not stretched): the same labels
    # as the .pt model letterboxed to 64 by the engine.
    assert model.preprocess.resize == 'letterbox'
    wide = frames((96, 64), 1)
    fixed = create_model('ultralytics', weights=str(sem_pt), allow_pickle=True, imgsz=64)
    got = seg.process(wide, ('label',))[0]['label']
    want = Segmenter(fixed, fixed.classes, device='cpu').process(wide, ('label',))[0]['label']
    assert got.shape == (64, 96) and np.mean(got == want) >= 0.999


def test_instance_onnx_export_points_to_the_ultralytics_backend(tmp_path):
    from ultralytics import YOLO

    torch.manual_seed(0)
    path = YOLO('yolov8n-seg.yaml').export(format='onnx', imgsz=64, simplify=False)
    for output in ('', 'output1'):
        with pytest.raises(ModelError) as err:
            create_model('onnx', weights=path, output=output)
        assert 'YOLO instance-segmentation' in str(err.value)
        assert 'ultralytics backend' in str(err.value)

"""
Tests of the model backends: export, onnx, torchvision, huggingface, smp, ultralytics.

Every model is built by the test itself and saved in its format (nothing is downloaded), then
loaded through create_model and run through the engine on a few frames.
"""

import fractions
import os
import sys

import numpy as np
import pytest
from semseg_ros.core import classes
from semseg_ros.core.engine import Frame, Segmenter
from semseg_ros.core.models import available_backends, create_model, ModelError, Preprocess
from semseg_ros.core.models import export as export_backend
from semseg_ros.core.models import onnx as onnx_backend
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import ModuleModel
from semseg_ros.core.models.common import IMAGENET, load_checkpoint
from semseg_ros.core.weights import WeightsError
import torch

# The tests export plain ONNX files with the TorchScript-based exporter (no onnxscript here).
pytestmark = pytest.mark.filterwarnings(
    'ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning',
    'ignore:The feature will be removed:DeprecationWarning')
NEW_BACKENDS = ('export', 'onnx', 'torchvision', 'huggingface', 'smp', 'ultralytics')
PREPROCESS = Preprocess(channel_order='bgr', mean=(100.0, 110.0, 120.0), std=(60.0, 62.0, 64.0),
                        scale=1.0, size_divisor=4)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Keep the libraries off the network."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('YOLO_OFFLINE', '1')


class TinyNet(torch.nn.Module):
    """A small conv net: stride-2 features, logits upsampled to the input size."""

    def __init__(self, classes=5):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 12, 3, stride=2, padding=1), torch.nn.BatchNorm2d(12),
            torch.nn.ReLU(), torch.nn.Conv2d(12, 12, 3, padding=2, dilation=2),
            torch.nn.BatchNorm2d(12), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(12, classes, 1)

    def forward(self, x):
        y = self.head(self.features(x))
        return torch.nn.functional.interpolate(y, size=x.shape[2:], mode='bilinear',
                                               align_corners=False)


def tiny_net():
    torch.manual_seed(3)
    net = TinyNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def frames(sizes=((96, 128), (72, 100), (96, 128)), seed=0):
    """Smooth color frames with some texture: (H, W, 3) uint8 in rgb and bgr."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=2) * 200
        image = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(Frame(image, 'bgr' if i % 2 else 'rgb'))
    return out


def labels(model, class_set=None, batch=True, fr=None):
    """Run frames through the engine on the CPU; return the label maps."""
    class_set = class_set or getattr(model, 'classes', None) or classes.generic(model.num_classes)
    seg = Segmenter(model, class_set, device='cpu', warmup=False)
    fr = fr or frames()
    if batch:
        return seg.labels(fr)
    return [seg.labels([f])[0] for f in fr]


def agreement(a, b):
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b)]))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """Save the tiny net as TorchScript, ONNX and .pt2; return it, its labels and the paths."""
    folder = tmp_path_factory.mktemp('formats')
    net = tiny_net()
    paths = {'torchscript': folder / 'tiny.ts', 'onnx': folder / 'tiny.onnx',
             'export': folder / 'tiny.pt2'}
    torchscript.save(net, str(paths['torchscript']), 5, PREPROCESS, 'camvid')
    onnx_backend.save(net, paths['onnx'], 5, PREPROCESS, 'camvid')
    export_backend.save(net, paths['export'], 5, PREPROCESS, 'camvid')
    eager = labels(ModuleModel(net, 5, PREPROCESS))
    return net, eager, paths


# Registry and class sets.
def test_backends_are_registered():
    assert set(NEW_BACKENDS) <= set(available_backends())


def test_voc_class_set():
    voc = classes.load('voc')
    assert len(voc) == 21 and voc.names[0] == 'background' and voc.names[20] == 'tvmonitor'
    assert voc.colors.tolist() == classes.palette(21).tolist()
    assert voc.colors[15].tolist() == [192, 128, 128]  # person
    assert voc.drivable == () and voc.ignore_id is None


def test_coco_class_set():
    coco = classes.load('coco')
    assert len(coco) == 81
    assert coco.names[0] == 'background' and coco.names[1] == 'person'
    assert coco.names[80] == 'toothbrush'
    assert len({tuple(c) for c in coco.colors.tolist()}) == 81


def test_ade20k_class_set():
    ade = classes.load('ade20k')
    assert len(ade) == 150
    assert (ade.names[0], ade.names[6], ade.names[149]) == ('wall', 'road', 'flag')
    assert ade.colors[0].tolist() == [120, 120, 120]
    assert ade.colors[149].tolist() == [92, 0, 255]
    assert {ade.names[i] for i in ade.drivable} == {'floor', 'road', 'sidewalk', 'path',
                                                    'dirt track'}


# torch.export and ONNX.
@pytest.mark.parametrize('backend', ['export', 'onnx'])
def test_file_backends_keep_metadata(saved, backend):
    _, eager, paths = saved
    model = create_model(backend, weights=str(paths[backend]))
    assert model.num_classes == 5 and model.class_set == 'camvid'
    assert model.preprocess == PREPROCESS
    assert model.name == 'tiny'
    result = labels(model)
    assert [r.shape for r in result] == [(96, 128), (72, 100), (96, 128)]
    assert agreement(result, eager) >= 0.999


def test_parity_eager_torchscript_onnx_export(saved):
    _, eager, paths = saved
    for backend in ('torchscript', 'onnx', 'export'):
        model = create_model(backend, weights=str(paths[backend]))
        match = agreement(labels(model), eager)
        assert match >= 0.999, f'{backend}: {match:.5f} of the pixels match the eager model'


@pytest.mark.parametrize('backend', ['export', 'onnx'])
def test_fixed_size_file_sets_input_size(tmp_path, backend):
    net = tiny_net()
    path = tmp_path / ('fixed.onnx' if backend == 'onnx' else 'fixed.pt2')
    module = onnx_backend if backend == 'onnx' else export_backend
    module.save(net, path, 5, Preprocess(), None, dynamic=False, example_size=(64, 48))
    model = create_model(backend, weights=str(path))
    assert model.preprocess.input_size == (64, 48)
    assert model.batch_size == 1 and model.num_classes == 5 and model.class_set is None
    # Three frames of other sizes: resized to 64x48 and fed one at a time.
    result = labels(model)
    assert [r.shape for r in result] == [(96, 128), (72, 100), (96, 128)]
    reference = labels(ModuleModel(net, 5, Preprocess(input_size=(64, 48))))
    assert agreement(result, reference) >= 0.999


def test_onnx_without_metadata_reads_the_file(tmp_path):
    net = tiny_net()
    path = tmp_path / 'plain.onnx'
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), input_names=['images'],
                      output_names=['scores'], dynamo=False,
                      dynamic_axes={'images': {0: 'n', 2: 'h', 3: 'w'},
                                    'scores': {0: 'n', 2: 'h', 3: 'w'}})
    model = create_model('onnx', weights=str(path))
    assert (model.input_name, model.output_name) == ('images', 'scores')
    assert model.num_classes == 5 and model.preprocess == Preprocess()
    assert model.batch_size is None and model.preprocess.input_size is None
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 40, 56))
    assert out.shape == (2, 5, 40, 56) and out.dtype == torch.float32


def test_onnx_io_binding_gives_the_same_logits(saved):
    _, _, paths = saved
    model = create_model('onnx', weights=str(paths['onnx']))
    batch = torch.rand(2, 3, 40, 56)
    with torch.inference_mode():
        plain = model(batch)
        model.io_binding = True
        first = model(batch)  # output shape learnt
        second = model(batch)  # output bound to a torch tensor
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(second, plain)


def test_onnx_label_outputs_need_a_class_count(tmp_path):
    class Argmax(torch.nn.Module):
        def forward(self, x):
            return x.argmax(dim=1)

    path = tmp_path / 'labels.onnx'
    torch.onnx.export(Argmax(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(ModelError, match='class ids.*num_classes'):
        create_model('onnx', weights=str(path))
    with pytest.raises(ModelError, match='class ids.*not logits'):
        create_model('onnx', weights=str(path), output_kind='logits', num_classes=3)
    model = create_model('onnx', weights=str(path), num_classes=3)
    assert model.output_kind == 'class_ids' and model.num_classes == 3


def test_onnx_provider_choice():
    everything = ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    chosen = onnx_backend.choose_providers(everything, torch.device('cuda:1'))
    assert chosen == [('TensorrtExecutionProvider', {'device_id': 1}),
                      ('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider']
    assert onnx_backend.choose_providers(everything, torch.device('cpu')) == [
        'CPUExecutionProvider']
    cpu_only = ['CPUExecutionProvider']
    assert onnx_backend.choose_providers(cpu_only, torch.device('cuda')) == cpu_only
    with pytest.raises(ModelError, match='CUDAExecutionProvider'):
        onnx_backend.choose_providers(cpu_only, torch.device('cpu'), 'CUDAExecutionProvider')


def test_missing_files_are_named(tmp_path):
    for backend in ('export', 'onnx'):
        with pytest.raises(ModelError, match='nope'):
            create_model(backend, weights=str(tmp_path / 'nope'))
        with pytest.raises(ModelError, match='model.weights'):
            create_model(backend)
    junk = tmp_path / 'junk.pt2'
    junk.write_bytes(b'not an archive')
    with pytest.raises(ModelError, match='junk.pt2'):
        create_model('export', weights=str(junk))


# torchvision.
def test_torchvision_state_dict(tmp_path):
    from torchvision.models import segmentation

    torch.manual_seed(0)
    net = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                 num_classes=21).eval()
    path = tmp_path / 'lraspp_mobilenet_v3_large_mine.pth'
    torch.save(net.state_dict(), path)
    model = create_model('torchvision', weights=str(path))  # name from the file name
    assert model.name == 'lraspp_mobilenet_v3_large'
    assert model.num_classes == 21 and model.class_set == 'voc'
    assert model.preprocess == IMAGENET
    result = labels(model, classes.load('voc'))
    assert [r.shape for r in result] == [(96, 128), (72, 100), (96, 128)]


def test_torchvision_training_checkpoint_with_aux_head(tmp_path):
    from torchvision.models import segmentation

    net = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                    num_classes=4, aux_loss=True).eval()
    path = tmp_path / 'ckpt.pth'
    state = {'module.' + k: v for k, v in net.state_dict().items()}
    torch.save({'epoch': 7, 'state_dict': state}, path)
    model = create_model('torchvision', name='deeplabv3_mobilenet_v3_large', weights=str(path))
    assert model.num_classes == 4 and model.class_set is None
    assert model.module.aux_classifier is None
    batch = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(batch), net(batch)['out'])


def test_torchvision_unknown_name_lists_valid_names():
    with pytest.raises(ModelError) as err:
        create_model('torchvision', name='deeplabv4_resnet9')
    for name in ('deeplabv3_resnet50', 'deeplabv3_resnet101', 'deeplabv3_mobilenet_v3_large',
                 'fcn_resnet50', 'fcn_resnet101', 'lraspp_mobilenet_v3_large'):
        assert name in str(err.value)


def test_torchvision_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    with pytest.raises(WeightsError) as err:
        create_model('torchvision', name='fcn_resnet50', download=False)
    msg = str(err.value)
    assert 'fcn_resnet50_coco-1167a1af.pth' in msg and str(tmp_path) in msg


# Hugging Face.
def save_segformer(folder, names, processor_size=None):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from transformers import SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
        decoder_hidden_size=16, num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    SegformerForSemanticSegmentation(config).save_pretrained(str(folder))
    if processor_size:
        SegformerImageProcessor(size=processor_size, image_mean=[0.5, 0.5, 0.5],
                                image_std=[0.25, 0.25, 0.25]).save_pretrained(str(folder))


def test_huggingface_local_directory(tmp_path):
    save_segformer(tmp_path, ['floor', 'thing', 'Thing'], {'height': 64, 'width': 96})
    model = create_model('huggingface', weights=str(tmp_path))
    assert model.num_classes == 3 and model.class_set is None
    assert model.classes.names == ('floor', 'thing', 'Thing_2')
    assert model.preprocess.input_size == (96, 64)
    assert model.preprocess.mean == pytest.approx((127.5,) * 3)
    assert model.preprocess.std == pytest.approx((63.75,) * 3)
    result = labels(model)
    assert [r.shape for r in result] == [(96, 128), (72, 100), (96, 128)]
    assert max(r.max() for r in result) < 3


def test_huggingface_known_names_pick_the_class_set(tmp_path):
    save_segformer(tmp_path / 'voc', list(classes.load('voc').names))
    model = create_model('huggingface', weights=str(tmp_path / 'voc'))
    assert model.class_set == 'voc' and model.preprocess == IMAGENET  # no processor config
    # Names that are all ADE20K classes take its colors and drivable flags.
    save_segformer(tmp_path / 'sub', ['wall', 'floor', 'ceiling'])
    model = create_model('huggingface', weights=str(tmp_path / 'sub'))
    ade = classes.load('ade20k')
    assert model.class_set is None and model.classes.drivable == (1,)
    assert model.classes.colors[1].tolist() == ade.colors[ade.index('floor')].tolist()


def test_huggingface_missing_model_is_named(tmp_path):
    with pytest.raises(ModelError, match='does not exist'):
        create_model('huggingface', weights=str(tmp_path / 'absent'))
    with pytest.raises(ModelError, match='no-such-org/no-such-model'):
        create_model('huggingface', weights='no-such-org/no-such-model', download=False)


# segmentation_models_pytorch.
def test_smp_lightning_checkpoint(tmp_path):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.create_model('unet', encoder_name='mobilenet_v2', encoder_weights=None,
                           classes=3).eval()
    path = tmp_path / 'unet.ckpt'
    state = {'model.' + k: v for k, v in net.state_dict().items()}
    torch.save({'state_dict': state, 'epoch': 3, 'global_step': 99}, path)
    model = create_model('smp', weights=str(path), arch='Unet', encoder='mobilenet_v2')
    assert model.num_classes == 3 and model.preprocess.size_divisor == 32
    assert model.preprocess.mean == pytest.approx(IMAGENET.mean)
    batch = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(model(batch), net(batch))
    result = labels(model)
    assert [r.shape for r in result] == [(96, 128), (72, 100), (96, 128)]


def test_smp_binary_gray_model(tmp_path):
    import segmentation_models_pytorch as smp

    net = smp.create_model('fpn', encoder_name='mobilenet_v2', encoder_weights=None,
                           classes=1, in_channels=1).eval()
    path = tmp_path / 'fpn.pth'
    torch.save(net.state_dict(), path)
    model = create_model('smp', weights=str(path), arch='FPN', encoder='mobilenet_v2',
                         in_channels=1)
    assert model.num_classes == 2 and model.classes.names == ('background', 'foreground')
    gray = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        out = model(gray.expand(-1, 3, -1, -1))
        torch.testing.assert_close(out[:, 1:], net(gray))
    assert float(out[:, 0].abs().max()) == 0.0
    assert [r.shape for r in labels(model)] == [(96, 128), (72, 100), (96, 128)]


def test_smp_errors_are_clear(tmp_path):
    with pytest.raises(ModelError, match='model.weights'):
        create_model('smp', arch='unet')
    path = tmp_path / 'w.pth'
    torch.save({'x': torch.zeros(1)}, path)
    with pytest.raises(ModelError) as err:
        create_model('smp', weights=str(path), arch='Unet+++')
    assert 'unetplusplus' in str(err.value) and 'deeplabv3plus' in str(err.value)
    with pytest.raises(ModelError, match='w.pth does not fit smp unet / mobilenet_v2'):
        create_model('smp', weights=str(path), arch='unet', encoder='mobilenet_v2', classes=2)


def test_checkpoint_prefixes_and_safe_loading(tmp_path):
    path = tmp_path / 'c.pth'
    torch.save({'model': {'module._orig_mod.a.weight': torch.ones(2)}, 'step': 1}, path)
    assert list(load_checkpoint(path, {'a.weight'})) == ['a.weight']
    torch.save({'a.weight': torch.ones(1), 'obj': fractions.Fraction(1, 3)}, path)
    with pytest.raises(WeightsError, match='weights_only'):
        load_checkpoint(path, {'a.weight'})


# Ultralytics.
def test_merge_instances():
    from semseg_ros.core.models.ultralytics import merge_instances

    masks = torch.zeros(2, 4, 6)
    masks[0, :, :3] = 0.9  # instance 0: left half, class 1, score 0.8
    masks[1, :2, 2:] = 0.6  # instance 1: top right, class 5, score 0.9 (0.54 < 0.72: loses)
    masks[1, 2:, 5] = 0.4  # below the mask threshold: background
    logits = merge_instances(masks, torch.tensor([0.8, 0.9]), torch.tensor([1, 5]), 8)
    assert logits.shape == (8, 4, 6)
    label = logits.argmax(dim=0)
    prob = torch.softmax(logits, dim=0).max(dim=0).values
    assert label[3, 0] == 1 and prob[3, 0] == pytest.approx(0.72, abs=1e-4)
    assert label[0, 4] == 5 and prob[0, 4] == pytest.approx(0.54, abs=1e-4)
    assert label[0, 2] == 1 and prob[0, 2] == pytest.approx(0.72, abs=1e-4)
    assert label[3, 5] == 0 and prob[3, 5] == pytest.approx(1 - 0.36, abs=1e-4)
    empty = merge_instances(torch.zeros(0, 4, 6), torch.zeros(0), torch.zeros(0), 8)
    assert (empty.argmax(dim=0) == 0).all()
    assert torch.softmax(empty, dim=0)[0].min() > 0.999


def test_ultralytics_saved_model(tmp_path):
    from ultralytics import YOLO

    torch.manual_seed(0)
    path = tmp_path / 'yolo-seg.pt'
    YOLO('yolov8n-seg.yaml').save(str(path))
    with pytest.raises(ModelError, match='pickle'):
        create_model('ultralytics', weights=str(path))
    model = create_model('ultralytics', weights=str(path), conf=0.0, max_det=20,
                         allow_pickle=True)
    assert model.num_classes == 81 and model.class_set == 'coco'
    assert model.preprocess.size_divisor == 32 and model.preprocess.scale == 1 / 255
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 81, 16, 24) and torch.isfinite(out).all()
    result = labels(model, classes.load('coco'))
    assert [r.shape for r in result] == [(96, 128), (72, 100), (96, 128)]
    assert max(r.max() for r in result) <= 80
    # The default threshold keeps none of an untrained model's detections: all background.
    quiet = create_model('ultralytics', weights=str(path), allow_pickle=True)
    assert all((r == 0).all() for r in labels(quiet, classes.load('coco')))


def test_ultralytics_end_to_end_head(tmp_path):
    from ultralytics import YOLO

    yolo = YOLO('yolo26n-seg.yaml')
    yolo.model.end2end = True
    path = tmp_path / 'e2e.pt'
    yolo.save(str(path))
    model = create_model('ultralytics', weights=str(path), conf=0.0, max_det=5,
                         allow_pickle=True)
    assert model.net.model[-1].end2end
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 81, 16, 16) and torch.isfinite(out).all()


def test_ultralytics_rejects_other_tasks():
    with pytest.raises(ModelError, match='detect'):
        create_model('ultralytics', weights='yolov8n.yaml')
    with pytest.raises(ModelError, match='does not exist'):
        create_model('ultralytics', weights='yolov8n-seg.pt', allow_pickle=True)


# Missing optional libraries.
@pytest.mark.parametrize('backend, module, package, options', [
    ('onnx', 'onnxruntime', 'onnxruntime', {}),
    ('torchvision', 'torchvision', 'torchvision', {'name': 'fcn_resnet50'}),
    ('huggingface', 'transformers', 'transformers', {'weights': 'org/model'}),
    ('smp', 'segmentation_models_pytorch', 'segmentation-models-pytorch', {'weights': 'x.pt'}),
    ('ultralytics', 'ultralytics', 'ultralytics', {'weights': 'yolov8n-seg.yaml'}),
])
def test_missing_library_is_a_clear_error(tmp_path, monkeypatch, backend, module, package,
                                          options):
    if backend == 'onnx':
        options = {'weights': str(tmp_path / 'm.onnx')}
        (tmp_path / 'm.onnx').write_bytes(b'')
    monkeypatch.setitem(sys.modules, module, None)  # makes 'import module' fail
    with pytest.raises(ModelError) as err:
        create_model(backend, **options)
    assert f'pip install {package}' in str(err.value)
    assert backend in str(err.value)


def test_onnx_save_needs_onnx(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnx', None)
    with pytest.raises(ModelError, match='pip install onnx'):
        onnx_backend.save(tiny_net(), os.path.join(tmp_path, 'x.onnx'), 5)

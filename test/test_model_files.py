"""
Model files made elsewhere: no metadata, preprocessing by options or by a card, backend auto.

The reference is our built-in ESPNet (random weights, so nothing is downloaded). The same
module is exported to ONNX and traced to TorchScript with plain torch calls, without any of our
metadata, as another codebase would; given its preprocessing, the file must reproduce the
built-in model's label maps exactly, and without it the model must carry a warning.
"""

import numpy as np
import pytest
from semseg_ros.core import classes
from semseg_ros.core.engine import Frame, Segmenter
from semseg_ros.core.models import create_model, ModelError
from semseg_ros.core.models.base import Preprocess
from semseg_ros.core.models.card import ModelCard, preprocess_to_dict, write_card
from semseg_ros.core.models.espnet import CAMVID_PREPROCESS, ESPNet
from semseg_ros.core.models.loader import detect, load_model
import torch

pytestmark = pytest.mark.filterwarnings(
    'ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning',
    'ignore:The feature will be removed:DeprecationWarning',
    'ignore::torch.jit.TracerWarning')
CAMVID = classes.load('camvid')
OUTPUTS = ('label', 'confidence')
# The CamVid preprocessing at a small input size (a quick test).
SIZE = (160, 120)
PRE = Preprocess(CAMVID_PREPROCESS.channel_order, CAMVID_PREPROCESS.mean, CAMVID_PREPROCESS.std,
                 CAMVID_PREPROCESS.scale, SIZE, CAMVID_PREPROCESS.size_divisor)
OPTIONS = preprocess_to_dict(PRE)


def frames():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (9, 12, 3)).astype(np.float32)
    out = []
    for h, w in ((90, 130), (120, 160)):
        # Smooth images (upscaled noise): label maps with regions, not speckle.
        img = torch.nn.functional.interpolate(torch.from_numpy(base).permute(2, 0, 1)[None],
                                              size=(h, w), mode='bilinear')[0]
        out.append(Frame(img.permute(1, 2, 0).round().byte().numpy().copy(), 'rgb'))
    return out


def run(model, class_set=CAMVID, upsample='logits'):
    seg = Segmenter(model, class_set, device='cpu', warmup=False, upsample=upsample)
    return seg, seg.process(frames(), OUTPUTS)


class ArgmaxNet(torch.nn.Module):
    """A network with the argmax inside, as some exports have."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).argmax(dim=1)


@pytest.fixture(scope='module')
def espnet():
    torch.manual_seed(0)
    net = ESPNet(preprocess=PRE).eval()
    # Random batch-norm statistics, so the normalisation of the input matters.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope='module')
def reference(espnet):
    return run(espnet)[1]


@pytest.fixture(scope='module')
def files(espnet, tmp_path_factory):
    """Export the ESPNet without our metadata: TorchScript (traced), ONNX; logits, argmax."""
    folder = tmp_path_factory.mktemp('plain')
    example = torch.zeros(1, 3, SIZE[1], SIZE[0])
    paths = {}
    for tag, module in (('logits', espnet), ('ids', ArgmaxNet(espnet).eval())):
        with torch.no_grad():
            traced = torch.jit.trace(module, example)
        paths['torchscript', tag] = folder / f'espnet_{tag}.ts'
        torch.jit.save(traced, str(paths['torchscript', tag]))
        paths['onnx', tag] = folder / f'espnet_{tag}.onnx'
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(paths['onnx', tag]), dynamo=False,
                              input_names=['image'], output_names=['out'])
    return paths


def assert_same(result, reference, outputs=OUTPUTS):
    for got, want in zip(result, reference):
        for name in outputs:
            assert np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize('backend', ['torchscript', 'onnx'])
def test_plain_file_with_options_reproduces_the_builtin(files, reference, backend):
    model = create_model(backend, weights=str(files[backend, 'logits']), **OPTIONS)
    assert model.warnings == () and model.preprocess == PRE
    assert model.preprocess_source == 'model.options'
    seg, result = run(model)
    assert seg.warnings == []
    assert_same(result, reference)


@pytest.mark.parametrize('backend', ['torchscript', 'onnx'])
def test_plain_file_with_a_card_reproduces_the_builtin(files, reference, backend, tmp_path):
    path = files[backend, 'logits']
    card = ModelCard(file=path.name, format=backend, num_classes=12, classes='camvid',
                     preprocess=dict(OPTIONS),
                     provenance={'base_model': 'espnet', 'tool': 'test'})
    write_card(card, path.with_suffix('.yaml'))
    try:
        model = load_model('auto', str(path))
        assert model.backend == backend and model.card == card
        assert model.class_set == 'camvid' and model.warnings == ()
        assert model.preprocess_source.startswith('model card')
        assert_same(run(model)[1], reference)
    finally:
        path.with_suffix('.yaml').unlink()


@pytest.mark.parametrize('backend', ['torchscript', 'onnx'])
def test_plain_file_alone_warns_and_differs(files, reference, backend):
    # The fixed input size is read from the ONNX file; the traced file needs it given.
    extra = {'input_size': list(SIZE)} if backend == 'torchscript' else {}
    model = create_model(backend, weights=str(files[backend, 'logits']), **extra)
    assert model.preprocess.mean == (0.0, 0.0, 0.0) and model.preprocess.channel_order == 'rgb'
    seg, result = run(model)
    text = ' '.join(seg.warnings)
    assert len(seg.warnings) == 1 and 'no preprocessing metadata' in text
    assert 'rgb' in text and 'mean [0, 0, 0]' in text and 'x / 255' in text
    same = np.mean([np.mean(a['label'] == b['label']) for a, b in zip(result, reference)])
    assert same < 0.99


@pytest.mark.parametrize('backend', ['torchscript', 'onnx'])
def test_class_id_exports_give_labels_and_report_confidence(files, espnet, backend):
    model = create_model(backend, weights=str(files[backend, 'ids']), num_classes=12,
                         **OPTIONS)
    assert model.output_kind == 'class_ids' and model.num_classes == 12
    seg, result = run(model)
    assert set(result[0]) == {'label'}  # no confidence: it cannot be computed from ids
    assert any('confidence' in w for w in seg.warnings)
    # Class ids are resized with nearest neighbours: as the built-in with upsample 'labels'.
    assert_same(result, run(espnet, upsample='labels')[1], ('label',))


def test_probabilities_give_their_max_as_confidence(espnet):
    class Softmax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = espnet

        def forward(self, x):
            return torch.softmax(self.net(x), dim=1)

    with torch.no_grad():
        traced = torch.jit.trace(Softmax().eval(), torch.zeros(1, 3, SIZE[1], SIZE[0]))
    from semseg_ros.core.models.base import ModuleModel
    model = ModuleModel(traced, 12, PRE, 'camvid')
    model.output_kind = 'probabilities'
    # Argmax then nearest: the same labels (bilinear probabilities and bilinear logits
    # can disagree at a few border pixels).
    result = run(model, upsample='labels')[1]
    reference = run(espnet, upsample='labels')[1]
    assert_same(result, reference, ('label',))
    for got, want in zip(result, reference):
        assert np.abs(got['confidence'].astype(int) - want['confidence']).max() <= 1


def test_backend_auto_detection(files, tmp_path):
    assert detect(files['torchscript', 'logits'])[0] == 'torchscript'
    assert detect(files['onnx', 'ids'])[0] == 'onnx'
    program = torch.export.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 8, 8),))
    torch.export.save(program, str(tmp_path / 'p.pt2'))
    assert detect(tmp_path / 'p.pt2')[0] == 'export'
    (tmp_path / 'hf').mkdir()
    (tmp_path / 'hf' / 'config.json').write_text('{}')
    assert detect(tmp_path / 'hf')[0] == 'huggingface'
    torch.save(ESPNet().state_dict(), str(tmp_path / 'sd.pth'))
    with pytest.raises(ModelError) as err:
        load_model('auto', str(tmp_path / 'sd.pth'))
    for word in ('state dict', 'espnet', 'espnetv2', 'torchvision', 'smp'):
        assert word in str(err.value)
    with pytest.raises(ModelError, match='needs model.weights'):
        detect('')
    with pytest.raises(ModelError, match='does not exist'):
        detect(tmp_path / 'nope.onnx')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ModelError, match='neither a model card'):
        detect(tmp_path / 'empty')


def test_model_directory_with_card(files, espnet, tmp_path):
    folder = tmp_path / 'OUT'
    folder.mkdir()
    (folder / 'net.onnx').write_bytes(files['onnx', 'ids'].read_bytes())
    write_card(ModelCard(file='net.onnx', format='onnx', num_classes=12, classes='camvid',
                         preprocess=dict(OPTIONS), output={'kind': 'class_ids', 'name': 'out'}),
               folder)
    model = load_model('auto', str(folder))
    assert model.output_kind == 'class_ids' and model.detected.startswith('its model card')
    assert_same(run(model)[1], run(espnet, upsample='labels')[1], ('label',))
    # model.options still override the card, key by key.
    model = load_model('auto', str(folder / 'net.onnx'), {'channel_order': 'rgb'})
    assert model.preprocess.channel_order == 'rgb' and model.preprocess.mean == PRE.mean
    assert 'override channel_order' in model.preprocess_source
    with pytest.raises(ModelError, match="'onnx' model but model.backend is 'torchscript'"):
        load_model('torchscript', str(folder))
    write_card(ModelCard(file='net.onnx', format='onnx', num_classes=12,
                         preprocess=dict(OPTIONS), output={'kind': 'logits', 'name': None}),
               folder)
    with pytest.raises(ModelError, match='class ids'):
        load_model('auto', str(folder))


def test_yolo_instance_onnx_points_to_ultralytics(tmp_path):
    class InstanceHead(torch.nn.Module):
        def forward(self, x):
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, (8, 8))
            dets = pooled.flatten(2).repeat(1, 13, 1)[:, :4 + 2 + 32]  # (1, 38, 64)
            protos = pooled.repeat(1, 11, 2, 2)[:, :32]  # (1, 32, 16, 16)
            return dets, protos

    path = tmp_path / 'yolo-seg.onnx'
    torch.onnx.export(InstanceHead(), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False,
                      output_names=['output0', 'output1'])
    for output in ('', 'output1'):
        with pytest.raises(ModelError) as err:
            create_model('onnx', weights=str(path), output=output)
        text = str(err.value)
        assert 'YOLO instance-segmentation' in text and 'ultralytics backend' in text
        assert 'allow_pickle' in text


def test_preprocessing_options_are_checked(files):
    path = str(files['onnx', 'logits'])
    with pytest.raises(ModelError, match='model.options.mean'):
        create_model('onnx', weights=path, mean=[1, 2])
    with pytest.raises(ModelError, match='channel_order'):
        create_model('onnx', weights=path, channel_order='hsv')
    with pytest.raises(ModelError, match='fixed to 160x120'):
        create_model('onnx', weights=path, input_size=[640, 480])
    with pytest.raises(ModelError, match='output_kind'):
        create_model('onnx', weights=path, output_kind='argmax')
    with pytest.raises(ModelError, match='num_classes 7 given, but the model outputs 12'):
        create_model('onnx', weights=path, num_classes=7)


def test_espnet_class_count_option(tmp_path):
    torch.manual_seed(1)
    voc = ESPNet(classes=21, class_set=None)
    torch.save(voc.state_dict(), str(tmp_path / 'espnet21.pth'))
    model = create_model('espnet', weights=str(tmp_path / 'espnet21.pth'), classes=21)
    assert model.num_classes == 21 and model.class_set is None
    with pytest.raises(ModelError) as err:
        create_model('espnet', weights=str(tmp_path / 'espnet21.pth'))
    assert len(str(err.value)) < 1000 and '12 classes' in str(err.value)
    with pytest.raises(ModelError, match='published CamVid weights have 12'):
        create_model('espnet', classes=21, download=False)


def test_espnetv2_class_count_option_and_short_errors(tmp_path):
    from semseg_ros.core.models.espnetv2 import ESPNetv2

    torch.manual_seed(2)
    torch.save(ESPNetv2(21).state_dict(), str(tmp_path / 'voc.pth'))
    model = create_model('espnetv2', weights=str(tmp_path / 'voc.pth'), classes=21)
    assert model.num_classes == 21 and model.class_set == 'voc'
    with pytest.raises(ModelError) as err:
        create_model('espnetv2', weights=str(tmp_path / 'voc.pth'))
    text = str(err.value)
    assert len(text) < 1000 and 'of another shape' in text and '20 classes' in text
    # Another width scale: the encoder widths come from the weights.
    torch.save(ESPNetv2(20, (32, 64, 128, 256)).state_dict(), str(tmp_path / 'narrow.pth'))
    narrow = create_model('espnetv2', weights=str(tmp_path / 'narrow.pth'))
    assert narrow.channels == (32, 64, 128, 256)
    with torch.inference_mode():
        assert narrow(torch.rand(1, 3, 64, 128)).shape == (1, 20, 64, 128)
    with pytest.raises(ModelError, match='published Cityscapes weights have 20'):
        create_model('espnetv2', classes=21, download=False)


def test_engine_checks_class_id_outputs():
    from semseg_ros.core.engine import EngineError
    from semseg_ros.core.models.base import ModuleModel

    class Ids(torch.nn.Module):
        def __init__(self, value, dtype):
            super().__init__()
            self.value, self.dtype = value, dtype

        def forward(self, x):
            return torch.full((x.shape[0], 1) + tuple(x.shape[2:]), self.value, dtype=self.dtype)

    def segment(value, dtype):
        model = ModuleModel(Ids(value, dtype), 3, Preprocess(), name='ids')
        model.output_kind = 'class_ids'
        seg = Segmenter(model, classes.generic(3), device='cpu', warmup=False)
        return seg.process([Frame(np.zeros((8, 10, 3), np.uint8), 'rgb')])[0]

    out = segment(2, torch.uint8)  # (N, 1, H, W) uint8 is accepted
    assert set(out) == {'label', 'color', 'overlay', 'drivable'} and (out['label'] == 2).all()
    with pytest.raises(EngineError, match='class id 3 is outside 0..2'):
        segment(3, torch.int64)
    with pytest.raises(EngineError, match='class id -1'):
        segment(-1, torch.int32)
    with pytest.raises(EngineError, match='integer'):
        segment(1, torch.float32)


def test_export_archive_without_metadata(tmp_path):
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    auto = torch.export.Dim.AUTO
    shapes = ({0: auto, 2: auto, 3: auto},)
    example = (torch.zeros(2, 3, 16, 16),)
    torch.export.save(torch.export.export(net, example, dynamic_shapes=shapes),
                      str(tmp_path / 'logits.pt2'))
    torch.export.save(torch.export.export(ArgmaxNet(net), example, dynamic_shapes=shapes),
                      str(tmp_path / 'ids.pt2'))
    plain = create_model('auto', weights=str(tmp_path / 'logits.pt2'))
    assert plain.num_classes == 4 and len(plain.warnings) == 1
    given = create_model('export', weights=str(tmp_path / 'logits.pt2'), **OPTIONS)
    assert given.warnings == () and given.preprocess == PRE
    ids = create_model('export', weights=str(tmp_path / 'ids.pt2'), num_classes=4, **OPTIONS)
    assert ids.output_kind == 'class_ids' and ids.num_classes == 4
    from semseg_ros.core.models.base import ModuleModel
    reference = run(ModuleModel(net, 4, PRE), classes.generic(4), 'labels')[1]
    assert_same(run(given, classes.generic(4), 'labels')[1], reference)
    assert_same(run(ids, classes.generic(4))[1], reference, ('label',))


def test_real_espnet_exported_elsewhere(espnet_weights, camvid_val, tmp_path):
    """The published ESPNet as a plain ONNX file: wrong and warned alone, exact with a card."""
    import cv2
    from semseg_ros.core.metrics import ConfusionMatrix

    builtin = create_model('espnet', weights=str(espnet_weights))
    path = tmp_path / 'espnet.onnx'
    with torch.no_grad():
        torch.onnx.export(builtin.eval(), (torch.zeros(1, 3, 360, 480),), str(path),
                          dynamo=False)
    names = sorted(p.name for p in (camvid_val / 'images').iterdir())[:3]
    images = [Frame(cv2.imread(str(camvid_val / 'images' / n)), 'bgr') for n in names]
    truths = [cv2.imread(str(camvid_val / 'labels' / n), cv2.IMREAD_UNCHANGED) for n in names]

    def score(model):
        seg = Segmenter(model, CAMVID, device='cpu', warmup=False)
        labels = [r['label'] for r in seg.process(images, ('label',))]
        matrix = ConfusionMatrix(11, ignore_index=11)
        for label, truth in zip(labels, truths):
            matrix.update(label.astype(np.int64), truth.astype(np.int64))
        return seg, labels, matrix.pixel_accuracy()

    seg, _, alone = score(create_model('onnx', weights=str(path)))
    assert alone < 0.2 and len(seg.warnings) == 1
    write_card(ModelCard(file='espnet.onnx', format='onnx', num_classes=12, classes='camvid',
                         preprocess=preprocess_to_dict(CAMVID_PREPROCESS)),
               tmp_path / 'espnet.yaml')
    seg, labels, carded = score(load_model('auto', str(path)))
    _, want, reference = score(builtin)
    assert seg.warnings == [] and carded == reference > 0.9
    assert all(np.array_equal(a, b) for a, b in zip(labels, want))

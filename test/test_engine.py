"""The Segmenter on tiny models whose answers are known: encodings, sizes, outputs, batching."""

import numpy as np
import pytest
from semseg_ros.core import classes
from semseg_ros.core.engine import EngineError
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.engine import select_device
from semseg_ros.core.models.base import ModuleModel
from semseg_ros.core.models.base import Preprocess
import torch


class Channels(torch.nn.Module):
    """Logits = the input channels: a pure red pixel is class 0, green 1, blue 2."""

    def forward(self, x):
        return x


class Pooled(torch.nn.Module):
    """Logits at a quarter of the input resolution (like most real networks)."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)


def stripes(h=24, w=36):
    """RGB image with a red, a green and a blue vertical band."""
    img = np.zeros((h, w, 3), np.uint8)
    third = w // 3
    img[:, :third, 0] = 255
    img[:, third:2 * third, 1] = 255
    img[:, 2 * third:, 2] = 255
    return img


def expected_labels(h=24, w=36):
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 3:2 * (w // 3)] = 1
    labels[:, 2 * (w // 3):] = 2
    return labels


def make(module=None, order='rgb', input_size=None, divisor=1, count=3, **kwargs):
    spec = Preprocess(channel_order=order, input_size=input_size, size_divisor=divisor)
    model = ModuleModel(module or Channels(), count, spec, name='tiny')
    cls = classes.generic(count).with_drivable([1])
    return Segmenter(model, cls, device='cpu', **kwargs)


@pytest.mark.parametrize('color', ['rgb', 'bgr', 'rgba', 'bgra'])
def test_channel_orders(color):
    img = stripes()
    if color.startswith('bgr'):
        img = img[:, :, ::-1]
    if color.endswith('a'):
        img = np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])
    out = make().process([Frame(np.ascontiguousarray(img), color)], ('label',))[0]
    assert np.array_equal(out['label'], expected_labels())


class Recorder(torch.nn.Module):
    """Channels that also keeps the batch it was given."""

    def forward(self, x):
        self.seen = x.clone()
        return x


@pytest.mark.parametrize('color,channels,dtype', [
    ('rgb', 3, np.uint8), ('bgr', 3, np.uint8), ('rgba', 4, np.uint8), ('bgra', 4, np.uint8),
    ('mono', 1, np.uint8), ('mono', 1, np.uint16), ('rgb', 3, np.uint16)])
@pytest.mark.parametrize('order', ['rgb', 'bgr'])
@pytest.mark.parametrize('size,divisor', [(None, 1), ((40, 24), 1), ((16, 12), 1), (None, 8)])
def test_model_input_equals_a_planar_reference(color, channels, dtype, order, size, divisor):
    # The fast channels-last preprocessing gives the same batch as converting to planar float,
    # resizing (or padding) and normalising step by step.
    rng = np.random.default_rng(3)
    top = 256 if dtype == np.uint8 else 65536
    img = rng.integers(0, top, (21, 30, channels)).astype(dtype)
    recorder = Recorder()
    seg = make(recorder, order=order, input_size=size, divisor=divisor)
    seg.process([Frame(img, color)], ('label',))
    planar = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)
    if dtype == np.uint16:
        planar = planar * (255.0 / 65535.0)
    rgb = {1: [0, 0, 0], 3: [0, 1, 2], 4: [0, 1, 2]}[channels]
    if color.startswith('bgr'):
        rgb = [2, 1, 0]
    planar = planar[rgb if order == 'rgb' else rgb[::-1]][None]
    if size:
        planar = torch.nn.functional.interpolate(
            planar, size=(size[1], size[0]), mode='bilinear', align_corners=False)
    elif divisor > 1:
        planar = torch.nn.functional.pad(planar, (0, 2, 0, 3))
    expected = planar * seg._gain + seg._bias
    assert recorder.seen.shape == expected.shape
    assert torch.allclose(recorder.seen, expected, atol=1e-4)


def letterboxed(module, size):
    spec = Preprocess(input_size=size, resize='letterbox')
    return Segmenter(ModuleModel(module, 3, spec, name='tiny'), classes.generic(3),
                     device='cpu')


def test_letterbox_scales_once_pads_grey_and_crops_back():
    img = stripes(24, 72)
    recorder = Recorder()
    seg = letterboxed(recorder, (48, 48))
    out = seg.process([Frame(img, 'rgb')], ('label',))[0]['label']
    # The frame keeps its 3:1 aspect ratio: 48 x 16 at the top, grey below.
    planar = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
    top = torch.nn.functional.interpolate(planar, size=(16, 48), mode='bilinear',
                                          align_corners=False)
    seen = (recorder.seen - seg._bias) / seg._gain
    assert recorder.seen.shape == (1, 3, 48, 48)
    assert torch.allclose(seen[:, :, :16], top, atol=1e-3)
    assert torch.allclose(seen[:, :, 16:], torch.full_like(seen[:, :, 16:], 114.0), atol=1e-3)
    # Labels come back at the frame's size from the valid region only (the grey rows would
    # be class 0 all across the bottom of the frame).
    assert out.shape == (24, 72)
    assert (out == expected_labels(24, 72)).mean() >= 0.97
    assert (out[:, 30:42] == 1).all() and (out[:, 54:] == 2).all()


def test_letterbox_with_logits_at_a_quarter_and_a_tall_frame():
    img = np.ascontiguousarray(np.rot90(stripes(24, 72)))  # 72 rows, 24 columns
    out = letterboxed(Pooled(), (48, 48)).process([Frame(img, 'rgb')], ('label',))[0]['label']
    expected = np.ascontiguousarray(np.rot90(expected_labels(24, 72)))
    assert out.shape == (72, 24)
    assert (out == expected).mean() >= 0.9
    stretched = make(Pooled(), input_size=(48, 48)).process([Frame(img, 'rgb')], ('label',))
    assert (stretched[0]['label'] == expected).mean() >= 0.9  # stretch stays as it was


def test_bgr_model_sees_bgr():
    # A BGR model's channel 0 is blue: the blue band becomes class 0.
    out = make(order='bgr').process([Frame(stripes(), 'rgb')], ('label',))[0]
    assert (out['label'][:, -1] == 0).all() and (out['label'][:, 0] == 2).all()


def test_mono8_and_mono16():
    seg = make()
    gray = np.full((8, 10), 200, np.uint8)
    assert seg.process([Frame(gray, 'mono')], ('label',))[0]['label'].shape == (8, 10)
    gray16 = np.full((8, 10, 1), 65535, np.uint16)
    out = seg.process([Frame(gray16, 'mono')], ('overlay',))[0]
    assert out['overlay'].dtype == np.uint8 and out['overlay'].shape == (8, 10, 3)


def test_padded_rows_view_is_read_correctly():
    # A strided view, as the ROS converter returns for images whose step has padding.
    buffer = np.zeros((24, 40, 3), np.uint8)
    buffer[:, :36] = stripes()
    view = buffer[:, :36]
    out = make().process([Frame(view, 'rgb')], ('label',))[0]
    assert np.array_equal(out['label'], expected_labels())


@pytest.mark.parametrize('upsample', ['logits', 'labels'])
def test_outputs_at_input_resolution(upsample):
    seg = make(Pooled(), upsample=upsample)
    out = seg.process([Frame(stripes(48, 72), 'rgb')])[0]
    assert out['label'].shape == (48, 72)
    assert out['confidence'].shape == (48, 72)
    assert out['color'].shape == (48, 72, 3)
    agree = (out['label'] == expected_labels(48, 72)).mean()
    assert agree > 0.9


def test_fixed_model_size_resizes_back():
    seg = make(input_size=(18, 12))
    out = seg.process([Frame(stripes(), 'rgb')], ('label',))[0]
    assert out['label'].shape == (24, 36)
    assert (out['label'] == expected_labels()).mean() > 0.9


def test_size_divisor_pads_and_crops():
    seg = make(divisor=16)
    out = seg.process([Frame(stripes(), 'rgb')], ('label',))[0]
    assert np.array_equal(out['label'], expected_labels())


def test_batch_of_different_sizes_keeps_order():
    seg = make()
    frames = [Frame(stripes(24, 36), 'rgb'), Frame(stripes(12, 18), 'rgb'),
              Frame(stripes(24, 36)[:, :, ::-1].copy(), 'bgr')]
    out = seg.process(frames, ('label',))
    assert [o['label'].shape for o in out] == [(24, 36), (12, 18), (24, 36)]
    assert np.array_equal(out[1]['label'], expected_labels(12, 18))
    assert np.array_equal(out[2]['label'], expected_labels())


def test_color_drivable_overlay_confidence_values():
    seg = make(overlay_alpha=1.0)
    out = seg.process([Frame(stripes(), 'rgb')])[0]
    lut = seg.classes.colors
    assert np.array_equal(out['color'], lut[expected_labels()])
    assert np.array_equal(out['overlay'], out['color'])
    assert set(np.unique(out['drivable'])) == {0, 255}
    assert np.array_equal(out['drivable'] == 255, expected_labels() == 1)
    # softmax of one-hot 1.0 logits over 3 classes: e / (e + 2) = 0.576
    assert np.all(np.abs(out['confidence'].astype(int) - 147) <= 1)
    seg.set_overlay_alpha(0.0)
    assert np.array_equal(seg.process([Frame(stripes(), 'rgb')], ('overlay',))[0]['overlay'],
                          stripes())


def test_only_asked_outputs_come_back():
    out = make().process([Frame(stripes(), 'rgb')], ('drivable',))[0]
    assert set(out) == {'drivable'}
    with pytest.raises(EngineError, match='unknown outputs'):
        make().process([Frame(stripes(), 'rgb')], ('depth',))


def test_more_than_256_classes_give_uint16_labels():
    module = torch.nn.Conv2d(3, 300, 1)
    with torch.no_grad():
        module.weight.zero_()
        module.bias.zero_()
        module.bias[299] = 1.0
    out = make(module, count=300).process([Frame(stripes(), 'rgb')], ('label',))[0]
    assert out['label'].dtype == np.uint16 and (out['label'] == 299).all()


def test_class_count_mismatch_is_refused():
    model = ModuleModel(Channels(), 3, Preprocess(), name='tiny')
    with pytest.raises(ValueError, match='has 12 classes but tiny outputs 3'):
        Segmenter(model, classes.load('camvid'), device='cpu')


def test_model_returning_wrong_shape_is_reported():
    seg = make(count=3, warmup=False)
    seg.model.module = torch.nn.Conv2d(3, 5, 1)
    with pytest.raises(EngineError, match=r'expected \(N, 3, h, w\)'):
        seg.process([Frame(stripes(), 'rgb')], ('label',))


@pytest.mark.parametrize('bad,message', [
    (np.zeros((0, 4, 3), np.uint8), 'not be empty|not empty'),
    (np.zeros((4, 4, 2), np.uint8), r'\(H, W, 1\|3\|4\)'),
    (np.zeros((4, 4, 3), np.float32), 'dtype must be uint8 or uint16'),
])
def test_bad_frames(bad, message):
    with pytest.raises(EngineError, match=message):
        make().process([Frame(bad, 'rgb')], ('label',))


def test_precision_and_channels_last_agree_with_fp32():
    img = Frame(stripes(), 'rgb')
    reference = make().process([img], ('label',))[0]['label']
    for kwargs in ({'precision': 'bf16'}, {'channels_last': True}):
        assert np.array_equal(make(**kwargs).process([img], ('label',))[0]['label'], reference)


def test_device_selection():
    assert select_device('cpu').type == 'cpu'
    assert select_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(EngineError, match='invalid device'):
        select_device('tpu')
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available.*'auto'"):
            select_device('cuda:0')


def test_stage_timings_are_reported():
    seg = make()
    seg.process([Frame(stripes(), 'rgb')])
    assert set(seg.timings) == {'preprocess', 'inference', 'postprocess'}
    assert all(v >= 0 for v in seg.timings.values())


def test_padding_is_cropped_at_the_logits_resolution():
    # Logits at 1/4 of a padded input: the padded border must not stretch into the image.
    seg = make(Pooled(), divisor=16)
    out = seg.process([Frame(stripes(24, 36), 'rgb')], ('label',))[0]
    assert out['label'].shape == (24, 36)
    assert (out['label'] == expected_labels(24, 36)).mean() > 0.9
    assert (out['label'][:, -4:] == 2).all()  # the blue band reaches the right edge


def test_tensor_frames_decoded_on_the_device_give_the_same_labels():
    # What the node feeds on CUDA after nvjpeg decoding: an (H, W, 3) uint8 tensor.
    img = stripes()
    seg = make()
    from_tensor = seg.process([Frame(torch.from_numpy(img), 'rgb')], ('label',))[0]['label']
    assert np.array_equal(from_tensor, expected_labels())


def test_compile_switch_compiles_the_forward(monkeypatch):
    calls = []

    def fake_compile(function, **kwargs):
        calls.append(kwargs)
        return function

    monkeypatch.setattr(torch, 'compile', fake_compile)
    seg = make(compiled=True)
    assert calls == [{'dynamic': True}]
    assert np.array_equal(seg.process([Frame(stripes(), 'rgb')], ('label',))[0]['label'],
                          expected_labels())


def test_same_shaped_frames_of_one_batch_use_separate_staging_buffers():
    from semseg_ros.core.engine import _Uploader
    upload = _Uploader(torch.device('cpu'))
    upload._alloc = lambda shape, dtype: torch.empty(shape, dtype=dtype)  # no pinning on CPU
    a = upload.stage(torch.zeros(4, 4, 3, dtype=torch.uint8))
    b = upload.stage(torch.ones(4, 4, 3, dtype=torch.uint8))
    assert a.data_ptr() != b.data_ptr() and int(a.sum()) == 0
    upload.reset()
    c = upload.stage(torch.full((4, 4, 3), 2, dtype=torch.uint8))
    assert c.data_ptr() == a.data_ptr()


@pytest.mark.parametrize('max_batch,forwards', [(0, 3), (1, 3), (2, 2), (8, 1)])
def test_max_batch_splits_the_forward_passes(max_batch, forwards):
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x

    seg = make(Counting(), max_batch=max_batch, warmup=False)
    frames = [Frame(stripes(), 'rgb')] * 3
    out = seg.process(frames, ('label',))
    assert len(calls) == forwards and sum(calls) == 3
    assert all(np.array_equal(o['label'], expected_labels()) for o in out)

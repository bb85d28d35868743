"""Tests of the Image / CompressedImage <-> ndarray conversion."""

import array
import struct
import sys

import cv2
from hypothesis import event
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
from semseg_ros.io import image as image_io
from semseg_ros.io.image import array_to_image
from semseg_ros.io.image import compressed_to_array
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import ImageError
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image
from std_msgs.msg import Header

MAX_EXAMPLES = 300
HOST_BIG = sys.byteorder == 'big'
PAD = 0xEE

# encoding -> (dtype, stored channels, color of the result); written out here on purpose,
# independent of the module's own table.
PLAIN = {
    'rgb8': (np.uint8, 3, 'rgb'),
    'bgr8': (np.uint8, 3, 'bgr'),
    'rgba8': (np.uint8, 4, 'rgba'),
    'bgra8': (np.uint8, 4, 'bgra'),
    'mono8': (np.uint8, 1, 'mono'),
    '8UC1': (np.uint8, 1, 'mono'),
    '8UC3': (np.uint8, 3, 'bgr'),
    '8UC4': (np.uint8, 4, 'bgra'),
    'mono16': (np.uint16, 1, 'mono'),
    '16UC1': (np.uint16, 1, 'mono'),
    'rgb16': (np.uint16, 3, 'rgb'),
    'bgr16': (np.uint16, 3, 'bgr'),
    'rgba16': (np.uint16, 4, 'rgba'),
    'bgra16': (np.uint16, 4, 'bgra'),
    '16UC3': (np.uint16, 3, 'bgr'),
    '16UC4': (np.uint16, 4, 'bgra'),
}
YUV = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')
# Bayer pattern -> the color (0 r, 1 g, 2 b) of the 2x2 cells: top-left, top-right,
# bottom-left, bottom-right.
BAYER = {'rggb': (0, 1, 1, 2), 'bggr': (2, 1, 1, 0), 'gbrg': (1, 2, 0, 1), 'grbg': (1, 0, 2, 1)}
# Bytes per pixel as stored, for the property test.
BYTES_PER_PIXEL = {name: np.dtype(dtype).itemsize * channels
                   for name, (dtype, channels, _) in PLAIN.items()}
BYTES_PER_PIXEL.update(dict.fromkeys(YUV, 2))
BYTES_PER_PIXEL.update({f'bayer_{p}8': 1 for p in BAYER})
BYTES_PER_PIXEL.update({f'bayer_{p}16': 2 for p in BAYER})


def make_image(raw, encoding, step=None, big=False):
    """Build an Image by hand from an H x W x bytes-per-pixel uint8 array, padding each row."""
    height, width = raw.shape[:2]
    row = raw.reshape(height, -1)
    step = row.shape[1] if step is None else step
    data = np.full((height, step), PAD, np.uint8)
    data[:, :row.shape[1]] = row
    msg = Image()
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = int(big)
    msg.step = step
    msg.data = array.array('B', data.tobytes())
    return msg


def as_bytes(values, big):
    """Return the uint8 view (H x W x bytes) of an array stored in the given byte order."""
    stored = values.astype(values.dtype.newbyteorder('>' if big else '<'))
    return stored.view(np.uint8).reshape(values.shape[0], values.shape[1], -1)


def msg_buffer(msg):
    """Return the message data as a uint8 array (no copy)."""
    return np.frombuffer(msg.data, np.uint8)


@pytest.mark.parametrize('encoding, big', [(name, False) for name in sorted(PLAIN)] + [
    (name, True) for name in sorted(PLAIN) if PLAIN[name][0] == np.uint16])
@pytest.mark.parametrize('padding', [0, 3])
def test_plain_encodings(encoding, padding, big):
    dtype, channels, color = PLAIN[encoding]
    rng = np.random.default_rng(1)
    values = rng.integers(0, np.iinfo(dtype).max, (5, 7, channels), dtype=dtype, endpoint=True)
    raw = as_bytes(values.reshape(5, 7 * channels), big).reshape(5, 7, -1)
    step = raw.shape[1] * raw.shape[2] + padding * np.dtype(dtype).itemsize
    msg = make_image(raw, encoding, step, big)
    result, got_color = image_to_array(msg)
    assert got_color == color
    assert result.shape == (5, 7, channels)
    assert result.dtype == dtype
    assert result.dtype.isnative
    np.testing.assert_array_equal(result, values)
    zero_copy = dtype == np.uint8 or big == HOST_BIG
    assert np.shares_memory(result, msg_buffer(msg)) == zero_copy


def test_mono16_big_endian_values():
    values = np.array([[0x0102, 0xA0B0, 0x00FF]], np.uint16)
    msg = make_image(as_bytes(values, True), 'mono16', big=True)
    assert bytes(msg.data) == b'\x01\x02\xa0\xb0\x00\xff'
    result, color = image_to_array(msg)
    assert color == 'mono'
    assert result[:, :, 0].tolist() == [[0x0102, 0xA0B0, 0x00FF]]


def test_step_padding_is_skipped():
    msg = make_image(np.arange(12, dtype=np.uint8).reshape(2, 2, 3), 'rgb8', step=10)
    assert len(msg.data) == 20
    result, _ = image_to_array(msg)
    assert result.reshape(-1).tolist() == list(range(12))
    assert result.strides == (10, 3, 1)
    assert PAD not in result


def test_odd_step_16_bit_gives_aligned_copy():
    values = np.array([[1, 2], [3, 65535]], np.uint16)
    msg = make_image(as_bytes(values, HOST_BIG), 'mono16', step=5, big=HOST_BIG)
    result, _ = image_to_array(msg)
    np.testing.assert_array_equal(result[:, :, 0], values)
    assert result.flags.aligned and result.strides[0] % 2 == 0


def test_longer_data_is_accepted():
    msg = make_image(np.ones((2, 3, 1), np.uint8), 'mono8')
    msg.data = array.array('B', bytes(msg.data) + b'\x07' * 5)
    result, _ = image_to_array(msg)
    assert result.shape == (2, 3, 1)
    assert (result == 1).all()


def test_bytes_data_is_read_without_copy():
    msg = make_image(np.zeros((2, 4, 3), np.uint8), 'bgr8')
    msg._data = b'\x05' * 24  # as a generator could leave it: bytes instead of array.array
    result, _ = image_to_array(msg)
    assert (result == 5).all()
    assert not result.flags.writeable


def yuv_pairs(rng, height, width):
    """Return random Y and shared U, V planes for a 4:2:2 image."""
    y = rng.integers(16, 236, (height, width), dtype=np.uint8)
    u = rng.integers(16, 241, (height, width // 2), dtype=np.uint8)
    v = rng.integers(16, 241, (height, width // 2), dtype=np.uint8)
    return y, u, v


@pytest.mark.parametrize('padding', [0, 4])
def test_yuv422_layouts(padding):
    rng = np.random.default_rng(2)
    y, u, v = yuv_pairs(rng, 4, 6)
    uyvy = np.stack([u, y[:, 0::2], v, y[:, 1::2]], axis=-1).reshape(4, 6, 2)
    yuyv = np.stack([y[:, 0::2], u, y[:, 1::2], v], axis=-1).reshape(4, 6, 2)
    reference = cv2.cvtColor(uyvy, cv2.COLOR_YUV2RGB_UYVY)
    for encoding, raw in (('yuv422', uyvy), ('uyvy', uyvy), ('yuv422_yuy2', yuyv),
                          ('yuyv', yuyv)):
        result, color = image_to_array(make_image(raw, encoding, 12 + padding))
        assert color == 'rgb'
        assert result.shape == (4, 6, 3)
        assert result.flags.c_contiguous
        np.testing.assert_array_equal(result, reference)


def test_yuv422_gray_values():
    raw = np.full((2, 4, 2), 128, np.uint8)  # Y = U = V = 128: mid gray
    result, _ = image_to_array(make_image(raw, 'yuv422'))
    assert np.abs(result.astype(int) - 128).max() <= 2


def mosaic(color, pattern, height, width, dtype):
    """Return a Bayer mosaic of a uniform RGB color."""
    cells = BAYER[pattern]
    raw = np.empty((height, width), dtype)
    raw[0::2, 0::2] = color[cells[0]]
    raw[0::2, 1::2] = color[cells[1]]
    raw[1::2, 0::2] = color[cells[2]]
    raw[1::2, 1::2] = color[cells[3]]
    return raw


@pytest.mark.parametrize('pattern', sorted(BAYER))
@pytest.mark.parametrize('bits', [8, 16])
def test_bayer_patterns(pattern, bits):
    dtype = np.uint8 if bits == 8 else np.uint16
    color = (200, 100, 30) if bits == 8 else (50000, 20000, 3000)
    raw = mosaic(color, pattern, 8, 10, dtype)
    big = bits == 16  # the 16-bit case also exercises a byte swap
    data = as_bytes(raw, big) if bits == 16 else raw[:, :, None]
    result, got = image_to_array(make_image(data, f'bayer_{pattern}{bits}', 10 * bits // 8 + 2,
                                            big))
    assert got == 'rgb'
    assert result.shape == (8, 10, 3)
    assert result.dtype == dtype
    inner = result[2:-2, 2:-2].reshape(-1, 3)
    np.testing.assert_array_equal(inner, np.tile(color, (inner.shape[0], 1)))


def valid_msg():
    """Return a valid 4x3 rgb8 message."""
    return make_image(np.zeros((3, 4, 3), np.uint8), 'rgb8')


@pytest.mark.parametrize('change, words', [
    ({'encoding': 'fancy'}, ["unsupported encoding 'fancy'", 'rgb8', 'bayer_rggb8']),
    ({'encoding': ''}, ['unsupported encoding']),
    ({'width': 0}, ['empty image', 'width 0']),
    ({'height': 0}, ['empty image', 'height 0']),
    ({'width': 16385, 'step': 3 * 16385}, ['16385x3', 'limit of 16384']),
    ({'height': 20000}, ['4x20000', 'limit']),
    ({'step': 11}, ['step 11', 'width 4', '12']),
    ({'step': 13}, ['data has 36 bytes', 'step 13', 'height 3', '39']),
    ({'height': 4}, ['data has 36 bytes', '48']),
    ({'data': b''}, ['data has 0 bytes']),
    ({'encoding': 'yuv422', 'width': 3, 'step': 6}, ['even width', 'got 3']),
])
def test_errors_name_the_problem(change, words):
    msg = valid_msg()
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(ImageError) as error:
        image_to_array(msg)
    for word in words:
        assert word in str(error.value)


def test_non_integer_fields_raise():
    msg = valid_msg()
    msg._width = 'four'
    with pytest.raises(ImageError, match='width'):
        image_to_array(msg)
    msg = valid_msg()
    msg._step = -12
    with pytest.raises(ImageError, match='step'):
        image_to_array(msg)


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)


def test_max_side_is_a_module_setting(monkeypatch):
    monkeypatch.setattr(image_io, 'MAX_SIDE', 3)
    with pytest.raises(ImageError, match='limit of 3'):
        image_to_array(valid_msg())


@pytest.mark.parametrize('encoding', sorted(PLAIN) + ['yuv422', 'bayer_grbg8', 'bayer_rggb16'])
def test_round_trip(encoding):
    dtype, channels, _ = PLAIN.get(encoding, (np.uint8, 2 if 'yuv' in encoding else 1, None))
    if encoding.endswith('16'):
        dtype = np.uint16
    rng = np.random.default_rng(3)
    values = rng.integers(0, np.iinfo(dtype).max, (6, 8, channels), dtype=dtype)
    header = Header(frame_id='cam')
    header.stamp.sec = 12
    msg = array_to_image(values, encoding, header)
    assert isinstance(msg.data, array.array)
    assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 12
    assert (msg.height, msg.width, msg.encoding) == (6, 8, encoding)
    assert msg.step == 8 * channels * np.dtype(dtype).itemsize
    assert len(msg.data) == msg.step * 6
    assert msg.is_bigendian == 0 or HOST_BIG
    result, _ = image_to_array(msg)
    if encoding in PLAIN:
        np.testing.assert_array_equal(result, values)
    else:
        assert result.shape == (6, 8, 3)


def test_array_to_image_accepts_2d_and_non_contiguous():
    values = np.arange(48, dtype=np.uint8).reshape(6, 8)
    msg = array_to_image(values[:, ::2], 'mono8')
    assert (msg.width, msg.step) == (4, 4)
    np.testing.assert_array_equal(image_to_array(msg)[0][:, :, 0], values[:, ::2])


def test_array_to_image_big_endian_input():
    values = np.array([[1, 258]], dtype='>u2')
    msg = array_to_image(values, '16UC1')
    assert msg.is_bigendian == 1
    assert bytes(msg.data) == b'\x00\x01\x01\x02'
    np.testing.assert_array_equal(image_to_array(msg)[0][:, :, 0], [[1, 258]])


def test_array_to_image_default_header():
    msg = array_to_image(np.zeros((1, 1, 3), np.uint8), 'rgb8')
    assert msg.header.frame_id == '' and msg.header.stamp.sec == 0


@pytest.mark.parametrize('values, encoding, words', [
    (np.zeros((2, 2, 3), np.uint8), 'mono8', ['H x W x 1', '(2, 2, 3)']),
    (np.zeros((2, 2), np.uint8), 'rgb8', ['H x W x 3']),
    (np.zeros((2, 2, 3), np.uint16), 'rgb8', ['uint8', 'uint16']),
    (np.zeros((2, 2, 3), np.float32), 'rgb16', ['uint16', 'float32']),
    (np.zeros((2, 2, 3), np.int8), 'rgb8', ['uint8', 'int8']),
    (np.zeros((0, 2, 3), np.uint8), 'rgb8', ['empty image']),
    (np.zeros((2, 2, 3), np.uint8), 'jpeg', ["unsupported encoding 'jpeg'"]),
    (np.zeros((2, 3, 2), np.uint8), 'yuv422', ['even width']),
    (np.zeros(5, np.uint8), 'mono8', ['H x W x 1']),
])
def test_array_to_image_errors(values, encoding, words):
    with pytest.raises(ImageError) as error:
        array_to_image(values, encoding)
    for word in words:
        assert word in str(error.value)


def compressed(data, fmt):
    """Build a CompressedImage."""
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', bytes(data))
    return msg


def encoded(values, suffix):
    """Encode an array with OpenCV."""
    ok, data = cv2.imencode(suffix, values)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize('fmt', ['png', 'rgb8; png compressed bgr8', 'PNG', ''])
def test_png_color(fmt):
    bgr = np.random.default_rng(4).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    result, color = compressed_to_array(compressed(encoded(bgr, '.png'), fmt))
    assert color == 'bgr'
    np.testing.assert_array_equal(result, bgr)


def test_png_gray_alpha_and_16_bit():
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    result, color = compressed_to_array(compressed(encoded(gray, '.png'), 'mono8; png'))
    assert color == 'mono' and result.shape == (5, 6, 1)
    np.testing.assert_array_equal(result[:, :, 0], gray)
    bgra = np.random.default_rng(5).integers(0, 255, (4, 3, 4), dtype=np.uint8)
    result, color = compressed_to_array(compressed(encoded(bgra, '.png'), 'bgra8; png'))
    assert color == 'bgra'
    np.testing.assert_array_equal(result, bgra)
    depth = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    result, color = compressed_to_array(compressed(encoded(depth, '.png'), 'png'))
    assert color == 'mono' and result.dtype == np.uint16
    np.testing.assert_array_equal(result[:, :, 0], depth)


def test_compressed_depth_png():
    depth = (np.arange(12, dtype=np.uint16) * 3000).reshape(3, 4)
    data = bytes(12) + encoded(depth, '.png')
    result, color = compressed_to_array(compressed(data, '16UC1; compressedDepth png'))
    assert color == 'mono'
    np.testing.assert_array_equal(result[:, :, 0], depth)


@pytest.mark.parametrize('fmt', ['jpeg', 'rgb8; jpeg compressed bgr8', 'jpg'])
def test_jpeg_color(fmt):
    bgr = np.zeros((16, 24, 3), np.uint8)
    bgr[:] = (30, 120, 220)
    result, color = compressed_to_array(compressed(encoded(bgr, '.jpg'), fmt))
    assert color == 'bgr'
    assert result.shape == (16, 24, 3)
    assert np.abs(result.astype(int) - bgr).max() <= 4


def test_jpeg_gray():
    gray = np.full((8, 8), 77, np.uint8)
    result, color = compressed_to_array(compressed(encoded(gray, '.jpg'), 'mono8; jpeg'))
    assert color == 'mono' and result.shape == (8, 8, 1)
    assert np.abs(result.astype(int) - 77).max() <= 2


@pytest.mark.parametrize('data, words', [
    (b'', ['no data']),
    (b'hello world', ['neither JPEG nor PNG']),
    (b'\x89PNG\r\n\x1a\n' + b'\x00' * 40, ['no frame size found']),
    (b'\xff\xd8\xff' + b'\x00' * 40, ['no frame size found']),
])
def test_compressed_errors(data, words):
    with pytest.raises(ImageError) as error:
        compressed_to_array(compressed(data, 'jpeg'))
    for word in words:
        assert word in str(error.value)


def test_compressed_truncated_png():
    data = encoded(np.zeros((20, 20, 3), np.uint8), '.png')
    with pytest.raises(ImageError, match='cannot decode'):
        compressed_to_array(compressed(data[:len(data) // 2], 'png'))


@pytest.mark.parametrize('suffix', ['.png', '.jpg'])
def test_compressed_size_limit_checked_before_decoding(suffix, monkeypatch):
    data = encoded(np.zeros((2, 40), np.uint8), suffix)
    monkeypatch.setattr(image_io, 'MAX_SIDE', 32)
    monkeypatch.setattr(cv2, 'imdecode', None)  # decoding would fail with TypeError
    with pytest.raises(ImageError, match='40x2 exceeds'):
        compressed_to_array(compressed(data, suffix[1:]))


def test_png_header_size():
    data = encoded(np.zeros((3, 5), np.uint8), '.png')
    assert struct.unpack('>II', data[16:24]) == (5, 3)


@st.composite
def image_messages(draw):
    """Draw an Image message with random (often invalid) header fields and data length."""
    encoding = draw(st.sampled_from(sorted(BYTES_PER_PIXEL) + ['RGB8', 'foo', '', '32FC1']))
    bpp = BYTES_PER_PIXEL.get(encoding.lower(), BYTES_PER_PIXEL.get(encoding, 1))
    width = draw(st.one_of(st.integers(0, 24), st.sampled_from([16383, 16384, 16385])))
    height = draw(st.integers(0, 2 if width > 100 else 24))
    row = width * bpp
    step = draw(st.one_of(st.just(row), st.integers(max(row - 3, 0), row + 9)))
    length = draw(st.one_of(st.just(step * height),
                            st.integers(max(step * height - 5, 0), step * height + 5)))
    msg = Image()
    msg.encoding = encoding
    msg.width = width
    msg.height = height
    msg.step = step
    msg.is_bigendian = draw(st.integers(0, 1))
    msg.data = array.array('B', bytes(length))
    return msg


def expected_shape(msg):
    """Return the expected result shape, or None when the message is invalid."""
    name = msg.encoding.lower()
    names = {key.lower(): key for key in BYTES_PER_PIXEL}
    if name not in names:
        return None
    bpp = BYTES_PER_PIXEL[names[name]]
    if not (0 < msg.width <= 16384 and 0 < msg.height <= 16384):
        return None
    if name in YUV and msg.width % 2:
        return None
    if msg.step < msg.width * bpp or len(msg.data) < msg.step * msg.height:
        return None
    if names[name] in PLAIN:
        channels = PLAIN[names[name]][1]
    else:
        channels = 3
    return (msg.height, msg.width, channels)


@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(image_messages())
def test_any_message_converts_or_raises_image_error(msg):
    shape = expected_shape(msg)
    event('rejected' if shape is None else 'converted')
    if shape is None:
        with pytest.raises(ImageError):
            image_to_array(msg)
    else:
        result, color = image_to_array(msg)
        assert result.shape == shape
        assert color in ('rgb', 'bgr', 'rgba', 'bgra', 'mono')


def test_jpeg_decoded_as_a_tensor_matches_opencv():
    from semseg_ros.io.image import compressed_to_tensor
    from semseg_ros.io.image import is_jpeg
    img = (np.random.default_rng(3).random((48, 64, 3)) * 255).astype(np.uint8)
    ok, data = cv2.imencode('.jpg', img)
    msg = CompressedImage(format='jpeg', data=data.tobytes())
    assert is_jpeg(msg)
    tensor, color = compressed_to_tensor(msg, 'cpu')
    array, _ = compressed_to_array(msg)
    assert color == 'rgb' and tuple(tensor.shape) == (48, 64, 3)
    assert np.abs(tensor.numpy().astype(int) - array[:, :, ::-1].astype(int)).max() <= 1
    with pytest.raises(ImageError, match='not JPEG'):
        compressed_to_tensor(CompressedImage(format='png', data=b'\x89PNG\r\n\x1a\nxx'), 'cpu')
    with pytest.raises(ImageError, match='no frame size found'):
        compressed_to_tensor(CompressedImage(format='jpeg', data=b'\xff\xd8\xffgarbage'), 'cpu')

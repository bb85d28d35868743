"""
Property-based fuzzing of everything that parses outside input.

Image and CompressedImage messages (whatever a sender puts in them), class-set structures and
files, and parameter values: each either converts to the correct result or raises the one
documented exception type (ImageError, ClassSetError, SettingsError) with a message. Never
another exception, never a hang, never a read outside the message buffer.

The reference results here are built independently of semseg_ros.io.image: our own table of
encodings, and pixel values picked out of the raw bytes by index arithmetic.

Examples per run (docs/RELIABILITY.md): image_to_array 2000 near-valid + 1500 any fields + 300
fields of any Python type, compressed_to_array 1000 arbitrary bytes + 1000 corrupted real
PNG/JPEG, class sets 1000 structures + 200 files, settings 400 (each with every parameter) +
400 from_values: 7800 in all. Inputs that once broke a converter are kept as explicit tests.
"""

import array
import math
import os
import struct
import sys
import tempfile
import time
import zlib

import cv2
from hypothesis import event
from hypothesis import example
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
from numpy.lib.array_utils import byte_bounds
import pytest
from semseg_ros.core import classes as class_sets
from semseg_ros.core import settings as cfg
from semseg_ros.core.classes import ClassSetError
from semseg_ros.core.settings import SettingsError
from semseg_ros.io.image import compressed_to_array
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import ImageError
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image
import yaml

# Example counts; the total is reported in docs/RELIABILITY.md.
NEAR_VALID_EXAMPLES = 2000
ANY_IMAGE_EXAMPLES = 1500
FIELD_EXAMPLES = 300
COMPRESSED_EXAMPLES = 1000
CORRUPTED_EXAMPLES = 1000
CLASS_EXAMPLES = 1000
CLASS_FILE_EXAMPLES = 200
SETTINGS_EXAMPLES = 400

# One call must never use this much CPU (a decoder walking a huge bogus size) ...
CALL_LIMIT_S = 5.0
# ... nor take this long (a hang). Wall time has a wide margin: a loaded 2-core CI machine
# once stalled a 33 x 1 PNG decode for 5.6 s that took milliseconds when run again. The
# thread's CPU time counts a stall of the virtual machine too (a 12 x 7 PNG decode "used"
# 6.8 s in a later CI run, milliseconds again at once), so a call over the CPU limit runs
# once more and fails only if it is over again: a decoder's own cost repeats, a stall not.
HANG_LIMIT_S = 60.0
# Written out here on purpose: independent of the module under test.
MAX_SIDE = 16384
UINT32_MAX = 2**32 - 1
# Largest data we build for a message that should convert (keeps examples fast).
DATA_LIMIT = 1 << 16
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


def fuzz(examples):
    """Return the hypothesis settings of a fuzz test with this many examples."""
    return settings(FUZZ, max_examples=examples)


# encoding -> (bytes per sample, samples per pixel, color of the result)
PLAIN = {
    'rgb8': (1, 3, 'rgb'), 'bgr8': (1, 3, 'bgr'), 'rgba8': (1, 4, 'rgba'),
    'bgra8': (1, 4, 'bgra'), 'mono8': (1, 1, 'mono'), '8uc1': (1, 1, 'mono'),
    '8uc3': (1, 3, 'bgr'), '8uc4': (1, 4, 'bgra'), 'mono16': (2, 1, 'mono'),
    '16uc1': (2, 1, 'mono'), 'rgb16': (2, 3, 'rgb'), 'bgr16': (2, 3, 'bgr'),
    'rgba16': (2, 4, 'rgba'), 'bgra16': (2, 4, 'bgra'), '16uc3': (2, 3, 'bgr'),
    '16uc4': (2, 4, 'bgra'),
}
# encoding -> (bytes per sample, bytes per pixel as stored, OpenCV conversion to RGB)
PACKED = {
    'yuv422': (1, 2, cv2.COLOR_YUV2RGB_UYVY), 'uyvy': (1, 2, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (1, 2, cv2.COLOR_YUV2RGB_YUYV), 'yuyv': (1, 2, cv2.COLOR_YUV2RGB_YUYV),
    'bayer_rggb8': (1, 1, cv2.COLOR_BayerRGGB2RGB), 'bayer_bggr8': (1, 1, cv2.COLOR_BayerBGGR2RGB),
    'bayer_gbrg8': (1, 1, cv2.COLOR_BayerGBRG2RGB), 'bayer_grbg8': (1, 1, cv2.COLOR_BayerGRBG2RGB),
    'bayer_rggb16': (2, 2, cv2.COLOR_BayerRGGB2RGB),
    'bayer_bggr16': (2, 2, cv2.COLOR_BayerBGGR2RGB),
    'bayer_gbrg16': (2, 2, cv2.COLOR_BayerGBRG2RGB),
    'bayer_grbg16': (2, 2, cv2.COLOR_BayerGRBG2RGB),
}
PAIRED = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')
KNOWN = sorted(PLAIN) + sorted(PACKED)


def timed(func, *args):
    """Return func(*args) or raise its exception; fail past the CPU (twice) or hang limits."""
    for _ in range(2):
        start, cpu = time.perf_counter(), time.thread_time()
        result, error = None, None
        try:
            result = func(*args)
        except Exception as exc:  # noqa: B902 - raised again below, after the timing
            error = exc
        elapsed, used = time.perf_counter() - start, time.thread_time() - cpu
        assert elapsed < HANG_LIMIT_S, f'{func.__name__} took {elapsed:.1f} s'
        if used < CALL_LIMIT_S:
            break
    else:
        raise AssertionError(f'{func.__name__} used {used:.1f} s of CPU, twice in a row')
    if error is not None:
        raise error
    return result


def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_timed_fails_a_call_slow_twice_and_passes_one_stall(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], 'CALL_LIMIT_S', 0.05)
    calls = []

    def once(value):  # slow the first time only, as a stall of the machine is
        calls.append(value)
        burn(0.1 if len(calls) == 1 else 0.0)
        return value

    assert timed(once, 7) == 7 and calls == [7, 7]
    with pytest.raises(AssertionError, match='used 0.1 s of CPU, twice in a row'):
        timed(burn, 0.1)
    with pytest.raises(ValueError, match='bad'):
        timed(lambda: (_ for _ in ()).throw(ValueError('bad')))


def bytes_per_pixel(encoding):
    """Return the stored bytes per pixel of a known encoding (lower case), else None."""
    if encoding in PLAIN:
        depth, channels, _ = PLAIN[encoding]
        return depth * channels
    if encoding in PACKED:
        return PACKED[encoding][1]
    return None


# Image messages as DDS can deliver them: uint32 sizes, a uint8 endianness flag, any string.
encodings = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN).map(str.upper),
    st.sampled_from(KNOWN).map(lambda e: f' {e}\t'),
    st.sampled_from(['8UC2', '32FC1', '16SC1', 'bayer_rggb', 'rgb', 'jpeg', 'yuv420', 'nv12',
                     'rgb8\x00', 'rgb 8', '']),
    st.text(max_size=14),
)
small_side = st.integers(0, 40)
uint32 = st.integers(0, UINT32_MAX)
big_side = st.sampled_from([MAX_SIDE - 1, MAX_SIDE, MAX_SIDE + 1, 2**31, UINT32_MAX])


def make_message(draw, encoding, width, height, step, length, seed):
    """Build the Image of the drawn fields with random data; return (msg, data bytes)."""
    raw = np.random.default_rng(seed).bytes(length)
    msg = Image()
    msg.encoding = encoding
    msg.width = width
    msg.height = height
    msg.step = step
    msg.is_bigendian = draw(st.one_of(st.just(0), st.just(1), st.integers(0, 255)))
    kind = draw(st.sampled_from(['array', 'array', 'bytes', 'bytearray']))
    if kind == 'array':
        msg.data = array.array('B', raw)
    else:
        # A message built in Python may hold other buffers; bypass the converting setter.
        # (A list of ints: see test_list_data_converts.)
        msg._data = {'bytes': raw, 'bytearray': bytearray(raw)}[kind]
    return msg, raw


@st.composite
def near_valid_images(draw):
    """
    Draw an Image of a known encoding with step and length at or just above their minimum.

    One in five crosses one boundary: step one byte short, data one byte short, or a zero
    side; widths reach MAX_SIDE (one row).
    """
    encoding = draw(st.one_of(st.sampled_from(KNOWN), st.sampled_from(KNOWN).map(str.upper),
                              st.sampled_from(KNOWN).map(lambda e: f' {e}\t')))
    bpp = bytes_per_pixel(encoding.strip().lower())
    width = draw(st.one_of(st.integers(1, 40), st.integers(1, 40), st.just(MAX_SIDE)))
    height = 1 if width == MAX_SIDE else draw(st.integers(1, 40))
    row = width * bpp
    step = row + draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 8]))
    length = step * height + draw(st.sampled_from([0, 0, 0, 1, 5]))
    broken = draw(st.sampled_from([''] * 16 + ['step', 'length', 'width', 'height']))
    if broken == 'step':
        step = row - 1
    elif broken == 'length':
        length = step * height - 1
    elif broken == 'width':
        width = 0
    elif broken == 'height':
        height = 0
    return make_message(draw, encoding, width, height, step, length,
                        draw(st.integers(0, 2**32 - 1)))


@st.composite
def any_images(draw):
    """Draw an Image with any field values DDS can carry (uint32 sizes, any encoding string)."""
    encoding = draw(encodings)
    bpp = bytes_per_pixel(encoding.strip().lower()) or draw(st.integers(1, 8))
    width = draw(st.one_of(small_side, big_side, uint32))
    height = draw(st.one_of(small_side, st.integers(0, 3), big_side, uint32))
    row = width * bpp
    step = draw(st.one_of(st.just(row), st.integers(max(row - 4, 0), row + 9), uint32))
    need = step * height
    lengths = [st.integers(0, 64)]
    if need <= DATA_LIMIT:
        lengths += [st.just(need), st.integers(max(need - 9, 0), need + 9)]
    length = draw(st.one_of(*lengths))
    return make_message(draw, encoding, width, height, min(step, UINT32_MAX), length,
                        draw(st.integers(0, 2**32 - 1)))


def expected(msg, raw):
    """
    Return the reference (array, color) for a message, or None when it must be rejected.

    Plain encodings: every sample is picked out of the raw bytes by its offset
    (row * step + (column * channels + channel) * depth), byte order from is_bigendian.
    Packed encodings: the stored samples picked out the same way, converted with OpenCV.
    """
    name = msg.encoding.strip().lower()
    bpp = bytes_per_pixel(name)
    width, height, step = msg.width, msg.height, msg.step
    if bpp is None or not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        return None
    if name in PAIRED and width % 2:
        return None
    if step < width * bpp or len(raw) < step * height:
        return None
    if name in PLAIN:
        depth, channels, color = PLAIN[name]
    else:
        depth, stored, _ = PACKED[name]
        channels, color = stored // depth, 'rgb'
    buf = np.frombuffer(raw, np.uint8).astype(np.int64)
    r, c, k = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels),
                          indexing='ij')
    offset = r * step + (c * channels + k) * depth
    if depth == 1:
        values = buf[offset].astype(np.uint8)
    else:
        first, second = buf[offset], buf[offset + 1]
        big = bool(msg.is_bigendian)
        values = (first * 256 + second if big else second * 256 + first).astype(np.uint16)
    if name in PACKED:
        image = values if channels > 1 else values[:, :, 0]
        values = cv2.cvtColor(image, PACKED[name][2])
    return values, color


def check_image(msg, raw):
    """image_to_array gives the reference result, or ImageError when the message is invalid."""
    want = expected(msg, raw)
    name = msg.encoding.strip().lower()
    event('rejected' if want is None else 'plain' if name in PLAIN else 'packed')
    if want is None:
        with pytest.raises(ImageError) as error:
            timed(image_to_array, msg)
        assert str(error.value)
        return
    result, color = timed(image_to_array, msg)
    values, want_color = want
    assert color == want_color
    assert result.dtype == values.dtype and result.dtype.isnative
    assert result.shape == values.shape
    np.testing.assert_array_equal(result, values)
    buf = np.frombuffer(msg._data, np.uint8)
    if np.shares_memory(result, buf):
        # A view: every byte it can reach lies inside the message buffer.
        low, high = byte_bounds(result)
        start, end = byte_bounds(buf)
        assert start <= low and high <= end


@fuzz(NEAR_VALID_EXAMPLES)
@given(near_valid_images())
def test_image_to_array_near_valid(drawn):
    check_image(*drawn)


@fuzz(ANY_IMAGE_EXAMPLES)
@given(any_images())
def test_image_to_array_any_fields(drawn):
    check_image(*drawn)


def test_list_data_converts():
    msg = Image(encoding='mono8', width=3, height=1, step=3)
    msg._data = [1, 2, 255]  # as a message built in Python, bypassing the setter, can hold
    assert image_to_array(msg)[0].reshape(-1).tolist() == [1, 2, 255]


odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=5),
    st.floats(allow_nan=True, allow_infinity=False), st.lists(st.integers(0, 3), max_size=3),
)
# Not integers for data: bytes(n) would allocate n bytes (see the report in RELIABILITY.md).
odd_data = st.one_of(st.none(), st.text(max_size=5), st.floats(),
                     st.lists(st.integers(-1, 300), max_size=40))


@fuzz(FIELD_EXAMPLES)
@given(st.fixed_dictionaries({
    '_width': st.one_of(st.integers(0, 8), odd_values),
    '_height': st.one_of(st.integers(0, 8), odd_values),
    '_step': st.one_of(st.integers(0, 40), odd_values),
    '_encoding': st.one_of(st.sampled_from(KNOWN), odd_values),
    '_is_bigendian': st.one_of(st.integers(0, 1), odd_values),
    '_data': st.one_of(st.binary(max_size=300), odd_data),
}))
def test_fields_of_any_python_type_raise_image_error(fields):
    """A message built in Python (no DDS type check) with fields of the wrong type."""
    msg = Image()
    for name, value in fields.items():
        setattr(msg, name, value)
    try:
        result, color = timed(image_to_array, msg)
    except ImageError as error:
        assert str(error)
        return
    assert result.ndim == 3 and color in ('rgb', 'bgr', 'rgba', 'bgra', 'mono')


@pytest.mark.parametrize('field', ['_width', '_height', '_step'])
def test_infinite_size_field_raises_image_error(field):
    msg = Image(encoding='mono8', width=2, height=2, step=2, data=bytes(4))
    setattr(msg, field, math.inf)
    with pytest.raises(ImageError, match=field[1:]):
        image_to_array(msg)


def check_decoded(result):
    """Check the shape, type and color of a decoded compressed image."""
    image, color = result
    assert image.ndim == 3
    assert 0 < image.shape[0] <= MAX_SIDE and 0 < image.shape[1] <= MAX_SIDE
    assert image.dtype in (np.uint8, np.uint16)
    assert color == {1: 'mono', 3: 'bgr', 4: 'bgra'}[image.shape[2]]


def compressed(data, fmt):
    """Build a CompressedImage holding data."""
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', bytes(data))
    return msg


def decode_or_error(msg):
    """Return the decoded (array, color), or None after an ImageError with a message."""
    try:
        result = timed(compressed_to_array, msg)
    except ImageError as error:
        assert str(error)
        return None
    check_decoded(result)
    return result


PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
JPEG_MAGIC = b'\xff\xd8\xff'
formats = st.one_of(st.sampled_from(['jpeg', 'png', 'rgb8; jpeg compressed bgr8',
                                     '16UC1; compressedDepth png', 'compressedDepth', '']),
                    st.text(max_size=20))


@fuzz(COMPRESSED_EXAMPLES)
@given(st.one_of(st.binary(max_size=600),
                 st.binary(max_size=600).map(lambda b: PNG_MAGIC + b),
                 st.binary(max_size=600).map(lambda b: JPEG_MAGIC + b),
                 st.binary(max_size=600).map(lambda b: bytes(12) + PNG_MAGIC + b)),
       formats)
def test_compressed_arbitrary_bytes(data, fmt):
    decode_or_error(compressed(data, fmt))


@st.composite
def real_images(draw):
    """Draw a small image and encode it as PNG (8 or 16 bit, 1/3/4 channels) or JPEG."""
    kind = draw(st.sampled_from(['png', 'jpeg']))
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([1, 3, 4] if kind == 'png' else [1, 3]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16])) if kind == 'png' else np.uint8
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = rng.integers(0, np.iinfo(dtype).max, (height, width, channels), dtype=dtype,
                         endpoint=True)
    if channels == 1:
        image = image[:, :, 0]
    ok, encoded = cv2.imencode('.png' if kind == 'png' else '.jpg', image)
    assert ok
    return kind, image, encoded.tobytes()


def set_png_size(data, width, height, fix_crc):
    """Write a size into a PNG's IHDR chunk, with its CRC fixed or left stale."""
    out = bytearray(data)
    out[16:24] = struct.pack('>II', width, height)
    if fix_crc:
        out[29:33] = struct.pack('>I', zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def set_jpeg_size(data, width, height):
    """Write a size into a JPEG's first start-of-frame segment."""
    out = bytearray(data)
    pos = 2
    while pos + 9 <= len(out) and out[pos] == 0xFF:
        marker = out[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            out[pos + 5:pos + 9] = struct.pack('>HH', height & 0xFFFF, width & 0xFFFF)
            break
        pos += 2 + struct.unpack('>H', bytes(out[pos + 2:pos + 4]))[0]
    return bytes(out)


png_sizes = st.one_of(st.integers(0, 70), st.sampled_from([MAX_SIDE, MAX_SIDE + 1, 65535]),
                      st.integers(0, UINT32_MAX))
# Claimed sizes far beyond what the data encodes are refused before decoding
# (test_jpeg_size_bomb_is_rejected).
jpeg_sizes = st.one_of(st.integers(0, 300), st.sampled_from([MAX_SIDE, MAX_SIDE + 1, 65535]))


@st.composite
def mutations(draw, data, kind):
    """Apply one random corruption to encoded bytes; return (name, bytes)."""
    how = draw(st.sampled_from(['none', 'truncate', 'flip', 'splice', 'drop', 'size',
                                'size_crc']))
    n = len(data)
    if how == 'truncate':
        return how, data[:draw(st.integers(0, n - 1))]
    if how == 'flip':
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        return how, bytes(out)
    if how == 'splice':
        pos = draw(st.integers(0, n))
        return how, data[:pos] + draw(st.binary(min_size=1, max_size=64)) + data[pos:]
    if how == 'drop':
        start = draw(st.integers(0, n - 1))
        return how, data[:start] + data[start + draw(st.integers(1, 64)):]
    if how in ('size', 'size_crc'):
        sizes = png_sizes if kind == 'png' else jpeg_sizes
        width, height = draw(sizes), draw(sizes)
        if kind == 'png':
            return how, set_png_size(data, width, height, how == 'size_crc')
        return how, set_jpeg_size(data, width, height)
    return how, data


@fuzz(CORRUPTED_EXAMPLES)
@given(real_images(), st.data())
def test_compressed_corrupted_real_images(encoded, data):
    kind, image, raw = encoded
    how, damaged = data.draw(mutations(raw, kind))
    fmt = data.draw(st.sampled_from([kind, f'rgb8; {kind} compressed bgr8', '']))
    result = decode_or_error(compressed(damaged, fmt))
    if how == 'none':
        assert result is not None
        decoded = result[0]
        assert decoded.shape[:2] == image.shape[:2]
        if kind == 'png':
            np.testing.assert_array_equal(decoded.reshape(image.shape), image)


def test_jpeg_size_bomb_is_rejected():
    ok, encoded = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))
    assert ok
    # 4096 x 4096 (48 MB decoded) keeps this cheap; 16384 x 16384 behaves the same.
    bomb = set_jpeg_size(encoded.tobytes(), 4096, 4096)
    assert len(bomb) < 1000
    with pytest.raises(ImageError):
        compressed_to_array(compressed(bomb, 'jpeg'))


# Class sets: arbitrary YAML-like structures, and near-valid ones with broken fields.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300),
                    st.floats(allow_nan=True), st.text(max_size=6))
structures = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
entry_keys = st.sampled_from(['id', 'name', 'color', 'drivable', 'Id', 'colour', ''])


def class_entries(keys):
    """Return a strategy of class-set entries, mostly valid, with any field broken."""
    good_entry = st.fixed_dictionaries(
        {'id': st.integers(0, 6), 'name': st.sampled_from(['road', 'sky', 'car', 'Road', 'x']),
         'color': st.lists(st.integers(0, 255), min_size=3, max_size=3)},
        optional={'drivable': st.booleans()})
    broken_entry = st.builds(
        lambda entry, extra: {**entry, **extra}, good_entry,
        st.dictionaries(keys, structures, max_size=2))
    return st.one_of(good_entry, good_entry, broken_entry, structures)


def class_set_data(keys=entry_keys):
    """Return a strategy of whole class-set structures."""
    near_valid = st.fixed_dictionaries(
        {'classes': st.lists(class_entries(keys), max_size=8)},
        optional={'name': structures, 'ignore_id': st.one_of(st.integers(-2, 8), structures)})
    return st.one_of(near_valid, near_valid, structures,
                     st.dictionaries(st.text(max_size=8), structures, max_size=3))


def check_class_set(data, source='<fuzz>'):
    """from_dict returns a consistent ClassSet or raises ClassSetError naming the source."""
    try:
        result = class_sets.from_dict(data, source)
    except ClassSetError as error:
        assert source in str(error)
        return None
    count = len(result)
    assert 0 < count == len(result.names) == len(result.colors)
    assert result.colors.dtype == np.uint8 and result.colors.shape == (count, 3)
    assert all(0 <= i < count for i in result.drivable)
    assert result.ignore_id is None or 0 <= result.ignore_id < count
    assert len({n.lower() for n in result.names}) == count
    assert result.drivable_lut().shape == (count,)
    return result


@fuzz(CLASS_EXAMPLES)
@given(class_set_data())
def test_class_set_from_any_structure(data):
    check_class_set(data)


@fuzz(100)
@example({'classes': [{'id': 0, 'name': 'a', 'color': [0, 0, 0], 1: 'x', 'foo': 2}]})
@given(class_set_data(st.one_of(entry_keys, st.integers(0, 3), st.booleans())))
def test_class_set_with_non_string_keys(data):
    check_class_set(data)


def class_file_texts():
    """Return a strategy of class-set YAML texts: dumps of structures, and raw text."""
    dumped = class_set_data().map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    return st.one_of(dumped, dumped, st.text(max_size=80),
                     st.sampled_from(['', 'classes: [', ': :', '- - -', '{classes: []}']))


def load_text(text):
    """Write text to a class-set file and load it; return ClassSet or None after an error."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'fuzz.yaml')
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        try:
            return class_sets.load(path)
        except ClassSetError as error:
            assert 'fuzz.yaml' in str(error)
            return None


def yaml_fails_oddly(text):
    """Return True when yaml.safe_load raises something other than a YAMLError."""
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    except Exception:  # noqa: B902 - that is what we look for
        return True
    return False


# YAML that PyYAML's safe loader turns into ValueError, KeyError, AttributeError or
# RecursionError instead of a YAMLError.
ODD_YAML = ['2001-13-01', '{a: 2001-02-30}', '{a: !!float x}', '{a: !!int x}',
            '{a: !!bool x}', '{a: !!timestamp x}', '[' * 5000]


@fuzz(CLASS_FILE_EXAMPLES)
@given(class_file_texts())
def test_class_set_file_with_any_text(text):
    load_text(text)


@pytest.mark.parametrize('text', ODD_YAML + ['name: x\nignore_id: 2001-13-01\nclasses: []'])
def test_class_set_file_with_odd_yaml(text):
    load_text(text)


# Settings: arbitrary values of every declared parameter.
any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(), st.text(max_size=12),
    st.lists(st.one_of(st.text(max_size=6), st.integers(), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
option_texts = st.one_of(st.text(max_size=30), st.sampled_from(
    ['{}', '{a: 1}', '[1]', '{name: x, conf: 0.5}', 'a: b', '{a', '!!python/object:os.system']))


def values_for(spec):
    """Return a strategy of values for one parameter: boundaries, near misses, anything."""
    options = [any_value]
    if spec.low is not None:
        low, high = spec.low, spec.high
        if spec.value_type is int:
            options.append(st.sampled_from([int(low) - 1, int(low), int(high), int(high) + 1]))
            options.append(st.integers(int(low) - 10, int(high) + 10))
        else:
            options.append(st.sampled_from([low, high, math.nextafter(low, -math.inf),
                                            math.nextafter(high, math.inf), math.nan,
                                            math.inf, -math.inf, int(low)]))
            options.append(st.floats(low - 1.0, high + 1.0))
    if spec.choices:
        options.append(st.sampled_from(list(spec.choices) + [c.upper() for c in spec.choices]
                                       + [' ' + spec.choices[0], '']))
    if spec.name == 'device':
        options.append(st.sampled_from(['auto', 'cpu', 'cuda', 'cuda:0', 'cuda:12', 'CUDA:1',
                                        ' cpu ', 'cuda:', 'cuda:x', 'cuda:-1', 'gpu']))
    if spec.name == 'model.options':
        options.append(option_texts)
    if spec.value_type is list:
        options.append(st.lists(st.text(max_size=8), max_size=4))
    if spec.value_type is bool:
        options.append(st.booleans())
    return st.one_of(*options)


def check_one(spec, value):
    """check() returns a valid value of the right type or raises SettingsError naming it."""
    try:
        result = cfg.check(spec.name, value)
    except SettingsError as error:
        assert spec.name in str(error)
        return
    if spec.value_type is list:
        assert isinstance(result, list) and all(isinstance(v, str) and v for v in result)
    else:
        assert isinstance(result, spec.value_type)
        assert spec.value_type is not int or not isinstance(result, bool)
    if spec.low is not None:
        assert spec.low <= result <= spec.high
    if spec.choices:
        assert result in spec.choices
    assert cfg.check(spec.name, result) == result  # a checked value stays valid


@fuzz(SETTINGS_EXAMPLES)
@given(st.data())
def test_settings_check_every_parameter(data):
    for spec in cfg.PARAMETERS:
        value = data.draw(values_for(spec), label=spec.name)
        check_one(spec, value)


@fuzz(SETTINGS_EXAMPLES)
@given(st.data())
def test_settings_from_any_values(data):
    names = data.draw(st.lists(st.sampled_from([s.name for s in cfg.PARAMETERS] + ['bogus']),
                               max_size=8, unique=True))
    values = {name: data.draw(values_for(cfg.SPECS[name]) if name in cfg.SPECS else any_value,
                              label=name) for name in names}
    try:
        result = cfg.from_values(values)
    except SettingsError as error:
        assert 'parameter' in str(error)
        return
    assert isinstance(result, cfg.Settings)
    assert 'bogus' not in values
    assert 0.0 <= result.overlay_alpha <= 1.0
    assert result.cameras and len(set(result.cameras)) == len(result.cameras)
    assert result.input_size is None or min(result.input_size) > 0
    assert isinstance(result.options, dict)


@pytest.mark.parametrize('text', ODD_YAML)
def test_model_options_odd_yaml(text):
    with pytest.raises(SettingsError, match='model.options'):
        cfg.check('model.options', text)


@pytest.mark.parametrize('value', ['cuda:\u00b2', 'cuda:\u0663'])
def test_device_index_is_ascii_digits(value):
    with pytest.raises(SettingsError, match='device'):
        cfg.check('device', value)


def test_odd_yaml_is_what_the_fuzzers_exclude():
    assert all(yaml_fails_oddly(text) for text in ODD_YAML)
    assert not yaml_fails_oddly('{a: 1}') and not yaml_fails_oddly('{a')


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q']))

"""semseg-ros-make-bag: bags from image folders and videos, read back with rosbags."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import get_typestore
from rosbags.typesys import Stores
from semseg_ros.io.image import compressed_to_array
from semseg_ros.tools import make_bag

TYPES = get_typestore(Stores.ROS2_JAZZY)


def frame(index, width=40, height=30):
    """Return a distinct RGB frame."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def read_back(path):
    """Return {topic: [(bag timestamp, message)]} and the reader's connections."""
    out = {}
    with Reader(path) as reader:
        connections = {c.topic: c.msgtype for c in reader.connections}
        for connection, timestamp, raw in reader.messages():
            msg = TYPES.deserialize_cdr(raw, connection.msgtype)
            out.setdefault(connection.topic, []).append((timestamp, msg))
    return out, connections


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    for i in range(5):
        cv2.imwrite(str(images / f'f{i:03d}.png'), cv2.cvtColor(frame(i), cv2.COLOR_RGB2BGR))
    (images / 'notes.txt').write_text('not an image')
    return images


def test_folder_to_bag_read_back(folder, tmp_path, capsys):
    out = tmp_path / 'drive'
    assert make_bag.main([str(folder), str(out), '--rate', '4', '--start', '1000.5',
                          '--topic', '/cam/image_raw', '--no-progress']) == 0
    line = capsys.readouterr().out
    assert 'semseg-ros-make-bag: 5 frames (40x30) at 4 Hz, 1.2 s' in line
    messages, connections = read_back(out)
    assert connections == {'/cam/image_raw': 'sensor_msgs/msg/Image',
                           '/cam/camera_info': 'sensor_msgs/msg/CameraInfo'}
    images = messages['/cam/image_raw']
    infos = messages['/cam/camera_info']
    assert len(images) == len(infos) == 5
    for i, ((stamp, msg), (info_stamp, info)) in enumerate(zip(images, infos)):
        expected_ns = 1_000_500_000_000 + i * 250_000_000
        assert stamp == info_stamp == expected_ns
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == expected_ns
        assert msg.header.frame_id == info.header.frame_id == 'camera_optical_frame'
        assert (msg.encoding, msg.width, msg.height, msg.step) == ('rgb8', 40, 30, 120)
        assert np.array_equal(np.asarray(msg.data).reshape(30, 40, 3), frame(i))
        assert (info.width, info.height) == (40, 30) and info.k[0] == 40.0


def test_video_to_compressed_bag(tmp_path):
    video = tmp_path / 'drive.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 12.0, (64, 48))
    assert writer.isOpened()
    plain = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(6)]
    for image in plain:
        writer.write(image)
    writer.release()
    out = tmp_path / 'bag'
    # The console script as a user runs it, in its own process.
    done = subprocess.run(
        [sys.executable, '-m', 'semseg_ros.tools.make_bag', str(video), str(out),
         '--compressed', '--frames', '4', '--width', '32', '--storage', 'mcap'],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'at 12 Hz' in done.stdout  # the video's own rate
    messages, connections = read_back(out)
    assert connections['/camera/image_raw/compressed'] == 'sensor_msgs/msg/CompressedImage'
    assert list(out.glob('*.mcap'))
    images = messages['/camera/image_raw/compressed']
    assert len(images) == 4 and len(messages['/camera/camera_info']) == 4
    stamps = [stamp for stamp, _ in images]
    assert np.allclose(np.diff(stamps), 1e9 / 12.0, atol=1)
    for i, (_, msg) in enumerate(images):
        array, encoding = compressed_to_array(msg)
        assert array.shape == (24, 32, 3)
        assert abs(float(array.mean()) - 20 * i) < 6  # JPEG of a JPEG: close, not exact


@pytest.mark.parametrize('argv, message', [
    (['missing_folder', 'out'], 'does not exist'),
    (['{folder}', 'out', '--rate', '0'], '--rate'),
    (['{folder}', '{folder}'], 'exists'),
    (['{folder}', 'out', '--topic', 'cam/'], 'not a topic name'),
])
def test_bad_input_is_refused(folder, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(folder=folder) for a in argv]
    assert make_bag.main(argv + ['--no-progress']) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_mono_encoding(folder, tmp_path):
    out = tmp_path / 'mono'
    assert make_bag.main([str(folder), str(out), '--encoding', 'mono8', '--frames', '2',
                          '--no-camera-info', '--no-progress']) == 0
    messages, connections = read_back(out)
    assert list(connections) == ['/camera/image_raw']
    msg = messages['/camera/image_raw'][0][1]
    gray = cv2.cvtColor(frame(0), cv2.COLOR_RGB2GRAY)
    assert msg.encoding == 'mono8' and np.array_equal(np.asarray(msg.data).reshape(30, 40), gray)

"""Tests of the camera source: FrameSource without ROS, and the node over real DDS."""

import os
import subprocess
import sys
import time

from conftest import claim_domain
import cv2
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.io.image import image_to_array
from semseg_ros.tools.camera_source import FrameSource
from semseg_ros.tools.camera_source import SourceError
from semseg_ros.tools.camera_source import synthetic_frame
from sensor_msgs.msg import CameraInfo
from sensor_msgs.msg import Image

DOMAIN_ID = claim_domain()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Colors (RGB) of the images written into test folders, in file-name order.
COLORS = [(255, 0, 0), (0, 200, 0), (10, 20, 250)]


def write_folder(folder, size=(32, 24)):
    """Write one PNG per color (plus files that are not images) and return the folder."""
    folder.mkdir(exist_ok=True)
    for index, color in enumerate(COLORS):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:] = color[::-1]
        assert cv2.imwrite(str(folder / f'frame_{index:03d}.png'), frame)
    (folder / 'notes.txt').write_text('not an image')
    return folder


def test_synthetic_frames_move():
    first = synthetic_frame(0, 64, 48)
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, synthetic_frame(1, 64, 48))
    np.testing.assert_array_equal(first, synthetic_frame(0, 64, 48))
    assert synthetic_frame(5, 1, 1).shape == (1, 1, 3)


def test_synthetic_source_sizes():
    source = FrameSource()
    assert source.kind == 'synthetic'
    assert source.read().shape == (480, 640, 3)
    assert FrameSource(width=80, height=30).read().shape == (30, 80, 3)
    assert FrameSource(width=80).read().shape == (60, 80, 3)
    frames = FrameSource(width=16, height=8)
    seen = [frames.read() for _ in range(5)]
    assert all(frame is not None for frame in seen)
    assert frames.delivered == 5


def test_folder_source(tmp_path):
    folder = write_folder(tmp_path / 'images')
    (folder / 'frame_001b.png').write_bytes(b'broken')
    warnings = []
    source = FrameSource(str(folder), loop=False, warn=warnings.append)
    assert source.kind == 'folder'
    frames = list(source)
    assert len(frames) == 3
    for frame, color in zip(frames, COLORS):
        assert frame.shape == (24, 32, 3)
        assert (frame == color).all()
    assert len(warnings) == 1 and 'frame_001b.png' in warnings[0]
    assert source.read() is None


def test_folder_source_loops_and_resizes(tmp_path):
    folder = write_folder(tmp_path / 'images')
    source = FrameSource(str(folder), width=16, height=12, loop=True)
    frames = [source.read() for _ in range(7)]
    assert [tuple(frame[0, 0]) for frame in frames] == [tuple(c) for c in COLORS * 2 + COLORS[:1]]
    assert all(frame.shape == (12, 16, 3) for frame in frames)
    source.close()
    assert source.read() is None
    assert FrameSource(str(folder), height=12).read().shape == (12, 16, 3)


def test_single_image_source(tmp_path):
    folder = write_folder(tmp_path / 'images')
    path = str(folder / 'frame_002.png')
    once = FrameSource(path, loop=False)
    assert once.kind == 'image'
    assert len(list(once)) == 1
    looped = FrameSource(path, loop=True)
    frames = [looped.read() for _ in range(3)]
    assert all((frame == COLORS[2]).all() for frame in frames)


def write_video(path, count=8, size=(48, 32)):
    """Write a small MJPG video whose frame i is a uniform gray of 20 * i; return the path."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, size)
    assert writer.isOpened()
    for index in range(count):
        writer.write(np.full((size[1], size[0], 3), 20 * index, np.uint8))
    writer.release()
    return str(path)


def test_video_source(tmp_path):
    path = write_video(tmp_path / 'clip.avi')
    source = FrameSource(path, loop=False)
    assert source.kind == 'video'
    frames = list(source)
    assert len(frames) == 8
    for index, frame in enumerate(frames):
        assert frame.shape == (32, 48, 3)
        assert abs(float(frame.mean()) - 20 * index) < 4
    looped = FrameSource(path, width=24, height=16, loop=True)
    frames = [looped.read() for _ in range(12)]
    assert all(frame.shape == (16, 24, 3) for frame in frames)
    assert abs(float(frames[9].mean()) - 20) < 4
    looped.close()


@pytest.mark.parametrize('kind', ['missing', 'empty folder', 'bad video', 'bad image'])
def test_bad_sources_raise(tmp_path, kind):
    if kind == 'missing':
        path, words = tmp_path / 'nothing.mp4', 'does not exist'
    elif kind == 'empty folder':
        path, words = tmp_path / 'empty', 'holds no image'
        path.mkdir()
        (path / 'readme.txt').write_text('x')
    elif kind == 'bad video':
        path, words = tmp_path / 'clip.avi', 'cannot read a frame from video'
        path.write_text('not a video')
    else:
        path, words = tmp_path / 'picture.png', 'cannot read image'
        path.write_bytes(b'not a png')
    with pytest.raises(SourceError) as error:
        FrameSource(str(path))
    assert words in str(error.value)
    assert str(path) in str(error.value)


def node_env(tmp_path):
    """Return the environment for a node subprocess."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(DOMAIN_ID)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_LOG_DIR'] = str(tmp_path / 'ros_log')
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    env['PYTHONUNBUFFERED'] = '1'
    return env


def start_node(tmp_path, *params):
    """Start the camera source node as a subprocess with `-p` parameters."""
    command = [sys.executable, '-m', 'semseg_ros.tools.camera_source', '--ros-args', '-p',
               'wait_for_subscribers:=1']
    for param in params:
        command += ['-p', param]
    return subprocess.Popen(command, cwd=REPO, env=node_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def listener(monkeypatch):
    """Yield a function that runs a node subprocess and collects its Image and CameraInfo."""
    monkeypatch.setenv('ROS_DOMAIN_ID', str(DOMAIN_ID))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = rclpy.create_node('camera_source_test', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)

    def run(process, timeout=40.0):
        images, infos = [], []
        subscriptions = [node.create_subscription(Image, 'image', images.append, qos),
                         node.create_subscription(CameraInfo, 'camera_info', infos.append, qos)]
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            drain = time.monotonic() + 0.5
            while time.monotonic() < drain:
                executor.spin_once(timeout_sec=0.05)
        finally:
            if process.poll() is None:
                process.kill()
            output = process.communicate(timeout=10)[0]
            for subscription in subscriptions:
                node.destroy_subscription(subscription)
        return images, infos, process.returncode, output

    yield run
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def stamp(header):
    """Return a header stamp in nanoseconds."""
    return header.stamp.sec * 10 ** 9 + header.stamp.nanosec


def check_stream(images, infos, count, width, height, encoding, frame_id):
    """Check the received frames and return the decoded arrays."""
    # The first frames after discovery may be lost (see DESIGN.md); normally all arrive.
    assert count // 2 <= len(images) <= count
    stamps = [stamp(msg.header) for msg in images]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    arrays = []
    for msg in images:
        assert (msg.width, msg.height, msg.encoding) == (width, height, encoding)
        assert msg.header.frame_id == frame_id
        arrays.append(image_to_array(msg)[0])
    info_by_stamp = {stamp(info.header): info for info in infos}
    paired = [info_by_stamp[s] for s in stamps if s in info_by_stamp]
    assert len(paired) >= 5
    for info in paired:
        assert info.header.frame_id == frame_id
        assert (info.width, info.height) == (width, height)
        assert list(info.k) == [width, 0, width / 2, 0, width, height / 2, 0, 0, 1]
    return arrays


def test_node_publishes_synthetic_frames(tmp_path, listener):
    count = 40
    process = start_node(tmp_path, f'count:={count}', 'rate:=25.0', 'width:=64', 'height:=48',
                         'frame_id:=test_cam', 'encoding:=rgb8')
    images, infos, code, output = listener(process)
    assert code == 0, output
    assert f'published {count} frames' in output
    arrays = check_stream(images, infos, count, 64, 48, 'rgb8', 'test_cam')
    assert all(array.shape == (48, 64, 3) for array in arrays)


def test_node_publishes_folder_as_bgr(tmp_path, listener):
    folder = write_folder(tmp_path / 'images', size=(40, 30))
    count = 30
    process = start_node(tmp_path, f'source:={folder}', f'count:={count}', 'rate:=25.0',
                         'width:=20', 'height:=10', 'encoding:=bgr8', 'loop:=true')
    images, infos, code, output = listener(process)
    assert code == 0, output
    arrays = check_stream(images, infos, count, 20, 10, 'bgr8', 'camera_optical_frame')
    colors = {tuple(int(v) for v in array[5, 10]) for array in arrays}
    assert colors <= {color[::-1] for color in COLORS}
    assert len(colors) == 3


def test_node_exits_0_when_source_ends(tmp_path):
    folder = write_folder(tmp_path / 'images')
    process = start_node(tmp_path, f'source:={folder}', 'loop:=false', 'rate:=50.0',
                         'wait_for_subscribers:=0', 'reliability:=best_effort')
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert 'source ended after 3 frames' in output


@pytest.mark.parametrize('params, words', [
    (['source:=/does/not/exist.mp4'], "'/does/not/exist.mp4' does not exist"),
    (['encoding:=yuv422'], "parameter 'encoding'"),
    (['rate:=0.0'], 'rate out of range'),
    (['rate:=5'], 'rate:=5.0'),
    (['reliability:=sometimes'], "parameter 'reliability'"),
])
def test_node_setup_errors_exit_1(tmp_path, params, words):
    process = start_node(tmp_path, *params)
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 1, output
    assert words in output

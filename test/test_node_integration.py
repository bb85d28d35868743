"""The node in its own process over real DDS, started with the real params file.

A tiny TorchScript model with a known answer (logits = RGB channels: red pixels are class 0,
green 1, blue 2) makes every output checkable to the pixel; with the shared assets, the real
ESPNet weights are checked against the offline engine on a labelled CamVid image.
"""

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from conftest import claim_domain
import cv2
from diagnostic_msgs.msg import DiagnosticArray
from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.io.image import array_to_image
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import SUPPORTED_ENCODINGS
from sensor_msgs.msg import Image
from std_msgs.msg import Header
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / 'config' / 'semseg.yaml'
OUTPUTS = ('label', 'color', 'overlay', 'drivable', 'confidence')
ENCODINGS = {'label': 'mono8', 'color': 'rgb8', 'overlay': 'rgb8', 'drivable': 'mono8',
             'confidence': 'mono8'}
COLORS = [[200, 0, 0], [0, 200, 0], [0, 0, 200]]
TIMEOUT = 60.0


class Channels(torch.nn.Module):
    """Logits = input channels."""

    def forward(self, x):
        return x


def stripes(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :w // 3, 0] = 255
    img[:, w // 3:2 * (w // 3), 1] = 255
    img[:, 2 * (w // 3):, 2] = 255
    return img


def expected_labels(h, w):
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 3:2 * (w // 3)] = 1
    labels[:, 2 * (w // 3):] = 2
    return labels


class Harness:
    """A test-side ROS node: publishes images, collects every output by stamp."""

    def __init__(self, domain_id, namespace='', outputs=OUTPUTS):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('semseg_test_harness', context=self.context,
                                      namespace=namespace)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = {}
        self.service_clients = {}  # name -> client (test_node_features.service_client)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Image, 'image', qos)
        self.diagnostics = []
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.diagnostics.append, 10)
        for name in outputs:
            self.node.create_subscription(
                Image, f'segmentation/{name}',
                lambda msg, name=name: self.received.setdefault(stamp_key(msg), {})
                .__setitem__(name, msg), qos)

    def spin(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def send(self, array, encoding, frame_id='cam', stamp=None):
        header = Header(frame_id=frame_id)
        header.stamp = stamp or self.node.get_clock().now().to_msg()
        self.pub.publish(array_to_image(array, encoding, header))
        return header

    def wait_outputs(self, header, names=OUTPUTS, timeout=TIMEOUT):
        key = (header.stamp.sec, header.stamp.nanosec)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.received.get(key, {})
            if all(n in got for n in names):
                return got
            self.executor.spin_once(timeout_sec=0.05)
        raise AssertionError(f'outputs {names} for stamp {key} did not arrive in {timeout} s; '
                             f'got {sorted(self.received.get(key, {}))}')

    def wait_ready(self, process, timeout=TIMEOUT):
        """Send a small frame until the first output comes back (discovery can drop frames)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert process.poll() is None, 'the node exited early'
            header = self.send(stripes(6, 9), 'rgb8')
            self.spin(0.5)
            if self.received:
                return header
        raise AssertionError('the node never answered')

    def close(self):
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def stamp_key(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def start_node(domain_id, *params, namespace=None, env=None):
    env = dict(os.environ, **(env or {}), ROS_DOMAIN_ID=str(domain_id))
    cmd = [sys.executable, '-m', 'semseg_ros.node', '--ros-args', '--params-file', str(PARAMS)]
    for param in params:
        cmd += ['-p', param]
    if namespace:
        cmd += ['-r', f'__ns:={namespace}']
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop_node(process):
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stdout.read()


@pytest.fixture(scope='module')
def tiny_node(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny')
    model = folder / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    class_file = folder / 'rgb.yaml'
    class_file.write_text(yaml.safe_dump({'name': 'rgb', 'classes': [
        {'id': i, 'name': n, 'color': COLORS[i], **({'drivable': True} if i == 1 else {})}
        for i, n in enumerate(('red', 'green', 'blue'))]}))
    domain = claim_domain()
    process = start_node(domain, 'model.backend:=torchscript', f'model.weights:={model}',
                         f'classes:={class_file}', 'overlay_alpha:=1.0')
    harness = Harness(domain)
    try:
        harness.wait_ready(process)
        yield harness, process
    finally:
        harness.close()
        log = stop_node(process)
        print(log)


def diagnostics_status(harness, accept, timeout=TIMEOUT):
    """Spin until a /diagnostics status satisfies accept(status); return it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for array in reversed(harness.diagnostics):
            for status in array.status:
                if accept(status):
                    return status
        harness.spin(0.2)
    raise AssertionError('no matching /diagnostics status')


def diagnostics_values(harness, key, timeout=TIMEOUT):
    """Spin until a /diagnostics status has `key`; return its values as a dict."""
    status = diagnostics_status(
        harness, lambda s: any(kv.key == key for kv in s.values), timeout)
    return {kv.key: kv.value for kv in status.values}


@pytest.mark.parametrize('encoding,height,width', [
    ('rgb8', 48, 72), ('bgr8', 23, 37), ('rgb8', 360, 480)])
def test_every_output_at_input_resolution_with_input_header(tiny_node, encoding, height, width):
    harness, _ = tiny_node
    img = stripes(height, width)
    sent = img[:, :, ::-1].copy() if encoding == 'bgr8' else img
    header = harness.send(sent, encoding, frame_id=f'camera_{encoding}')
    got = harness.wait_outputs(header)
    want = expected_labels(height, width)
    for name, msg in got.items():
        assert msg.header.stamp == header.stamp, name
        assert msg.header.frame_id == header.frame_id, name
        assert (msg.width, msg.height) == (width, height), name
        assert msg.encoding == ENCODINGS[name], name
    label, _ = image_to_array(got['label'])
    assert np.array_equal(label.reshape(height, width), want)
    drivable, _ = image_to_array(got['drivable'])
    assert np.array_equal(drivable.reshape(height, width), np.where(want == 1, 255, 0))
    color, _ = image_to_array(got['color'])
    assert np.array_equal(color, np.array(COLORS, np.uint8)[want])
    overlay, _ = image_to_array(got['overlay'])
    assert np.array_equal(overlay, color)  # overlay_alpha 1.0 from the command line
    confidence, _ = image_to_array(got['confidence'])
    assert abs(int(np.median(confidence)) - 147) <= 1  # softmax(1, 0, 0) = 0.576


def test_mono8_input(tiny_node):
    harness, _ = tiny_node
    header = harness.send(np.full((20, 30), 90, np.uint8), 'mono8')
    got = harness.wait_outputs(header, ('label',))
    assert (got['label'].width, got['label'].height) == (30, 20)


def test_bad_frame_is_reported_and_the_next_one_processed(tiny_node):
    harness, process = tiny_node
    bad = Image(height=10, width=10, encoding='rgb8', step=30, data=bytes(50))
    bad.header.stamp = harness.node.get_clock().now().to_msg()
    harness.pub.publish(bad)
    harness.spin(0.3)
    header = harness.send(stripes(12, 18), 'rgb8')
    got = harness.wait_outputs(header, ('label',))
    assert got['label'].header.stamp == header.stamp
    assert process.poll() is None
    assert stamp_key(bad) not in harness.received


def test_missing_class_set_is_reported_and_the_node_stays_up(tmp_path):
    """A class-set file that does not exist: one clear error, the node keeps running."""
    model = tmp_path / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    domain = claim_domain()
    process = start_node(domain, 'model.backend:=torchscript', f'model.weights:={model}',
                         f'classes:={tmp_path / "missing.yaml"}', 'diagnostics_period:=0.5')
    harness = Harness(domain, outputs=())
    try:
        status = diagnostics_status(harness, lambda s: 'configure failed' in s.message)
        assert process.poll() is None
    finally:
        harness.close()
        log = stop_node(process)
    assert status.level == DiagnosticStatus.ERROR
    assert 'missing.yaml does not exist' in status.message
    assert 'missing.yaml does not exist' in log


def test_real_espnet_matches_the_offline_engine(espnet_weights, camvid_val):
    from semseg_ros.core import classes
    from semseg_ros.core.engine import Frame
    from semseg_ros.core.engine import Segmenter
    from semseg_ros.core.models import create_model

    image_path = sorted((camvid_val / 'images').glob('*.png'))[0]
    rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    truth = cv2.imread(str(camvid_val / 'labels' / image_path.name), cv2.IMREAD_UNCHANGED)
    domain = claim_domain()
    process = start_node(domain, f'model.weights:={espnet_weights}')
    harness = Harness(domain)
    try:
        harness.wait_ready(process, timeout=120)
        header = harness.send(rgb, 'rgb8', frame_id='camvid')
        got = harness.wait_outputs(header, ('label', 'drivable'))
    finally:
        harness.close()
        log = stop_node(process)
    label, _ = image_to_array(got['label'])
    label = label.reshape(rgb.shape[:2])
    model = create_model('espnet', weights=str(espnet_weights))
    offline = Segmenter(model, classes.load('camvid'), device='cpu').labels(
        [Frame(rgb, 'rgb')])[0]
    assert np.array_equal(label, offline), log
    valid = truth != 11
    assert (label[valid] == truth[valid]).mean() > 0.85
    road = truth == 3
    drivable, _ = image_to_array(got['drivable'])
    assert (drivable.reshape(rgb.shape[:2])[road] == 255).mean() > 0.9


@pytest.mark.parametrize('lazy', [True, False])
def test_no_subscriber_means_no_work(tmp_path, lazy):
    model = tmp_path / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    domain = claim_domain()
    process = start_node(domain, 'model.backend:=torchscript', f'model.weights:={model}',
                         'diagnostics_period:=0.5', f'lazy_input:={str(lazy).lower()}')
    harness = Harness(domain, outputs=())
    try:
        # Diagnostics of the active node first, then frames nobody wants.
        diagnostics_values(harness, 'input subscribed')
        for _ in range(20):
            harness.send(stripes(12, 18), 'rgb8')
            harness.spin(0.1)
        harness.spin(1.5)
        harness.diagnostics.clear()
        values = diagnostics_values(harness, 'frames skipped (no subscriber)')
        subscribers = harness.node.count_subscribers('image')
        # Lazy: the first output subscriber makes the node subscribe to its input.
        label = harness.node.create_subscription(Image, 'segmentation/label',
                                                 lambda msg: None, 10)
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and harness.node.count_subscribers('image') == 0:
            harness.spin(0.1)
        later = harness.node.count_subscribers('image')
        harness.node.destroy_subscription(label)
    finally:
        harness.close()
        log = stop_node(process)
    assert values['frames processed'] == '0', log
    assert values['device'] == 'cpu' and values['model'] == 'torchscript'
    assert later == 1
    if lazy:
        assert subscribers == 0 and values['input subscribed'] == 'false'
        assert values['frames received'] == '0'
    else:
        assert subscribers == 1 and values['input subscribed'] == 'true'
        assert int(values['frames received']) > 0
        assert int(values['frames skipped (no subscriber)']) > 0


def encoded_message(encoding, width=32, height=24, bigendian=0, seed=0):
    """Return an Image of random pixels in any supported encoding, rows padded by 6 bytes."""
    from semseg_ros.io.image import _SPECS
    spec = _SPECS[encoding.lower()]
    step = width * spec.depth * spec.channels + 6
    data = np.random.default_rng(seed).integers(0, 256, step * height, np.uint8).tobytes()
    return Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                 step=step, data=data)


@pytest.mark.parametrize('encoding,bigendian', [
    (e, 0) for e in SUPPORTED_ENCODINGS] + [('mono16', 1), ('rgb16', 1)])
def test_every_encoding_matches_the_reference_conversion(tiny_node, encoding, bigendian):
    from semseg_ros.core import classes
    from semseg_ros.core.engine import Frame
    from semseg_ros.core.engine import Segmenter
    from semseg_ros.core.models.base import ModuleModel

    harness, _ = tiny_node
    msg = encoded_message(encoding, bigendian=bigendian,
                          seed=SUPPORTED_ENCODINGS.index(encoding) + bigendian)
    msg.header = Header(frame_id=encoding, stamp=harness.node.get_clock().now().to_msg())
    harness.pub.publish(msg)
    got = harness.wait_outputs(msg.header, ('label',))
    array, color = image_to_array(msg)  # the reference conversion, tested against OpenCV
    model = ModuleModel(Channels(), 3, Preprocess(scale=1.0 / 255.0))
    reference = Segmenter(model, classes.generic(3), device='cpu', warmup=False).labels(
        [Frame(array, color)])[0]
    label, _ = image_to_array(got['label'])
    assert (got['label'].width, got['label'].height) == (32, 24)
    assert got['label'].header.frame_id == encoding
    assert np.array_equal(label[:, :, 0], reference)


def test_diagnostics_name_the_runtime(tiny_node):
    harness, _ = tiny_node
    values = diagnostics_values(harness, 'runtime')
    # auto on the CPU with a model that runs at each frame's size: torch (no export mid-stream).
    assert values['runtime'].startswith('torch (auto'), values['runtime']
    assert 'each frame' in values['runtime'], values['runtime']


def fresh_counts(harness, keys=('frames received', 'frames lost before the node')):
    """Return the camera's counters from a /diagnostics message sent after this call."""
    harness.diagnostics.clear()
    values = diagnostics_values(harness, keys[-1])
    return {key: values[key] for key in keys}


def test_frames_lost_before_the_node_are_counted(tiny_node):
    harness, _ = tiny_node
    harness.wait_outputs(harness.send(stripes(9, 12), 'rgb8'))
    before = fresh_counts(harness)  # the key is absent without publication sequence numbers
    burst = 60  # faster than the node's executor takes 2.7 MB frames from its depth-1 reader
    big = stripes(720, 1280)
    for _ in range(burst):
        harness.send(big, 'rgb8')
    harness.spin(1.0)
    # One more frame after the burst: every gap before it is then known.
    harness.wait_outputs(harness.send(stripes(9, 12), 'rgb8'))
    after = fresh_counts(harness)
    received, lost = (int(after[k]) - int(before[k]) for k in before)
    print(f'burst of {burst} + 1 frames: {received} received, {lost} lost before the node')
    assert received + lost == burst + 1

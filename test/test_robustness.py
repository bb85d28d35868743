"""
Nothing fatal, nothing silent: the node in its own process over real DDS.

- A fault (an exception of a different type each time) injected into every lifecycle
  transition through SEMSEG_ROS_FAULTS: each is logged and reported as ERROR in diagnostics
  with its type and message, the node releases everything and ends unconfigured (finalized
  after a failed shutdown), and it keeps serving requests.
- Malformed service requests (a parameter value of type 42, through set_parameters and
  set_parameters_atomically; a change_state with an unregistered transition id) get a failure
  answer, are counted in diagnostics, and the node answers a good request afterwards.
- Decompression bombs written by the test (a real 16384 x 16384 grayscale PNG, 8-bit and
  1-bit, and a JPEG whose frame header hides behind 192 KiB of other segments) are refused from
  their header: the node's peak RSS does not move and the next good frame is processed. Raw
  frames above max_input_pixels are refused the same way.
- use_sim_time without /clock: diagnostics, stale and lazy-input checks keep running, and the
  missing clock is reported until /clock arrives.
- An encoding with a control character is shown escaped in the error.
"""

import os
from pathlib import Path
import struct
import time
import zlib

from builtin_interfaces.msg import Time
from conftest import claim_domain
import cv2
from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import State
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import SetParameters
from rcl_interfaces.srv import SetParametersAtomically
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.io.image import image_to_array
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_node_features import expect_frame
from test_node_features import lifecycle
from test_node_features import service_client
from test_node_features import set_param
from test_node_integration import Channels
from test_node_integration import expected_labels
from test_node_integration import Harness
from test_node_integration import stripes
from test_node_integration import TIMEOUT
from test_reliability import RGB_CLASSES
from test_reliability import start_logged
from test_reliability import stop_logged
from test_reliability import values_of
from test_reliability import wait_status
import yaml

# One fault per transition, each of another exception type (InjectedFault is not a builtin).
FAULTS = {'configure': 'KeyError', 'activate': 'ZeroDivisionError', 'deactivate': '',
          'cleanup': 'AttributeError', 'shutdown': 'OSError'}
FAULT_TYPES = {name: kind or 'InjectedFault' for name, kind in FAULTS.items()}


@pytest.fixture(scope='module')
def tiny_files(tmp_path_factory):
    """Write the tiny channels model and its class set; return the folder and params."""
    folder = tmp_path_factory.mktemp('robust')
    model = folder / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    classes = folder / 'rgb.yaml'
    classes.write_text(yaml.safe_dump(RGB_CLASSES))
    return folder, ['model.backend:=torchscript', f'model.weights:={model}',
                    f'classes:={classes}', 'diagnostics_period:=0.2']


@pytest.fixture(scope='module')
def fault_node(tiny_files):
    """Start an unconfigured node with one fault planned in each transition."""
    folder, params = tiny_files
    log = folder / 'faults.log'
    domain = claim_domain()
    plan = ','.join(f'{name}:{kind}' if kind else name for name, kind in FAULTS.items())
    env = dict(os.environ, SEMSEG_ROS_FAULTS=plan)
    process = start_logged(domain, log, 'autostart:=false', *params, env=env)
    harness = Harness(domain, outputs=('label',))
    try:
        assert lifecycle(harness) == State.PRIMARY_STATE_UNCONFIGURED
        yield harness, process, log
    finally:
        harness.close()
        print(stop_logged(process, log))


def node_status(harness, accept=lambda status: True, timeout=TIMEOUT):
    """Wait for the node's own diagnostics status that accept() takes."""
    return wait_status(harness, accept, timeout=timeout, camera=False)


def wait_graph(harness, count, want, timeout=TIMEOUT):
    """Spin until count() == want (graph changes take a moment to be seen)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if count() == want:
            return True
        harness.spin(0.1)
    return count() == want


def raw_request(harness, kind, name, request):
    """Call a service and return the response (None when none came in 10 s)."""
    client = service_client(harness, kind, name)
    future = client.call_async(request)
    harness.executor.spin_until_future_complete(future, timeout_sec=10.0)
    return future.result() if future.done() else None


def bad_type_parameter(name='overlay_alpha'):
    """Return a parameter whose value has type 42, which no parameter type has."""
    return Parameter(name=name, value=ParameterValue(type=42, double_value=0.3))


class TestFaultsAndRequests:
    """One node process: malformed requests first, then a fault in every transition."""

    def test_malformed_requests_are_answered_and_the_node_keeps_serving(self, fault_node):
        harness, process, log = fault_node
        # set_parameters: the bad parameter fails alone, with a reason; the good one is set.
        good = Parameter(name='stale_timeout',
                         value=ParameterValue(type=3, double_value=3.5))  # PARAMETER_DOUBLE
        response = raw_request(harness, SetParameters, '/semseg/set_parameters',
                               SetParameters.Request(parameters=[bad_type_parameter(), good]))
        assert response is not None, f'no answer; node alive: {process.poll() is None}'
        bad_result, good_result = response.results
        assert not bad_result.successful and '42' in bad_result.reason, bad_result.reason
        assert good_result.successful, good_result.reason
        assert process.poll() is None
        # set_parameters_atomically: refused as a whole, nothing set.
        response = raw_request(
            harness, SetParametersAtomically, '/semseg/set_parameters_atomically',
            SetParametersAtomically.Request(parameters=[bad_type_parameter('stale_timeout')]))
        assert response is not None and not response.result.successful
        assert '42' in response.result.reason, response.result.reason
        # change_state with a transition id the state machine does not have.
        response = raw_request(harness, ChangeState, '/semseg/change_state',
                               ChangeState.Request(transition=Transition(id=77)))
        assert response is not None and not response.success
        assert process.poll() is None
        # Good requests are served as before; nothing bad was stored.
        assert set_param(harness, 'overlay_alpha', 0.25).successful
        assert lifecycle(harness) == State.PRIMARY_STATE_UNCONFIGURED
        from test_reliability import get_values
        values = get_values(harness, ['stale_timeout', 'overlay_alpha'])
        assert values['stale_timeout'][3] == 3.5 and values['overlay_alpha'][3] == 0.25
        # Counted in diagnostics (the node's own status), logged.
        status = node_status(harness, lambda s: int(values_of(s)['callback errors']) >= 3)
        assert values_of(status)['callback errors'] == '3', values_of(status)
        assert 'change_state' in values_of(status)['last callback error']
        text = Path(log).read_text(errors='replace')
        assert 'callback failed, the node keeps running' in text
        assert '42' in text

    def test_a_fault_in_every_transition_is_reported_and_released(self, fault_node):
        harness, process, log = fault_node
        label_publishers = lambda: harness.node.count_publishers('segmentation/label')  # noqa
        image_subscribers = lambda: harness.node.count_subscribers('image')  # noqa

        def fails(transition, name, end_state):
            state = lifecycle(harness, transition)
            assert not harness.last_transition_ok, name
            assert state == end_state, (name, state)
            status = node_status(harness, lambda s: s.message.startswith(f'{name} failed'))
            assert status.level == DiagnosticStatus.ERROR, status.message
            assert FAULT_TYPES[name] in status.message, status.message
            assert 'fault injected' in status.message, status.message
            # Everything released: no output publisher, no input subscription.
            assert wait_graph(harness, label_publishers, 0), name
            assert wait_graph(harness, image_subscribers, 0), name
            lines = [line for line in Path(log).read_text(errors='replace').splitlines()
                     if f'{name} failed: {FAULT_TYPES[name]}' in line]
            assert len(lines) == 1, (name, lines)
            assert process.poll() is None, name

        def succeeds(transition, end_state):
            assert lifecycle(harness, transition) == end_state
            assert harness.last_transition_ok, transition

        unconfigured = State.PRIMARY_STATE_UNCONFIGURED
        fails(Transition.TRANSITION_CONFIGURE, 'configure', unconfigured)
        succeeds(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE)
        fails(Transition.TRANSITION_ACTIVATE, 'activate', unconfigured)
        succeeds(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE)
        succeeds(Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE)
        # Serving again after two failures: a frame comes back, diagnostics are clean.
        got = expect_frame(harness)
        assert np.array_equal(image_to_array(got['label'])[0][:, :, 0], expected_labels(12, 18))
        fails(Transition.TRANSITION_DEACTIVATE, 'deactivate', unconfigured)
        succeeds(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE)
        fails(Transition.TRANSITION_CLEANUP, 'cleanup', unconfigured)
        succeeds(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE)
        succeeds(Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE)
        expect_frame(harness)
        # A failed shutdown still ends the node's life: finalized, logged, and the process
        # exits as after any shutdown transition (so no diagnostics can follow).
        state = lifecycle(harness, Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert not harness.last_transition_ok
        assert state == State.PRIMARY_STATE_FINALIZED
        assert process.wait(timeout=30) == 0
        lines = [line for line in Path(log).read_text(errors='replace').splitlines()
                 if f'shutdown failed: {FAULT_TYPES["shutdown"]}' in line]
        assert len(lines) == 1, lines


# Decompression bombs, written here.
def png_chunk(kind, data):
    """Return one PNG chunk with its CRC."""
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(side, bit_depth=8):
    """Return a real side x side grayscale PNG of zeros (valid, decodable), compressed at 9."""
    row = b'\x00' * (1 + (side * bit_depth + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    idat = b''.join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack('>IIBBBBB', side, side, bit_depth, 0, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + png_chunk(b'IHDR', header) + png_chunk(b'IDAT', idat)
            + png_chunk(b'IEND', b''))


def jpeg_with_hidden_size(width, height):
    """Return a JPEG whose frame header (width x height) follows 192 KiB of APP segments."""
    ok, small = cv2.imencode('.jpg', np.zeros((8, 8), np.uint8))
    assert ok
    data = bytearray(small.tobytes())
    pos = 2
    while not (0xC0 <= data[pos + 1] <= 0xCF and data[pos + 1] not in (0xC4, 0xC8, 0xCC)):
        pos += 2 + struct.unpack('>H', bytes(data[pos + 2:pos + 4]))[0]
    data[pos + 5:pos + 9] = struct.pack('>HH', height, width)
    filler = b'\xff\xe1' + struct.pack('>H', 65535) + bytes(65533)  # APP1, 64 KiB
    return bytes(data[:2]) + filler * 3 + bytes(data[2:])


def peak_rss_mb(pid):
    """Return the peak resident set size (VmHWM) of a process, in MB."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024.0
    raise AssertionError('no VmHWM')


@pytest.fixture(scope='module')
def compressed_node(tiny_files):
    """Start a node with compressed input and the default max_input_pixels."""
    folder, params = tiny_files
    log = folder / 'compressed.log'
    domain = claim_domain()
    process = start_logged(domain, log, 'input_transport:=compressed', *params)
    harness = Harness(domain, outputs=('label',))
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publisher = harness.node.create_publisher(CompressedImage, 'image/compressed', qos)
    try:
        yield harness, process, log, publisher
    finally:
        harness.close()
        print(stop_logged(process, log))


def camera_values(harness, accept=lambda v: True, timeout=TIMEOUT):
    """Return the values of the newest camera status that accept() takes."""
    return values_of(wait_status(harness, lambda s: accept(values_of(s)), timeout=timeout))


def send_until_error(harness, publish, before, timeout=TIMEOUT):
    """Publish (best-effort input) until the camera's error count passes `before`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        publish()
        try:
            return camera_values(harness, lambda v: int(v['errors']) > before, timeout=3.0)
        except AssertionError:
            continue
    raise AssertionError('the frame was never counted as an error')


def good_jpeg(harness, publisher):
    """Publish a stripes JPEG (quality 100) and return its header."""
    ok, data = cv2.imencode('.jpg', stripes(24, 36)[:, :, ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    msg = CompressedImage(format='jpeg', data=data.tobytes())
    msg.header = Header(frame_id='cam', stamp=harness.node.get_clock().now().to_msg())
    publisher.publish(msg)
    return msg.header


def test_decompression_bombs_are_refused_before_decoding(compressed_node):
    harness, process, log, publisher = compressed_node
    # Ready: a good frame comes back.
    end = time.monotonic() + TIMEOUT
    while not harness.received and time.monotonic() < end:
        good_jpeg(harness, publisher)
        harness.spin(0.5)
    assert harness.received, 'the node never answered'
    bombs = {'8-bit': ('png', png_bomb(16384)), '1-bit': ('png', png_bomb(16384, 1)),
             'jpeg': ('jpeg', jpeg_with_hidden_size(16384, 16384))}
    assert all(len(data) < 400_000 for _, data in bombs.values())
    peak_before = peak_rss_mb(process.pid)
    errors = int(camera_values(harness)['errors'])
    for name, (fmt, data) in bombs.items():
        msg = CompressedImage(format=fmt, data=data)

        def publish(msg=msg):
            msg.header.stamp = harness.node.get_clock().now().to_msg()
            publisher.publish(msg)
        values = send_until_error(harness, publish, errors)
        errors = int(values['errors'])
        assert 'exceeds max_input_pixels' in values['last error'], (name, values['last error'])
        assert '16384x16384' in values['last error']
        # The next good frame is processed.
        header = good_jpeg(harness, publisher)
        got = harness.wait_outputs(header, ('label',))
        label = image_to_array(got['label'])[0][:, :, 0]
        assert np.array_equal(label, expected_labels(24, 36)), name
    assert process.poll() is None
    # One 16384 x 16384 frame would be 268 MB decoded (805 MB as color): the peak did not move.
    assert peak_rss_mb(process.pid) - peak_before < 30.0, (peak_before, peak_rss_mb(process.pid))


@pytest.fixture(scope='module')
def sim_time_node(tiny_files):
    """Start a node with use_sim_time and nobody publishing /clock."""
    folder, params = tiny_files
    log = folder / 'sim_time.log'
    domain = claim_domain()
    process = start_logged(domain, log, 'use_sim_time:=true', 'stale_timeout:=0.5', *params)
    harness = Harness(domain, outputs=())
    try:
        yield harness, process, log
    finally:
        harness.close()
        print(stop_logged(process, log))


def test_timers_run_without_clock_and_the_missing_clock_is_reported(sim_time_node):
    harness, process, _ = sim_time_node
    # Diagnostics arrive (steady-clock timer) and name the missing clock.
    status = node_status(harness, lambda s: 'no /clock' in s.message)
    assert status.level == DiagnosticStatus.WARN
    # The lazy-input check runs: an output subscriber makes the node subscribe its input.
    assert harness.node.count_subscribers('image') == 0
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    received = []
    harness.node.create_subscription(Image, 'segmentation/label', received.append, qos)
    assert wait_graph(harness, lambda: harness.node.count_subscribers('image'), 1)
    # Frames are processed; with no input for 0.5 s the camera is reported stale.
    end = time.monotonic() + TIMEOUT
    while not received and time.monotonic() < end:
        harness.send(stripes(12, 18), 'rgb8', stamp=Time(sec=5))
        harness.spin(0.3)
    assert received and received[0].header.stamp.sec == 5
    status = wait_status(harness, lambda s: s.message.startswith('stale'), timeout=15.0)
    assert status.level == DiagnosticStatus.WARN
    # Once /clock arrives the warning goes away.
    clock = harness.node.create_publisher(Clock, '/clock', 10)

    harness.diagnostics.clear()
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        clock.publish(Clock(clock=Time(sec=100)))
        harness.spin(0.25)
    last = harness.diagnostics[-1]
    assert last.header.stamp.sec >= 100  # stamped with the simulated time now
    assert not any(status.name.endswith(': node') for status in last.status), \
        [(status.name, status.message) for status in last.status]
    assert process.poll() is None


def test_raw_frames_above_the_limit_and_escaped_encodings(sim_time_node):
    harness, process, _ = sim_time_node
    harness.received.clear()
    label = harness.node.create_subscription(
        Image, 'segmentation/label',
        lambda msg: harness.received.setdefault(
            (msg.header.stamp.sec, msg.header.stamp.nanosec), {}).__setitem__('label', msg),
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert wait_graph(harness, lambda: harness.node.count_subscribers('image'), 1)
        assert set_param(harness, 'max_input_pixels', 100 * 100).successful
        errors = int(camera_values(harness)['errors'])
        values = send_until_error(
            harness, lambda: harness.send(stripes(101, 100), 'rgb8'), errors)
        assert 'image of 100x101 = 10100 pixels exceeds max_input_pixels (10000)' in \
            values['last error'], values['last error']
        header = harness.send(stripes(100, 100), 'rgb8')
        harness.wait_outputs(header, ('label',))
        # An encoding with a control character: shown escaped, never raw.
        bad = Image(height=2, width=2, encoding='rgb8\x01', step=6, data=bytes(12))
        values = send_until_error(
            harness, lambda: harness.pub.publish(bad), int(values['errors']))
        assert "unsupported encoding 'rgb8\\x01'" in values['last error'], values['last error']
        assert '\x01' not in values['last error']
        assert process.poll() is None
    finally:
        harness.node.destroy_subscription(label)

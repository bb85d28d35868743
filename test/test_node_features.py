"""The node's full interface over real DDS: lifecycle, cameras, transports, QoS, parameters."""

import time

from conftest import claim_domain
import cv2
from lifecycle_msgs.msg import State
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from lifecycle_msgs.srv import GetState
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.io.image import image_to_array
from semseg_ros.node import WorkStats
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_node_integration import Channels
from test_node_integration import diagnostics_status
from test_node_integration import diagnostics_values
from test_node_integration import expected_labels
from test_node_integration import Harness
from test_node_integration import start_node
from test_node_integration import stop_node
from test_node_integration import stripes
from test_node_integration import TIMEOUT
import yaml


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny_model')
    model = folder / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    classes = folder / 'rgb.yaml'
    classes.write_text(yaml.safe_dump({'name': 'rgb', 'classes': [
        {'id': 0, 'name': 'red', 'color': [200, 0, 0]},
        {'id': 1, 'name': 'green', 'color': [0, 200, 0], 'drivable': True},
        {'id': 2, 'name': 'blue', 'color': [0, 0, 200]}]}))
    return [f'model.weights:={model}', 'model.backend:=torchscript', f'classes:={classes}']


PROBE_SECONDS = 5.0


def probe_request(kind):
    """Return a request of service type `kind` that changes nothing in the node."""
    if kind is ChangeState:
        return ChangeState.Request(transition=Transition(label='no_such_transition'))
    return kind.Request()  # get_state, empty get/set_parameters


def service_client(harness, kind, name):
    """
    Return the harness's client of a service, created once and answered once.

    A request sent right after a new client appears may find the server not yet matched to
    the client's reply reader, and its answer is lost (Fast DDS: 'failed to send response').
    So a new client first sends a request that changes nothing until one is answered; the
    test's own requests, which may change state, are then sent once.
    """
    clients = harness.service_clients
    if name not in clients:
        client = harness.node.create_client(kind, name)
        assert client.wait_for_service(timeout_sec=TIMEOUT), name
        deadline = time.monotonic() + TIMEOUT
        while True:
            future = client.call_async(probe_request(kind))
            harness.executor.spin_until_future_complete(future, timeout_sec=PROBE_SECONDS)
            if future.done():
                break
            client.remove_pending_request(future)
            assert time.monotonic() < deadline, f'{name} never answered'
        clients[name] = client
    return clients[name]


def call(harness, client, request):
    assert client.wait_for_service(timeout_sec=TIMEOUT), client.srv_name
    future = client.call_async(request)
    harness.executor.spin_until_future_complete(future, timeout_sec=TIMEOUT)
    assert future.done(), f'{client.srv_name} did not answer'
    return future.result()


def set_param(harness, name, value):
    client = service_client(harness, SetParameters, '/semseg/set_parameters')
    if isinstance(value, bool):
        pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, float):
        pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    elif isinstance(value, int):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    elif isinstance(value, list):
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    request = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
    return call(harness, client, request).results[0]


def lifecycle(harness, transition=None):
    """Trigger a transition (or none) and return the current state id."""
    if transition is not None:
        client = service_client(harness, ChangeState, '/semseg/change_state')
        result = call(harness, client, ChangeState.Request(
            transition=Transition(id=transition)))
        harness.last_transition_ok = result.success
    client = service_client(harness, GetState, '/semseg/get_state')
    return call(harness, client, GetState.Request()).current_state.id


def expect_frame(harness, encoding='rgb8', names=('label',), timeout=TIMEOUT):
    header = harness.send(stripes(12, 18), encoding)
    return harness.wait_outputs(header, names, timeout=timeout)


def expect_nothing(harness, seconds=2.0):
    header = harness.send(stripes(12, 18), 'rgb8')
    harness.spin(seconds)
    return (header.stamp.sec, header.stamp.nanosec) not in harness.received


def test_lifecycle_transitions_through_the_services(tiny_model, tmp_path):
    domain = claim_domain()
    bad = [p if not p.startswith('model.weights') else f'model.weights:={tmp_path}/none.pt'
           for p in tiny_model]
    process = start_node(domain, 'autostart:=false', *bad)
    harness = Harness(domain)
    try:
        assert lifecycle(harness) == State.PRIMARY_STATE_UNCONFIGURED
        # A missing model file: configure fails, the node stays unconfigured.
        assert lifecycle(harness, Transition.TRANSITION_CONFIGURE) == \
            State.PRIMARY_STATE_UNCONFIGURED
        assert not harness.last_transition_ok
        # Fix the parameter (allowed while unconfigured), configure again.
        good = next(p for p in tiny_model if p.startswith('model.weights'))
        assert set_param(harness, 'model.weights', good.split(':=', 1)[1]).successful
        assert lifecycle(harness, Transition.TRANSITION_CONFIGURE) == State.PRIMARY_STATE_INACTIVE
        # Configured: a model that does not load is refused (the loaded one stays), and so are
        # configure-time parameters.
        result = set_param(harness, 'model.weights', '/elsewhere.pt')
        assert not result.successful and 'elsewhere.pt does not exist' in result.reason
        result = set_param(harness, 'grid.enabled', True)
        assert not result.successful and 'takes effect on configure' in result.reason
        assert expect_nothing(harness)  # inactive: no subscription yet
        assert lifecycle(harness, Transition.TRANSITION_ACTIVATE) == State.PRIMARY_STATE_ACTIVE
        harness.wait_ready(process)
        expect_frame(harness)
        assert lifecycle(harness, Transition.TRANSITION_DEACTIVATE) == \
            State.PRIMARY_STATE_INACTIVE
        assert expect_nothing(harness)
        assert lifecycle(harness, Transition.TRANSITION_CLEANUP) == \
            State.PRIMARY_STATE_UNCONFIGURED
        assert lifecycle(harness, Transition.TRANSITION_CONFIGURE) == State.PRIMARY_STATE_INACTIVE
        assert lifecycle(harness, Transition.TRANSITION_ACTIVATE) == State.PRIMARY_STATE_ACTIVE
        harness.received.clear()
        harness.wait_ready(process)
        expect_frame(harness)
    finally:
        harness.close()
        log = stop_node(process)
    assert 'configure failed' in log and 'none.pt' in log


def test_three_cameras_batched_with_their_own_headers(tiny_model):
    domain = claim_domain()
    cameras = ('front', 'left', 'rear')
    process = start_node(domain, *tiny_model, 'cameras:=[front, left, rear]')
    harnesses = {name: Harness(domain, namespace=name) for name in cameras}
    try:
        for harness in harnesses.values():
            harness.wait_ready(process)
        headers = {}
        for i, (name, harness) in enumerate(harnesses.items()):
            # Different sizes and patterns per camera: outputs must not be mixed up.
            img = np.roll(stripes(24 + 6 * i, 36), 12 * i, axis=1)
            headers[name] = harness.send(img, 'rgb8', frame_id=f'{name}_optical')
        for i, (name, harness) in enumerate(harnesses.items()):
            got = harness.wait_outputs(headers[name], ('label', 'color'))
            label = got['label']
            assert label.header.frame_id == f'{name}_optical'
            assert label.header.stamp == headers[name].stamp
            assert (label.width, label.height) == (36, 24 + 6 * i)
            want = np.roll(expected_labels(24 + 6 * i, 36), 12 * i, axis=1)
            assert np.array_equal(image_to_array(label)[0][:, :, 0], want)
        # The worker's time accounting covers every processed frame (probes included),
        # whatever batches they came in: read once the node is idle.
        harness = harnesses['front']
        harness.diagnostics.clear()
        harness.spin(1.0)
        diagnostics_status(harness, lambda st: True)
        statuses = [{kv.key: kv.value for kv in st.values}
                    for st in harness.diagnostics[-1].status if ': camera ' in st.name]
        values = statuses[0]
        assert len(statuses) == 3
        assert int(values['frames total']) == sum(int(v['frames processed']) for v in statuses)
        assert int(values['frames total']) >= 6, values  # a probe and a frame per camera
        totals = {k: float(values[f'{k} total (s)']) for k in WorkStats.STAGES + ('busy',)}
        # The test model's inference can total under the 1 ms the values are printed to.
        assert totals['busy'] > 0.0 and min(totals.values()) >= 0.0, totals
        # Each total is printed to 1 ms: the rounded stages may exceed the rounded busy time
        # by half a millisecond per value.
        slack = 0.0005 * (len(WorkStats.STAGES) + 1)
        assert sum(totals[k] for k in WorkStats.STAGES) <= totals['busy'] + slack
    finally:
        for harness in harnesses.values():
            harness.close()
        stop_node(process)


def test_compressed_input(tiny_model):
    domain = claim_domain()
    process = start_node(domain, *tiny_model, 'input_transport:=compressed')
    harness = Harness(domain)
    pub = harness.node.create_publisher(
        CompressedImage, 'image/compressed',
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    try:
        end_ready = TIMEOUT
        img = stripes(30, 45)
        frames = {}
        for fmt, ext in (('png', '.png'), ('jpeg', '.jpg')):
            ok, data = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            assert ok
            frames[fmt] = data.tobytes()
        # Send until the node answers (discovery), then check both formats.
        got = None
        for _ in range(int(end_ready / 0.5)):
            header = Header(frame_id='cam', stamp=harness.node.get_clock().now().to_msg())
            pub.publish(CompressedImage(header=header, format='png', data=frames['png']))
            harness.spin(0.5)
            if harness.received:
                break
        for fmt, data in frames.items():
            header = Header(frame_id=f'cam_{fmt}',
                            stamp=harness.node.get_clock().now().to_msg())
            pub.publish(CompressedImage(header=header, format=fmt, data=data))
            got = harness.wait_outputs(header, ('label',))
            label = image_to_array(got['label'])[0][:, :, 0]
            assert got['label'].header.frame_id == f'cam_{fmt}'
            agree = (label == expected_labels(30, 45)).mean()
            assert agree == 1.0 if fmt == 'png' else agree > 0.95
        # Undecodable data is counted, the next frame processed.
        header = Header(frame_id='cam', stamp=harness.node.get_clock().now().to_msg())
        pub.publish(CompressedImage(header=header, format='jpeg', data=b'\xff\xd8\xffgarbage'))
        harness.spin(0.5)
        header = Header(frame_id='cam', stamp=harness.node.get_clock().now().to_msg())
        pub.publish(CompressedImage(header=header, format='png', data=frames['png']))
        harness.wait_outputs(header, ('label',))
        status = diagnostics_status(harness, lambda st: any(
            kv.key == 'errors' and kv.value != '0' for kv in st.values))
        values = {kv.key: kv.value for kv in status.values}
        assert values['last error'].startswith('bad image'), values
    finally:
        harness.close()
        stop_node(process)


def test_reliable_and_best_effort_publishers_are_both_received(tiny_model):
    domain = claim_domain()
    process = start_node(domain, *tiny_model)
    harness = Harness(domain)
    try:
        harness.wait_ready(process)  # a reliable publisher
        best_effort = harness.node.create_publisher(
            Image, 'image', QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        harness.pub = best_effort
        for attempt in range(20):
            header = harness.send(stripes(12, 18), 'rgb8', frame_id='best_effort')
            harness.spin(0.5)
            if (header.stamp.sec, header.stamp.nanosec) in harness.received:
                break
        else:
            pytest.fail('no frame of the best-effort publisher came back')
    finally:
        harness.close()
        stop_node(process)


def test_runtime_parameters(tiny_model):
    domain = claim_domain()
    process = start_node(domain, *tiny_model, 'overlay_alpha:=0.0')
    harness = Harness(domain)
    try:
        harness.wait_ready(process)
        got = expect_frame(harness, names=('overlay', 'drivable'))
        assert np.array_equal(image_to_array(got['overlay'])[0], stripes(12, 18))
        assert set_param(harness, 'overlay_alpha', 1.0).successful
        assert set_param(harness, 'drivable_classes', ['red', 'blue']).successful
        got = expect_frame(harness, names=('overlay', 'drivable'))
        overlay = image_to_array(got['overlay'])[0]
        assert overlay[0, 0].tolist() == [200, 0, 0]
        drivable = image_to_array(got['drivable'])[0][:, :, 0]
        assert np.array_equal(drivable == 255, expected_labels(12, 18) != 1)
        # Back to the class set's own drivable classes.
        assert set_param(harness, 'drivable_classes', ['']).successful
        got = expect_frame(harness, names=('drivable',))
        drivable = image_to_array(got['drivable'])[0][:, :, 0]
        assert np.array_equal(drivable == 255, expected_labels(12, 18) == 1)
        # Disabling an output stops it; other outputs go on.
        assert set_param(harness, 'outputs.color', False).successful
        header = harness.send(stripes(12, 18), 'rgb8')
        got = harness.wait_outputs(header, ('label',))
        harness.spin(1.0)
        assert 'color' not in harness.received[(header.stamp.sec, header.stamp.nanosec)]
        # Refused: out of range, unknown class, read-only, configure-time while active.
        for name, value, reason in (
                ('overlay_alpha', 2.0, 'overlay_alpha'),
                ('drivable_classes', ['grass'], 'no class named'),
                ('qos.input.depth', 5, 'read-only'),
                ('grid.enabled', True, 'takes effect on configure')):
            result = set_param(harness, name, value)
            assert not result.successful, name
            assert reason in result.reason, (name, result.reason)
    finally:
        harness.close()
        stop_node(process)


BAD_IMAGES = {
    'unknown encoding': Image(height=4, width=4, encoding='weird16', step=8, data=bytes(32)),
    'data shorter than height x step': Image(height=10, width=10, encoding='rgb8', step=30,
                                             data=bytes(50)),
    'zero size': Image(height=0, width=10, encoding='rgb8', step=30, data=b''),
    'absurd size': Image(height=100000, width=100000, encoding='mono8', step=100000,
                         data=bytes(16)),
    'step below width': Image(height=4, width=10, encoding='rgb8', step=20, data=bytes(80)),
}


def test_each_bad_image_is_counted_and_the_next_processed(tiny_model):
    domain = claim_domain()
    process = start_node(domain, *tiny_model, 'diagnostics_period:=0.2')
    harness = Harness(domain)
    try:
        harness.wait_ready(process)
        for count, (case, bad) in enumerate(BAD_IMAGES.items(), start=1):
            bad.header.stamp = harness.node.get_clock().now().to_msg()
            harness.pub.publish(bad)
            harness.spin(0.3)
            got = expect_frame(harness)
            assert got['label'].height == 12, case
            harness.diagnostics.clear()
            values = diagnostics_values(harness, 'errors')
            assert int(values['errors']) == count, case
            assert values['last error'].startswith('bad image'), case
        assert process.poll() is None
    finally:
        harness.close()
        log = stop_node(process)
    assert 'unknown encoding' in log.lower() or 'weird16' in log


def test_work_stats_split_the_worker_time_per_frame():
    work = WorkStats()
    stage = {'decode': 0.001, 'preprocess': 0.002, 'inference': 0.010, 'postprocess': 0.003,
             'publish': 0.001}
    work.window_start -= 1.0  # one second of window
    work.add(dict(stage, busy=0.020), 1)
    work.add(dict(stage, busy=0.040), 3)  # a batch of three
    values = work.values(work.window_start + 1.0)
    assert values['worker busy (%)'] == '6'
    assert values['inference (ms/frame)'] == '5.0'  # 20 ms over 4 frames
    assert values['frames total'] == '4'
    assert values['busy total (s)'] == '0.060'
    # A new window: no frames yet, so no per-frame means, totals kept.
    values = work.values(work.window_start + 0.5)
    assert values['worker busy (%)'] == '0'
    assert 'inference (ms/frame)' not in values
    assert values['inference total (s)'] == '0.020'

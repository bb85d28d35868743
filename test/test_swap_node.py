"""
The live model swap of the node in its own process, over real DDS, and the deploy helper.

Model A: logits = RGB channels (red 0, green 1, blue 2), class set rgb. Model B: logits = blue,
green, red, 0.5 (four classes: black is class 3), class set bgrk, and a slow first forward pass:
the engine's warm-up frame (all zeros) costs seconds of matrix products, as the warm-up of a
large model does, so the load can be watched while frames keep flowing.
"""

import time

from conftest import claim_domain
from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import SetParametersAtomically
import rclpy
from semseg_ros import deploy as deploy_module
from semseg_ros.core.models import onnx
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.deploy import deploy
from semseg_ros.deploy import DeployError
from semseg_ros.io.image import image_to_array
from sensor_msgs.msg import Image
from test_node_features import service_client
from test_node_integration import Channels
from test_node_integration import Harness
from test_node_integration import TIMEOUT
from test_reliability import start_logged
from test_reliability import stop_logged
from test_reliability import wait_status
import torch
import yaml

WARMUP_SECONDS = 1.2  # target duration of model B's warm-up (the node's is often longer)
RATE = 20.0  # frames per second sent while swapping
COLORS_A = [[200, 0, 0], [0, 200, 0], [0, 0, 200]]
COLORS_B = [[0, 0, 255], [0, 255, 0], [255, 0, 0], [40, 40, 40]]
H, W = 24, 32


class SlowWarmup(torch.nn.Module):
    """
    Logits = blue, green, red, 0.5; an all-zero input (the warm-up frame) is slow.

    The slow part is `rounds` products of 16 x 16 matrices: operations too small for a thread
    pool, so their time grows with the rounds alone (about 5 us each here), also on a busy
    machine.
    """

    def __init__(self, rounds):
        super().__init__()
        self.rounds = rounds
        self.register_buffer('w', torch.full((16, 16), 1.0 / 16))

    def forward(self, x):
        if bool((x == 0).all()):
            acc = self.w
            for _ in range(self.rounds):
                acc = torch.tanh(acc @ self.w)
            x = x + acc.sum() * 0.0
        return torch.cat([x.flip(1), torch.full_like(x[:, :1], 0.5)], 1)


def warmup_rounds(seconds):
    """Return the matrix-product rounds that take about `seconds` on this machine."""
    model = torch.jit.script(SlowWarmup(2000))
    zeros = torch.zeros(1, 3, 8, 8)
    model(zeros)  # the first calls pay one-time costs (profiling, optimisation)
    model(zeros)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model(zeros)
        times.append((time.perf_counter() - start) / 2000)
    return int(min(max(seconds / max(sorted(times)[1], 1e-7), 2000), 10**7))


def four_stripes():
    """Red, green, blue and black vertical stripes."""
    img = np.zeros((H, W, 3), np.uint8)
    q = W // 4
    img[:, :q, 0] = img[:, q:2 * q, 1] = img[:, 2 * q:3 * q, 2] = 255
    return img


def stripe_labels(first, second, third, fourth):
    labels = np.empty((H, W), np.uint8)
    q = W // 4
    for i, value in enumerate((first, second, third, fourth)):
        labels[:, i * q:(i + 1) * q] = value
    return labels


EXPECTED = {'A': stripe_labels(0, 1, 2, 0), 'B': stripe_labels(2, 1, 0, 3)}
PALETTES = {'A': np.array(COLORS_A, np.uint8), 'B': np.array(COLORS_B, np.uint8)}


def class_file(path, name, names, colors):
    path.write_text(yaml.safe_dump({'name': name, 'classes': [
        {'id': i, 'name': n, 'color': c} for i, (n, c) in enumerate(zip(names, colors))]}))
    return str(path)


@pytest.fixture(scope='module')
def swap_node(tmp_path_factory):
    folder = tmp_path_factory.mktemp('swap')
    files = {
        'A': str(folder / 'channels.pt'), 'B': str(folder / 'reversed_slow.pt'),
        'rgb': class_file(folder / 'rgb.yaml', 'rgb', ('red', 'green', 'blue'), COLORS_A),
        'bgrk': class_file(folder / 'bgrk.yaml', 'bgrk', ('blue', 'green', 'red', 'black'),
                           COLORS_B),
        'corrupt': str(folder / 'corrupt.pt'), 'missing': str(folder / 'missing.pt')}
    torchscript.save(Channels(), files['A'], 3, Preprocess(scale=1.0 / 255.0))
    files['rounds'] = warmup_rounds(WARMUP_SECONDS)
    torchscript.save(SlowWarmup(files['rounds']), files['B'], 4, Preprocess(scale=1.0 / 255.0))
    files['B.onnx'] = str(folder / 'reversed.onnx')
    onnx.save(SlowWarmup(0), files['B.onnx'], 4, Preprocess(scale=1.0 / 255.0))
    (folder / 'corrupt.pt').write_bytes(b'PK\x03\x04 not really a zip archive' * 10)
    log = folder / 'node.log'
    domain = claim_domain()
    process = start_logged(domain, log, 'model.backend:=torchscript',
                           f'model.weights:={files["A"]}', f'classes:={files["rgb"]}',
                           'overlay_alpha:=1.0', 'diagnostics_period:=0.5')
    harness = Harness(domain, outputs=('label', 'color'))
    harness.arrivals = {}
    harness.node.create_subscription(
        Image, 'segmentation/label', lambda msg: harness.arrivals.setdefault(
            (msg.header.stamp.sec, msg.header.stamp.nanosec), time.monotonic()), 10)
    try:
        harness.wait_ready(process)
        yield harness, process, log, files, domain
    finally:
        harness.close()
        print(stop_logged(process, log))


def request(values):
    params = []
    for name, value in values.items():
        params.append(Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=value)))
    return SetParametersAtomically.Request(parameters=params)


def set_atomically(harness, values, stream=False):
    """
    Set parameters in one call; return (result, seconds, stamps sent meanwhile).

    stream: send a frame every 1 / RATE s while waiting for the answer, and 1 s after it.
    """
    client = service_client(harness, SetParametersAtomically, '/semseg/set_parameters_atomically')
    sent = []
    start = time.monotonic()
    future = client.call_async(request(values))
    end = None
    while end is None or time.monotonic() < end + (1.0 if stream else 0.0):
        if stream:
            sent.append((time.monotonic(), harness.send(four_stripes(), 'rgb8')))
        harness.executor.spin_once(timeout_sec=0.0)
        harness.spin(1.0 / RATE if stream else 0.02)
        if end is None and future.done():
            end = time.monotonic()
        assert time.monotonic() - start < TIMEOUT, 'no answer to the set call'
    return future.result().result, (end - start), start, end, sent


def model_of(got):
    """Return 'A' or 'B' when label and color of a frame are both that model's, else None."""
    label = image_to_array(got['label'])[0].reshape(H, W)
    color = image_to_array(got['color'])[0]
    for name, expected in EXPECTED.items():
        if np.array_equal(label, expected):
            return name if np.array_equal(color, PALETTES[name][expected]) else None
    return None


def check_frame(harness, want):
    header = harness.send(four_stripes(), 'rgb8')
    assert model_of(harness.wait_outputs(header, ('label', 'color'))) == want


def model_status(harness, accept=lambda status: True):
    return wait_status(harness, lambda s: s.name.endswith(': model') and accept(s),
                       camera=False)


def test_failed_swap_keeps_the_old_model(swap_node):
    harness, process, log, files, _ = swap_node
    check_frame(harness, 'A')
    cases = [
        ({'model.weights': files['missing']}, 'does not exist'),
        ({'model.weights': files['corrupt']}, 'not a loadable TorchScript archive'),
        # B has four classes: without its class set the rgb set (three) does not match.
        ({'model.weights': files['B']}, 'has 3 classes but'),
        ({'model.backend': 'no_such_backend'}, "unknown model backend 'no_such_backend'"),
    ]
    for values, words in cases:
        result, _, _, _, _ = set_atomically(harness, values)
        assert not result.successful, values
        assert 'the old one keeps running' in result.reason and words in result.reason, \
            result.reason
        check_frame(harness, 'A')  # still the old model
        status = model_status(harness, lambda s: words in s.message)
        assert status.level == DiagnosticStatus.WARN
        values_ = {kv.key: kv.value for kv in status.values}
        assert values_['weights'] == files['A'] and values_['classes'].startswith('rgb (3')
    text = log.read_text(errors='replace')
    assert text.count('model swap failed after') == len(cases)
    assert process.poll() is None


def test_swap_new_classes_while_frames_flow(swap_node):
    harness, process, log, files, _ = swap_node
    rounds, model = files['rounds'], files['B']
    for attempt in range(3):
        result, _, _, _, _ = set_atomically(
            harness, {'model.weights': files['A'], 'classes': files['rgb']})
        assert result.successful, result.reason
        check_frame(harness, 'A')
        harness.received.clear()
        result, seconds, start, end, sent = set_atomically(
            harness, {'model.weights': model, 'classes': files['bgrk']}, stream=True)
        assert result.successful, result.reason
        print(f'attempt {attempt}: {rounds} rounds, load {seconds:.2f} s')
        if seconds > 1.0:
            break
        # The machine ran the warm-up faster than the calibration said: a longer one.
        rounds *= 3
        model = model.replace('.pt', f'_{rounds}.pt')
        torchscript.save(SlowWarmup(rounds), model, 4, Preprocess(scale=1.0 / 255.0))
    harness.spin(1.0)
    keys = [(h.stamp.sec, h.stamp.nanosec) for _, h in sent]
    models = [model_of(harness.received[k]) if len(harness.received.get(k, {})) == 2
              else 'missing' for k in keys]
    got = [m for m in models if m != 'missing']
    assert None not in got, models  # no frame mixes the models
    first_b = got.index('B')
    assert set(got[:first_b]) == {'A'} and set(got[first_b:]) == {'B'}, models
    arrived = sorted(harness.arrivals[k] for k in keys if k in harness.arrivals)
    during = [t for t in arrived if start < t < end]
    gaps = np.diff([start] + arrived)
    print(f'load {seconds:.2f} s, {len(sent)} frames sent, {len(arrived)} answered, '
          f'{len(during)} during the load, largest gap {gaps.max():.2f} s')
    assert seconds > 1.0  # the load was slow enough to watch
    assert len(during) >= 0.3 * seconds * RATE  # frames kept flowing during the load
    assert gaps.max() < 1.0  # no gap in the output stream
    assert models[-5:] == ['B'] * 5
    text = log.read_text(errors='replace')
    assert 'class set changed: rgb (3 classes: red, green, blue) -> bgrk (4 classes: blue, ' \
        'green, red, black); no label_info (vision_msgs is not installed)' in text
    assert 'model swapped in after' in text
    status = model_status(harness, lambda s: s.message == 'ok')
    values = {kv.key: kv.value for kv in status.values}
    assert values['weights'] == model and values['classes'].startswith('bgrk (4')
    assert int(values['swaps']) >= 2 and values['last swap'] == 'ok'
    assert process.poll() is None


def test_deploy_to_a_running_node(swap_node, monkeypatch, capsys):
    harness, process, _, files, domain = swap_node
    result = deploy('/semseg', files['A'], backend='torchscript', classes=files['rgb'],
                    timeout=TIMEOUT, extra={'max_batch': 1}, domain_id=domain)
    assert result.successful, result.reason
    assert result.parameters == {'model.backend': 'torchscript', 'model.weights': files['A'],
                                 'classes': files['rgb'], 'max_batch': 1}
    check_frame(harness, 'A')
    result = deploy('semseg', files['missing'], backend='torchscript', timeout=TIMEOUT,
                    domain_id=domain)
    assert not result.successful and 'does not exist' in result.reason
    check_frame(harness, 'A')
    start = time.monotonic()
    with pytest.raises(DeployError, match='no node answers at /nobody/set_parameters_atomic'):
        deploy('/nobody', files['A'], timeout=1.0, domain_id=domain)
    assert time.monotonic() - start < 10.0
    # The command line, in the node's domain.
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))
    code = deploy_module.main(['/semseg', files['corrupt'], '--backend', 'torchscript'])
    assert code == 1 and 'not a loadable TorchScript archive' in capsys.readouterr().err
    assert deploy_module.main(['/semseg', files['A'], '--backend', 'torchscript']) == 0
    check_frame(harness, 'A')
    # Another backend with its options: model B as ONNX, and back (options cleared).
    result = deploy('/semseg', files['B.onnx'], backend='onnx', classes=files['bgrk'],
                    options={'providers': ['CPUExecutionProvider']}, timeout=TIMEOUT,
                    domain_id=domain)
    assert result.successful, result.reason
    check_frame(harness, 'B')
    result = deploy('/semseg', files['A'], backend='torchscript', classes=files['rgb'],
                    options={}, timeout=TIMEOUT, domain_id=domain)
    assert result.successful, result.reason
    check_frame(harness, 'A')
    assert process.poll() is None


def test_executor_runs_frames_while_a_default_callback_blocks():
    """A default-group callback that blocks 1 s (a swap): the frames group keeps running."""
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from semseg_ros.executor import FramesInlineExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=claim_domain())
    node = rclpy.create_node('executor_test', context=context)
    frames = MutuallyExclusiveCallbackGroup()
    ticks, blocking, overlaps = [], [], []

    def block():
        blocking.append((time.monotonic(), None))
        time.sleep(1.0)
        blocking[-1] = (blocking[-1][0], time.monotonic())

    def other():  # default group too: never runs while block() does
        overlaps.extend(1 for a, b in blocking if b is None)

    node.create_timer(1.5, block)
    node.create_timer(0.1, other)
    node.create_timer(0.02, lambda: ticks.append(time.monotonic()), callback_group=frames)
    executor = FramesInlineExecutor(frames, context=context)
    executor.add_node(node)
    try:
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    start, stop = blocking[0]
    inside = [t for t in ticks if start < t < stop]
    assert stop - start >= 1.0 and len(inside) >= 20, (len(inside), len(ticks))
    assert not overlaps


def test_deploy_parameters():
    values = deploy_module.parameters('m.onnx', 'onnx', options={'providers': ['CPU']})
    assert values == {'model.backend': 'onnx', 'model.weights': 'm.onnx',
                      'model.options': '{providers: [CPU]}'}
    assert deploy_module.parameters('m.ts', options={})['model.options'] == ''
    assert deploy_module.service_name('ns/semseg') == '/ns/semseg/set_parameters_atomically'
    extra = {'max_batch': 2, 'overlay_alpha': 0.5, 'drivable_classes': ['road']}
    assert deploy_module.parameters('m.ts', extra=extra)['max_batch'] == 2
    assert deploy_module._value(['road']).string_array_value == ['road']
    assert deploy_module._value(2).integer_value == 2
    for bad in ({'backend': ' '}, {'extra': {'options': {'a': 1}}}, {'extra': {'x': [1]}}):
        with pytest.raises(ValueError):
            deploy_module.parameters('m.ts', **bad)
    with pytest.raises(ValueError):
        deploy_module.service_name('/')

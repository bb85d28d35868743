"""semseg_ros/guard.py and the input limits in one process (the DDS tests: test_robustness)."""

import struct

from conftest import claim_domain
import numpy as np
import pytest
import rclpy
from rclpy.lifecycle import TransitionCallbackReturn
from semseg_ros import guard
from semseg_ros.io.image import compressed_to_array
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import ImageError
from sensor_msgs.msg import CompressedImage
from sensor_msgs.msg import Image
from test_robustness import jpeg_with_hidden_size
from test_robustness import png_bomb


class Log:
    """A logger stand-in that keeps its lines."""

    def __init__(self):
        self.lines = []

    def error(self, text):
        self.lines.append(text)


class Broken(Exception):
    """An exception whose message cannot be formatted."""

    def __str__(self):
        raise RuntimeError('no text')


def test_describe_names_type_message_and_place():
    try:
        {}['missing']
    except KeyError as exc:
        text = guard.describe(exc)
    assert text.startswith("KeyError: 'missing' (at test_guard.py:")
    assert guard.describe(Broken()) == 'Broken: <message unavailable>'
    assert guard.describe(ValueError()) == 'ValueError'


def test_fault_plan_parses_fires_once_and_reports_bad_entries():
    plan = guard.FaultPlan('configure:KeyError, activate, configure:OSError, bogus:KeyError,'
                           'cleanup:NoSuchError, shutdown:SystemExit')
    assert [name for name, _ in plan.pending] == ['configure', 'activate', 'configure']
    assert len(plan.problems) == 3
    assert "unknown transition 'bogus'" in plan.problems[0]
    assert "'NoSuchError'" in plan.problems[1] and "'SystemExit'" in plan.problems[2]
    with pytest.raises(KeyError):
        plan.fire('configure')
    with pytest.raises(OSError):
        plan.fire('configure')
    plan.fire('configure')  # all fired
    with pytest.raises(guard.InjectedFault, match='fault injected in activate'):
        plan.fire('activate')
    assert guard.FaultPlan.from_env({}).pending == []
    assert guard.FaultPlan.from_env({guard.FAULTS_ENV: 'error'}).pending[0][0] == 'error'


class FakeNode:
    """Transition methods guarded the way the node's are."""

    def __init__(self, faults=''):
        self.log = Log()
        self.errors = []
        self.released = 0
        self.transition_guard = guard.TransitionGuard(self.log, self.errors.append,
                                                      guard.FaultPlan(faults))

    @guard.transition('configure')
    def on_configure(self, state):
        return TransitionCallbackReturn.SUCCESS

    @guard.transition('activate')
    def on_activate(self, state):
        raise TypeError('a bug')

    @guard.transition('shutdown')
    def on_shutdown(self, state):
        self.released += 1
        return TransitionCallbackReturn.SUCCESS

    @guard.transition('error')
    def on_error(self, state):
        self.released += 1
        return TransitionCallbackReturn.SUCCESS


def test_transition_failures_are_logged_reported_and_recovered():
    node = FakeNode('configure:KeyError,shutdown')
    assert node.on_configure(None) == TransitionCallbackReturn.ERROR
    assert node.errors[-1].startswith("configure failed: KeyError: 'fault injected")
    assert node.on_error(None) == TransitionCallbackReturn.SUCCESS  # -> unconfigured
    assert node.on_configure(None) == TransitionCallbackReturn.SUCCESS  # fired once
    assert node.on_activate(None) == TransitionCallbackReturn.ERROR
    assert node.errors[-1].startswith('activate failed: TypeError: a bug (at test_guard.py')
    assert 'Traceback' in node.log.lines[-1] and 'raise TypeError' in node.log.lines[-1]
    assert node.on_error(None) == TransitionCallbackReturn.SUCCESS
    # A failed shutdown: the recovery releases and ends finalized (FAILURE from on_error).
    assert node.on_shutdown(None) == TransitionCallbackReturn.ERROR
    assert node.on_error(None) == TransitionCallbackReturn.FAILURE
    assert node.released == 4
    # A failing recovery ends finalized too, reported.
    node = FakeNode('error:MemoryError')
    assert node.on_error(None) == TransitionCallbackReturn.FAILURE
    assert node.errors[-1].startswith('error recovery failed: MemoryError')


def test_callback_failures_are_counted_and_the_log_throttled():
    now = [0.0]
    log = Log()
    callbacks = guard.CallbackGuard(log, throttle=5.0, clock=lambda: now[0])
    for i in range(4):
        now[0] = float(i)
        callbacks.failed('timer', ValueError(f'bad {i}'))
    assert callbacks.count == 4 and 'bad 3' in callbacks.last
    assert len(log.lines) == 1
    now[0] = 6.0
    callbacks.failed('timer', ValueError('bad 4'))
    assert len(log.lines) == 2 and '(3 more since the last report)' in log.lines[1]
    assert callbacks.recent(10.0) and not callbacks.recent(0.0)
    assert callbacks.values() == {'callback errors': '5', 'last callback error':
                                  callbacks.last}


def test_spin_survives_a_raising_callback():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=claim_domain())
    try:
        node = rclpy.create_node('guard_spin_test', context=context)
        log = Log()
        callbacks = guard.CallbackGuard(log)
        calls = []

        def tick():
            calls.append(1)
            if len(calls) == 5:
                context.try_shutdown()
            raise RuntimeError(f'tick {len(calls)}')
        node.create_timer(0.01, tick)
        callbacks.spin(node)  # returns when the context shuts down, not at the first error
        assert len(calls) == 5 and callbacks.count == 5
        assert 'RuntimeError: tick 1' in log.lines[0]
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_pixel_limit_is_checked_from_the_header():
    bomb = CompressedImage(format='png', data=png_bomb(16384))
    with pytest.raises(ImageError, match='16384x16384 = 268435456 pixels exceeds max_input'):
        compressed_to_array(bomb, 4096 * 4096)
    hidden = CompressedImage(format='jpeg', data=jpeg_with_hidden_size(8000, 6000))
    with pytest.raises(ImageError, match='8000x6000'):
        compressed_to_array(hidden, 4096 * 4096)
    # The frame size is found behind the 192 KiB of other segments.
    small = CompressedImage(format='png', data=png_bomb(64))
    assert compressed_to_array(small, 64 * 64)[0].shape == (64, 64, 1)
    with pytest.raises(ImageError, match='64x64 = 4096 pixels exceeds'):
        compressed_to_array(small, 64 * 64 - 1)
    raw = Image(height=30, width=40, encoding='mono8', step=40, data=bytes(1200))
    assert image_to_array(raw, 1200)[0].shape == (30, 40, 1)
    with pytest.raises(ImageError, match='image of 40x30 = 1200 pixels exceeds'):
        image_to_array(raw, 1199)


def test_png_without_header_and_control_characters():
    headless = b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + b'IDAT' + bytes(20)
    with pytest.raises(ImageError, match=r"format 'png\\x07'\): no frame size found"):
        compressed_to_array(CompressedImage(format='png\x07', data=headless))
    try:
        image_to_array(Image(height=1, width=1, encoding='rgb8\x01\u200b', step=3,
                             data=bytes(3)))
    except ImageError as exc:
        text = str(exc)
    assert "unsupported encoding 'rgb8\\x01\\u200b'" in text
    assert not any(ord(c) < 32 or c == '\u200b' for c in text)
    assert np.array_equal(image_to_array(Image(height=1, width=1, encoding='mono8', step=1,
                                               data=b'\x07'))[0], [[[7]]])

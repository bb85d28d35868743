"""
The node's executor: frame callbacks on the spinning thread, all others on one helper thread.

A parameter call that swaps the model waits for the new model to load (seconds, for a large
one) before it answers (core/swap.py). Frames must keep flowing meanwhile, so that call cannot
run on the thread that takes the images. A MultiThreadedExecutor would do, but it hands every
callback to a thread pool, which doubles the cost of taking a message (0.8 instead of 0.4 ms
of CPU per image measured here). This executor runs the callbacks of one group (the node's
frames_group: image subscriptions and diagnostics) on the spinning thread, like a
SingleThreadedExecutor, and the rest (parameter and lifecycle services, the other timers) on
a single helper thread, so those stay serialised among themselves as before.
"""

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait

from rclpy.executors import ConditionReachedException
from rclpy.executors import Executor
from rclpy.executors import ExternalShutdownException
from rclpy.executors import ShutdownException
from rclpy.executors import TimeoutException


class FramesInlineExecutor(Executor):
    """Run inline_group's callbacks on the spinning thread, the others on one helper thread."""

    def __init__(self, inline_group, *, context=None):
        """inline_group: the callback group whose callbacks never wait behind the others."""
        super().__init__(context=context)
        self._inline = inline_group
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix='semseg_callbacks')
        self._futures = []

    def spin_once(self, timeout_sec=None):
        """Wait for one ready callback and run it (inline or on the helper thread)."""
        try:
            handler, entity, _ = self.wait_for_ready_callbacks(timeout_sec)
        except (ShutdownException, ExternalShutdownException, TimeoutException,
                ConditionReachedException):
            return
        if entity.callback_group is self._inline:
            handler()
            handler.result()  # raise any exception, as a SingleThreadedExecutor does
        else:
            self._futures.append(self._helper.submit(handler))
        for future in [f for f in self._futures if f.done()]:
            self._futures.remove(future)
            future.result()

    def spin_once_until_future_complete(self, future, timeout_sec=None):
        """Spin once, waking up when the future completes."""
        future.add_done_callback(lambda _: self.wake())
        self.spin_once(timeout_sec)

    def wait_helper(self, timeout_sec=5.0):
        """Wait (at most timeout_sec) for the callbacks on the helper thread to finish."""
        wait(list(self._futures), timeout=timeout_sec)

    def shutdown(self, timeout_sec=None):
        """Stop executing callbacks; a callback running on the helper thread finishes."""
        done = super().shutdown(timeout_sec)
        self._helper.shutdown(wait=False, cancel_futures=True)
        return done

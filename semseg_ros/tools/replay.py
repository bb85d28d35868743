"""
Publish the topics of a ROS 2 bag over DDS at the recorded timing (a `ros2 bag play` stand-in).

    semseg-ros-replay BAG [--rate FACTOR] [--topics T ...] [--loop] [--start-delay S]
                      [--wait-subscribers S] [--ros-args ...]

The bag (sqlite3 or mcap) is read with `rosbags`; each message is published exactly as it was
recorded: the stored CDR bytes go to the publisher unchanged (rclpy publishes serialized bytes),
so headers and stamps are the original ones. Every message is first checked with
`rclpy.serialization.deserialize_message`; one that does not deserialize is skipped, counted
and reported instead of reaching the subscribers. Message types must be importable (their
Python packages installed); topics of other types are skipped with a warning.

Before the first message the tool waits (up to --wait-subscribers seconds) until some topic has
a subscriber, then --start-delay seconds more (discovery completes on both sides), then
publishes at the bag's timing divided by --rate. Standard `--ros-args` (remapping `-r
/cam/image:=/other`, node name, log level) are passed to rclpy.
"""

import argparse
import importlib
import sys
import time

import rclpy
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.utilities import remove_ros_args
from rosbags.rosbag2 import Reader

RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}
# Longest single sleep, so that Ctrl-C and shutdown are handled promptly.
MAX_SLEEP_S = 0.1
# How long the tool waits at the end for reliable subscribers to acknowledge every message.
FLUSH_TIMEOUT_S = 5.0
MAX_WARNINGS = 10


class ReplayError(RuntimeError):
    """The bag cannot be replayed; the message says why."""


def say(text):
    """Print a line at once (the output is often a pipe)."""
    print(text, flush=True)


def message_class(msgtype):
    """Return the Python class of a type name such as 'sensor_msgs/msg/Image', or None."""
    package, _, name = msgtype.rpartition('/')
    try:
        return getattr(importlib.import_module(package.replace('/', '.')), name)
    except (ImportError, AttributeError, ValueError):
        return None


def parse_args(argv):
    """Parse the command line (ROS arguments already removed)."""
    parser = argparse.ArgumentParser(
        prog='semseg-ros-replay',
        description='Publish the topics of a ROS 2 bag (sqlite3 or mcap) over DDS at the '
                    'recorded timing, with the original headers.')
    parser.add_argument('bag', help='bag folder, or a single .mcap/.db3 file')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='speed factor: 2 plays twice as fast (default: 1)')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC',
                        help='topics to publish (default: every topic of the bag)')
    parser.add_argument('--loop', action='store_true', help='start again at the end')
    parser.add_argument('--start-delay', type=float, default=0.5, metavar='S',
                        help='seconds between the first matched subscriber and the first '
                             'message (default: 0.5)')
    parser.add_argument('--wait-subscribers', type=float, default=10.0, metavar='S',
                        help='wait up to S seconds for a subscriber before starting; '
                             '0 = do not wait (default: 10)')
    parser.add_argument('--qos-reliability', choices=sorted(RELIABILITY), default='reliable',
                        help='publisher reliability (default: reliable)')
    parser.add_argument('--qos-depth', type=int, default=10,
                        help='publisher history depth (default: 10)')
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error('--rate must be positive')
    if args.start_delay < 0 or args.wait_subscribers < 0:
        parser.error('--start-delay and --wait-subscribers must not be negative')
    if args.qos_depth < 1:
        parser.error('--qos-depth must be at least 1')
    return args


class Replayer:
    """Publishers for the selected topics of an open bag, and the timed publishing loop."""

    def __init__(self, node, reader, topics, qos, log=say):
        self.node = node
        self.reader = reader
        self.log = log
        self.publishers = {}
        self.classes = {}
        self.connections = []
        self.published = 0
        self.skipped = 0
        self._warnings = 0
        known = {c.topic for c in reader.connections}
        if topics:
            missing = sorted(set(topics) - known)
            if missing:
                raise ReplayError(f'topic(s) {", ".join(missing)} are not in the bag; topics: '
                                  f'{", ".join(sorted(known)) or "none"}')
        for connection in reader.connections:
            if topics and connection.topic not in topics:
                continue
            cls = message_class(connection.msgtype)
            if cls is None:
                self.log(f'not replaying {connection.topic}: message type '
                         f'{connection.msgtype} is not importable')
                continue
            key = (connection.topic, connection.msgtype)
            if key not in self.publishers:
                self.publishers[key] = node.create_publisher(cls, connection.topic, qos)
            self.classes[connection.id] = (cls, self.publishers[key])
            self.connections.append(connection)
        if not self.connections:
            raise ReplayError('nothing to replay: no selected topic has an importable type')

    def _warn(self, text):
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            self.log(text)

    def matched(self):
        """Return the topics whose publisher has at least one subscriber."""
        return sorted({topic for (topic, _), pub in self.publishers.items()
                       if pub.get_subscription_count() > 0})

    def wait_for_subscribers(self, timeout):
        """Wait up to timeout seconds for a subscriber on any topic; return the matched ones."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and rclpy.ok(context=self.node.context):
            matched = self.matched()
            if matched:
                return matched
            time.sleep(0.05)
        return self.matched()

    def play(self, rate=1.0):
        """Publish every message once, at the recorded spacing divided by rate."""
        first = None
        start = time.monotonic()
        for connection, timestamp, raw in self.reader.messages(connections=self.connections):
            if first is None:
                first = timestamp
            due = start + (timestamp - first) * 1e-9 / rate
            while rclpy.ok(context=self.node.context):
                left = due - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, MAX_SLEEP_S))
            if not rclpy.ok(context=self.node.context):
                return
            cls, publisher = self.classes[connection.id]
            try:
                deserialize_message(raw, cls)
            except Exception as exc:  # noqa: B902 - rmw raises its own error types
                self.skipped += 1
                self._warn(f'skipped a message on {connection.topic} at {timestamp}: it does '
                           f'not deserialize as {connection.msgtype} ({exc})')
                continue
            publisher.publish(bytes(raw))
            self.published += 1

    def flush(self, timeout=FLUSH_TIMEOUT_S):
        """Wait until reliable subscribers have acknowledged every message (or timeout)."""
        for publisher in self.publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=timeout))


def main(argv=None):
    """Run the command line tool; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(remove_ros_args(['semseg-ros-replay'] + argv)[1:])
    try:
        reader = Reader(args.bag)
        reader.open()
    except Exception as exc:  # noqa: B902 - rosbags raises many types for unreadable bags
        print(f'semseg-ros-replay: error: cannot read bag {args.bag}: {exc}', file=sys.stderr)
        return 1
    context = rclpy.Context()
    rclpy.init(args=['semseg-ros-replay'] + argv, context=context)
    node = None
    replayer = None
    start = time.monotonic()
    try:
        node = rclpy.create_node('semseg_replay', context=context)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=args.qos_depth,
                         reliability=RELIABILITY[args.qos_reliability],
                         durability=DurabilityPolicy.VOLATILE)
        replayer = Replayer(node, reader, args.topics, qos)
        if args.wait_subscribers > 0:
            matched = replayer.wait_for_subscribers(args.wait_subscribers)
            if matched:
                say(f'subscribers on {", ".join(matched)}')
            else:
                say(f'no subscriber after {args.wait_subscribers:g} s; publishing anyway')
        time.sleep(args.start_delay)
        start = time.monotonic()
        duration = (reader.end_time - reader.start_time) * 1e-9
        looping = ' (looping)' if args.loop else ''
        say(f'replaying {len(replayer.publishers)} topics, {duration:.1f} s of bag at rate '
            f'{args.rate:g}{looping}')
        while True:
            replayer.play(args.rate)
            if not args.loop or not rclpy.ok(context=context):
                break
        if context.ok():
            replayer.flush()
    except ReplayError as exc:
        print(f'semseg-ros-replay: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
        if node is not None:
            node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
    if replayer is not None:
        say(f'semseg-ros-replay: {replayer.published} messages published, '
            f'{replayer.skipped} skipped, {time.monotonic() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())

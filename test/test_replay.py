"""Replay a bag into the live node over DDS; its outputs must equal the offline tool's.

The node runs in its own process with the real params file and the known-answer TorchScript
model, in the namespace /cam; the replay tool runs in another process; the test records
/cam/segmentation/label with rclpy and compares every frame with the offline bag tool's label
for the same stamp.
"""

import os
from pathlib import Path
import subprocess
import sys
import time

from conftest import claim_domain
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
import numpy as np
import rclpy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.io.image import image_to_array
from semseg_ros.io.nav import msg_to_grid
from sensor_msgs.msg import Image
from test_bag import class_map
from test_bag import GRID
from test_bag import IMAGE
from test_bag import image_raw
from test_bag import INFO
from test_bag import info_raw
from test_bag import PARAMS
from test_bag import PURE
from test_bag import read_bag
from test_bag import segment
from test_bag import START
from test_bag import stored_image
from test_bag import tiny_model
from test_bag import TYPES
from test_bag import write_bag
from test_node_integration import start_node
from test_node_integration import stop_node

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0
FRAMES = 20
DONE = ('frames processed', 'frames dropped')


def replay(bag, domain, *args):
    """Start the replay tool in its own process."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    cmd = [sys.executable, '-m', 'semseg_ros.tools.replay', str(bag)] + [str(a) for a in args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def camera_bag(path, storage):
    """Write FRAMES rgb8 frames at 10 Hz on /cam/image, camera info, and one corrupt frame."""
    messages = []
    for i in range(FRAMES):
        stamp = START + i * 10**8
        labels = class_map(i, 48, 64)
        messages.append(('/cam/image', IMAGE, stamp, image_raw(PURE[labels], stamp)))
        messages.append(('/cam/camera_info', INFO, stamp, info_raw(stamp)))
    stamp = START + FRAMES * 10**8
    messages.append(('/cam/image', IMAGE, stamp, image_raw(PURE[class_map(0, 48, 64)],
                                                           stamp)[:40]))
    return write_bag(path, storage, messages)


def stamp(msg):
    """Return the header stamp of msg in nanoseconds."""
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


class Recorder:
    """A test-side node that records /cam/segmentation/label by stamp."""

    def __init__(self, domain):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node('replay_recorder', context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.labels = {}
        self.grids = {}
        self.counts = {}  # the node's newest 'frames ...' diagnostics of camera ''
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, '/cam/segmentation/label', self.on_label, qos)
        self.node.create_subscription(OccupancyGrid, '/cam/segmentation/drivable_grid',
                                      self.on_grid, qos)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.on_diagnostics, qos)

    def on_label(self, msg):
        array, _ = image_to_array(msg)
        self.labels[stamp(msg)] = (msg.header.frame_id, array[:, :, 0].copy())

    def on_grid(self, msg):
        self.grids[stamp(msg)] = msg_to_grid(msg)

    def on_diagnostics(self, msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if 'frames received' in values:
                self.counts = {k: int(v) for k, v in values.items() if k.startswith('frames ')}

    def spin_until(self, done, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not done():
            self.executor.spin_once(timeout_sec=0.05)
        return done()

    def close(self):
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def test_replayed_bag_gives_the_offline_labels_for_every_frame(tmp_path):
    bag = camera_bag(tmp_path / 'drive', 'sqlite3')
    tiny = tiny_model(tmp_path) + GRID
    offline_bag = tmp_path / 'offline'
    argv = [bag, offline_bag, '--params', PARAMS]
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 0
    topics = read_bag(offline_bag)
    offline = {t: stored_image(raw)[1] for t, raw, _ in topics['/cam/segmentation/label']}
    assert len(offline) == FRAMES
    offline_grids = {t: TYPES.deserialize_cdr(raw, msgtype).data.reshape(60, 60)
                     for t, raw, msgtype in topics['/cam/segmentation/drivable_grid']}

    domain = claim_domain()
    # Reliable input with a history: a stall of the node's executor cannot lose a frame in DDS,
    # so every frame reaches the node, which counts each one it drops for a newer one.
    node = start_node(domain, *tiny, 'qos.input.reliability:=reliable', 'qos.input.depth:=10',
                      namespace='/cam')
    recorder = Recorder(domain)
    player = None
    try:
        # The node subscribes to /cam/image once its model is loaded.
        assert recorder.spin_until(
            lambda: recorder.node.count_subscribers('/cam/image') > 0
            and recorder.node.count_publishers('/cam/segmentation/label') > 0, TIMEOUT), \
            'the node did not come up'
        # Half speed (5 Hz), far within the node's capacity. The node keeps the newest frame
        # only: a stall of the shared CI machine longer than a frame period (seen at 10 Hz
        # and at 5 Hz, at most one frame per run) drops one, and the node counts it.
        player = replay(bag, domain, '--rate', '0.5', '--start-delay', '1.0',
                        '--wait-subscribers', '30')
        recorder.spin_until(lambda: player.poll() is not None, TIMEOUT)
        recorder.spin_until(lambda: recorder.counts.get('frames received') == FRAMES
                            and sum(recorder.counts.get(k, 0) for k in DONE) == FRAMES, 10.0)
        recorder.spin_until(lambda: len(recorder.labels) >= FRAMES - recorder.counts.get(
            'frames dropped', 0), 5.0)
        replay_log = player.communicate(timeout=10)[0]
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        recorder.close()
        node_log = stop_node(node)
    assert player.returncode == 0, replay_log
    assert f'{2 * FRAMES} messages published, 1 skipped' in replay_log
    assert recorder.labels, f'no output from the node\n{replay_log}\n{node_log}'
    for stamp, (frame_id, label) in recorder.labels.items():
        assert stamp in offline
        assert frame_id == 'cam'
        assert np.array_equal(label, offline[stamp]), stamp
    # The node has no grid until its first camera_info (recorded just after the first image).
    assert set(recorder.labels) - {START} <= set(recorder.grids) <= set(recorder.labels), \
        f'{replay_log}\n{node_log}'
    for key, grid in recorder.grids.items():
        assert np.array_equal(grid, offline_grids[key]), key
    # Every frame reached the node, and each one without a label is one the node counted as
    # dropped for a newer frame; never more than a CI stall or two explains.
    counts = recorder.counts
    lost = FRAMES - len(recorder.labels)
    assert counts['frames received'] == FRAMES, f'{counts}\n{replay_log}\n{node_log}'
    assert counts['frames processed'] == len(recorder.labels), counts
    assert counts['frames dropped'] == lost <= 2, f'{counts}\n{replay_log}\n{node_log}'
    assert START + (FRAMES - 1) * 10**8 in recorder.labels  # the newest frame is never dropped


def test_replay_timing_without_subscribers_and_errors(tmp_path):
    messages = [('/cam/camera_info', INFO, START + i * 10**8, info_raw(START + i * 10**8))
                for i in range(11)]
    bag = write_bag(tmp_path / 'info', 'mcap', messages)
    domain = claim_domain()
    player = replay(bag, domain, '--rate', '2', '--wait-subscribers', '0.5',
                    '--start-delay', '0', '--ros-args', '-r', '__node:=player')
    log = player.communicate(timeout=TIMEOUT)[0]
    assert player.returncode == 0, log
    assert 'no subscriber after 0.5 s; publishing anyway' in log
    assert '11 messages published, 0 skipped' in log
    seconds = float(log.rsplit(', ', 1)[1].split()[0])
    assert 0.4 <= seconds < 3.0, log  # one second of bag at rate 2
    player = replay(bag, domain, '--topics', '/missing')
    log = player.communicate(timeout=TIMEOUT)[0]
    assert player.returncode == 1
    assert '/missing are not in the bag' in log
    player = replay(tmp_path / 'nothing', domain)
    log = player.communicate(timeout=TIMEOUT)[0]
    assert player.returncode == 1 and 'cannot read bag' in log


def test_types_resolve_to_rclpy_classes():
    from semseg_ros.tools.replay import message_class
    from sensor_msgs.msg import CameraInfo
    from sensor_msgs.msg import CompressedImage
    assert message_class('sensor_msgs/msg/Image') is Image
    assert message_class('sensor_msgs/msg/CompressedImage') is CompressedImage
    assert message_class(INFO) is CameraInfo
    assert message_class('no_such_pkg/msg/Thing') is None
    assert TYPES.types[IMAGE]  # the bag side knows the same type

"""
Demo: camera source -> segmentation node -> overlay PNGs and a rate/latency summary.

Starts the camera source and the node as their own processes (as `ros2 launch` would), listens
to segmentation/overlay over DDS, writes every overlay it receives to a folder and prints one
summary line.
"""

import argparse
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.core import settings
from semseg_ros.io.image import image_to_array
from sensor_msgs.msg import Image

# Fast DDS 2.x (Jazzy) reads the first name, 3.x (Kilted) the second.
DDS_PROFILE_VARS = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')


def default_params_file():
    """Return the installed config/semseg.yaml (ament index, then this prefix) or the source's."""
    found = settings.find_params_file()
    return found or str(settings.params_file_candidates()[-1] / 'config' / 'semseg.yaml')


def default_dds_profile():
    """Return the Fast DDS profile the environment names, else the installed fastdds_shm.xml."""
    for name in DDS_PROFILE_VARS:
        if os.environ.get(name):
            return os.environ[name]
    for folder in settings.params_file_candidates():
        path = folder / 'config' / 'fastdds_shm.xml'
        if path.is_file():
            return str(path)
    return ''


class OverlayRecorder(Node):
    """Subscribe to the overlay output, save each image and record latencies."""

    def __init__(self, topic, folder):
        super().__init__('semseg_demo_viewer')
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob('overlay_*.png'):
            old.unlink()  # overlays of an earlier run
        self.received = []  # (receive time, stamp) in seconds
        self.sizes = set()
        self.node_error = ''  # the node's own report of a failed start (its diagnostics)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Image, topic, self.on_overlay, qos)
        self.create_subscription(DiagnosticArray, '/diagnostics', self.on_diagnostics, 10)

    def on_diagnostics(self, msg):
        """Note the error of a node that stays unconfigured (model or parameters failed)."""
        for status in msg.status:
            if status.name.endswith(': node') and status.level == DiagnosticStatus.ERROR:
                self.node_error = status.message

    def on_overlay(self, msg):
        """Save the overlay as PNG and note its latency from the camera stamp."""
        now = time.time()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.received.append((now, stamp))
        array, _ = image_to_array(msg)
        self.sizes.add((msg.width, msg.height))
        name = f'overlay_{len(self.received):05d}_{msg.header.stamp.sec}.' \
               f'{msg.header.stamp.nanosec:09d}.png'
        cv2.imwrite(str(self.folder / name), cv2.cvtColor(array, cv2.COLOR_RGB2BGR))


def summary(recorder, published):
    """Return the one-line summary of a run."""
    got = recorder.received
    if not got:
        return f'semseg demo: 0/{published} frames segmented - nothing came back'
    latency = np.array([now - stamp for now, stamp in got]) * 1000.0
    span = got[-1][0] - got[0][0]
    rate = (len(got) - 1) / span if span > 0 else float('nan')
    sizes = ', '.join(f'{w}x{h}' for w, h in sorted(recorder.sizes))
    line = (f'semseg demo: {len(got)}/{published} frames segmented ({sizes}), '
            f'{rate:.1f} Hz, latency p50 {np.percentile(latency, 50):.0f} ms, '
            f'p95 {np.percentile(latency, 95):.0f} ms; overlays in {recorder.folder}/')
    if 2 * len(got) < published:
        line += (f'\nsemseg demo: most frames were lost ({published - len(got)} of '
                 f'{published} never came back): the node was too slow for --rate, or started '
                 'late; try a lower --rate')
    return line


def wait_for_node(viewer, topic, process, timeout):
    """
    Spin until the node publishes topic; return '' or why it will not.

    Fails at once when the node process exits or reports in its diagnostics that it stays
    unconfigured (e.g. weights that cannot be found or downloaded), instead of waiting out
    the timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if viewer.count_publishers(topic) > 0:
            return ''
        if process.poll() is not None:
            return f'the node exited with code {process.returncode} (see its log above)'
        if viewer.node_error:
            return viewer.node_error
        rclpy.spin_once(viewer, timeout_sec=0.2)
    return (f'the node did not publish {topic} within {timeout:g} s (see its log above; '
            'a slow first model load? raise --startup-timeout)')


def stop(process):
    """Interrupt a child process and wait for it."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def parse_args(argv):
    """Parse the demo's command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', default='',
                        help='video file or folder of images (default: a synthetic pattern)')
    parser.add_argument('--frames', type=int, default=100, help='frames to publish')
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate (Hz)')
    parser.add_argument('--output', default='demo_output', help='folder for overlay PNGs')
    parser.add_argument('--params-file', default=default_params_file(),
                        help='node parameter file (default: the installed config/semseg.yaml)')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter, as in --ros-args -p')
    parser.add_argument('--dds-profile', default=default_dds_profile(),
                        help='Fast DDS profile for the camera, the node and the viewer '
                             '(default: the one the environment names, else the installed '
                             'config/fastdds_shm.xml, complete frames with every output; '
                             '"none": Fast DDS defaults)')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds to wait for the node to load its model')
    return parser.parse_args(argv)


def commands(args):
    """Return the command lines of the node and of the camera source."""
    node_cmd = [sys.executable, '-m', 'semseg_ros.node', '--ros-args',
                '--params-file', args.params_file]
    for param in args.param:
        node_cmd += ['-p', param]
    camera_cmd = [sys.executable, '-m', 'semseg_ros.tools.camera_source', '--ros-args']
    if args.source:  # an empty -p source:= is not a valid override; no source = the pattern
        camera_cmd += ['-p', f'source:={args.source}']
    camera_cmd += ['-p', f'rate:={args.rate}', '-p', f'count:={args.frames}',
                   '-p', 'exit_when_done:=true', '-p', 'loop:=true',
                   '-p', 'reliability:=reliable', '-p', 'wait_for_subscribers:=1']
    return node_cmd, camera_cmd


def main(argv=None):
    """Run the demo and print the summary; return the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.frames <= 0 or args.rate <= 0:
        print('semseg demo: --frames and --rate must be positive', file=sys.stderr)
        return 2
    node_cmd, camera_cmd = commands(args)
    if args.dds_profile and args.dds_profile != 'none':
        # Before rclpy.init: the viewer's participant reads it too, the children inherit it.
        os.environ.update({name: args.dds_profile for name in DDS_PROFILE_VARS})
    elif args.dds_profile == 'none':
        for name in DDS_PROFILE_VARS:
            os.environ.pop(name, None)
    rclpy.init()
    viewer = OverlayRecorder('segmentation/overlay', args.output)
    seg = subprocess.Popen(node_cmd, env=os.environ.copy())
    camera = None
    code = 0
    try:
        print(f'semseg demo: starting the node ({args.params_file})', flush=True)
        problem = wait_for_node(viewer, 'segmentation/overlay', seg, args.startup_timeout)
        if problem:
            print(f'semseg demo: the node did not start: {problem}', file=sys.stderr)
            return 1
        camera = subprocess.Popen(camera_cmd, env=os.environ.copy())
        print(f'semseg demo: publishing {args.frames} frames at {args.rate:g} Hz from '
              f'{args.source or "a synthetic pattern"}', flush=True)
        deadline = time.monotonic() + args.frames / args.rate + 60.0
        while camera.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(viewer, timeout_sec=0.1)
        if camera.returncode not in (0, None):
            print(f'semseg demo: the camera source failed ({camera.returncode})',
                  file=sys.stderr)
            code = 1
        grace = time.monotonic() + 3.0
        while time.monotonic() < grace:
            rclpy.spin_once(viewer, timeout_sec=0.1)
        print(summary(viewer, args.frames), flush=True)
        if not viewer.received:
            code = 1  # nothing came back: a failed demo
    finally:
        if camera is not None:
            stop(camera)
        stop(seg)
        viewer.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())

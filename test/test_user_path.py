"""
A user's path: a fresh clone, the README's commands exactly as printed, a clean environment.

The clone is taken with `git clone` from this repository's HEAD (commit first: uncommitted
changes are not in it; CI's fresh clone of main clones main). It has no ../shared beside it.
Every command runs in its own process with a clean environment: no AMENT_PREFIX_PATH,
VIRTUAL_ENV, PYTHONPATH or SEMSEG_ROS_CACHE, an empty HOME, the system PATH; only a private ROS
domain (conftest.claim_domain) and localhost discovery are set, so that runs cannot meet.

So that the test does not build a 6 GB venv, the clone's `.venv` is a link to a fresh venv
that sees the running venv's packages through a .pth file; `make venv` then has nothing to
download and installs the clone's package into that fresh venv (its own prefix, its own
console scripts), as it does for a user. Published weights come from a local HTTP server
through SEMSEG_ROS_WEIGHTS_URL: the real download, progress bar and sha256 check run offline.
The server serves the real ESPNet weights from ../shared of this checkout; without them, the
parts that need the model are skipped with the reason.
"""

import functools
import hashlib
import http.server
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time

from conftest import claim_domain
import cv2
import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from semseg_ros.core import weights
from sensor_msgs.msg import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'assets'
WEIGHTS = SHARED / 'models' / weights.ESPNET_CAMVID.filename
CAMVID = SHARED / 'camvid_val'
README = (ROOT / 'README.md').read_text()
COMMAND_TIMEOUT = 300


def readme_commands(heading):
    """Return the command lines of the first bash block under a README heading."""
    section = README.split(f'\n## {heading}\n', 1)[1].split('\n## ', 1)[0]
    block = section.split('```bash\n', 1)[1].split('```', 1)[0]
    lines = [line.split('  #', 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith('#')]


QUICK_START = readme_commands('Two commands')
TOOLS = readme_commands('Bags, evaluation, replay')


def tool(name):
    """Return the README's command line that runs .venv/bin/<name>."""
    found = [line for line in TOOLS if line.startswith(f'.venv/bin/{name} ')]
    assert len(found) == 1, f'the README shows no single {name} command: {TOOLS}'
    return found[0]


class Server:
    """An HTTP server on 127.0.0.1 serving one folder, in a thread."""

    def __init__(self, folder):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class User:
    """The clone, its clean environment and a shell to type the README's lines into."""

    def __init__(self, base):
        self.base = base
        self.clone = base / 'semseg_ros'
        self.home = base / 'home'
        self.home.mkdir()
        self.cache = self.home / '.cache' / 'semseg_ros'
        self.env = {
            'PATH': '/usr/local/bin:/usr/bin:/bin',
            'HOME': str(self.home),
            'LANG': 'C.UTF-8',
            'TMPDIR': str(base),
            'ROS_DOMAIN_ID': str(claim_domain()),
            'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        }

    def run(self, line, weights_url=None, timeout=COMMAND_TIMEOUT):
        """Run one command line as typed in a shell in the clone; return (code, out, seconds)."""
        env = dict(self.env)
        if weights_url:
            env['SEMSEG_ROS_WEIGHTS_URL'] = weights_url
        start = time.monotonic()
        done = subprocess.run(['bash', '-c', line], cwd=self.clone, env=env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.monotonic() - start
        print(f'$ {line}    # exit {done.returncode}, {seconds:.1f} s\n{done.stdout}')
        return done.returncode, done.stdout, seconds


def overlay_venv(venv):
    """
    Make a fresh venv of this interpreter that uses the running venv's packages.

    Its own prefix (where `make venv` installs the clone), with the running venv's
    site-packages on its path (a .pth file read first), the ROS wheels' shared libraries
    (<prefix>/lib/*.so, site-packages/ros_*.libs) linked in, and the running venv's .pth hooks
    (the ROS wheels' bootstrapper sets LD_LIBRARY_PATH from the prefix).
    """
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True,
                   timeout=120)
    version = f'python{sys.version_info.major}.{sys.version_info.minor}'
    running_lib = Path(sys.prefix) / 'lib'
    running_site = Path(sysconfig.get_paths()['purelib'])
    site = venv / 'lib' / version / 'site-packages'
    (site / '00_running_venv.pth').write_text(''.join(
        f'{p}\n' for p in sorted({str(running_site), sysconfig.get_paths()['platlib']})))
    for entry in running_lib.iterdir():
        if entry.name not in (version, 'semseg_ros') and not (venv / 'lib' / entry.name).exists():
            (venv / 'lib' / entry.name).symlink_to(entry)
    for entry in running_site.iterdir():
        if entry.suffix == '.pth' or (entry.name.startswith('ros_') and entry.suffix == '.libs'):
            (site / entry.name).symlink_to(entry)


@pytest.fixture(scope='module')
def user(tmp_path_factory):
    if not (ROOT / '.git').exists() or shutil.which('make') is None:
        pytest.skip(f'needs a git checkout to clone ({ROOT}) and make')
    base = tmp_path_factory.mktemp('user_path')
    user = User(base)
    subprocess.run(['git', 'clone', '--quiet', str(ROOT), str(user.clone)], check=True,
                   timeout=120, env={'PATH': user.env['PATH'], 'HOME': str(user.home)})
    venv = base / 'venv'
    overlay_venv(venv)
    (user.clone / '.venv').symlink_to(venv, target_is_directory=True)
    user.venv = venv
    yield user
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def video(user):
    """Write drive.mp4 into the clone: CamVid frames when present, else a test pattern."""
    path = user.clone / 'drive.mp4'
    if not path.exists():
        frames = sorted((CAMVID / 'images').glob('*.png'))[:20] if CAMVID.exists() else []
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (480, 360))
        assert writer.isOpened()
        for i in range(20):
            if frames:
                image = cv2.resize(cv2.imread(str(frames[i])), (480, 360))
            else:
                image = np.full((360, 480, 3), (i * 12) % 256, np.uint8)
                cv2.circle(image, (24 * i, 180), 40, (0, 255, 0), -1)
            writer.write(image)
        writer.release()
    return path


def test_readme_commands_are_found():
    assert QUICK_START == ['make demo', 'make test']
    assert [line.split()[0] for line in TOOLS] == [
        '.venv/bin/semseg-ros-make-bag', '.venv/bin/semseg-ros-bag',
        '.venv/bin/semseg-ros-replay', '.venv/bin/semseg-ros-eval']


def test_make_venv_installs_the_clone(user):
    code, out, _ = user.run('make venv')
    assert code == 0, out
    installed = user.venv / 'share' / 'semseg_ros' / 'config'
    assert (installed / 'semseg.yaml').is_file() and (installed / 'classes' / 'camvid.yaml')\
        .is_file()
    for name in ('semseg_node', 'camera_source', 'semseg-ros-make-bag', 'semseg-ros-eval'):
        assert (user.venv / 'bin' / name).is_file(), name
    assert (user.venv / 'lib' / 'semseg_ros' / 'semseg_node').exists()
    code, out, _ = user.run(
        '.venv/bin/python -I -c "import semseg_ros; print(semseg_ros.__file__)"')
    assert code == 0 and Path(out.strip()).resolve().is_relative_to(user.venv.resolve()), out
    # A linked .venv, and later eval_output/ and demo_output/, are ignored: nothing to redo.
    code, out, _ = user.run('make -q venv && git check-ignore .venv eval_output/ demo_output/'
                            ' && test -z "$(git status --porcelain)"')
    assert code == 0 and out.split() == ['.venv', 'eval_output/', 'demo_output/'], out


def test_demo_without_weights_fails_fast_and_says_what_to_do(user, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    server = Server(empty)
    try:
        code, out, seconds = user.run(QUICK_START[0], weights_url=server.url)
    finally:
        server.close()
    assert code != 0, out
    assert seconds < 90, f'{seconds:.0f} s: the demo waited for a node that cannot start'
    assert 'semseg demo: the node did not start' in out, out
    assert 'HTTP 404' in out and weights.ESPNET_CAMVID.filename in out, out
    assert f'place it at {user.cache / weights.ESPNET_CAMVID.filename}' in out, out
    assert 'fix the parameter' not in out
    user.offline_output = out
    assert "Couldn't parse parameter override" not in out  # no empty -p source:=


def test_make_bag_and_a_corrupted_download_is_refused(user, video, tmp_path):
    code, out, _ = user.run(tool('semseg-ros-make-bag'))
    assert code == 0, out
    assert 'semseg-ros-make-bag: 20 frames (480x360) at 10 Hz, 2.0 s -> drive (sqlite3): ' \
        '/camera/image_raw, /camera/camera_info' in out, out
    corrupt = tmp_path / 'corrupt'
    corrupt.mkdir()
    data = bytearray(WEIGHTS.read_bytes() if WEIGHTS.exists() else os.urandom(1 << 20))
    data[len(data) // 2] ^= 0xFF
    (corrupt / weights.ESPNET_CAMVID.filename).write_bytes(bytes(data))
    server = Server(corrupt)
    try:
        code, out, _ = user.run(tool('semseg-ros-bag'), weights_url=server.url)
    finally:
        server.close()
    assert code == 1, out
    assert 'wrong sha256' in out and weights.ESPNET_CAMVID.sha256 in out, out
    assert not user.cache.exists() or os.listdir(user.cache) == []
    assert not (user.clone / 'drive_seg').exists()


class Listener:
    """A ROS node in this process that counts the images arriving on one topic."""

    def __init__(self, domain, topic):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node('user_path_listener', context=self.context)
        self.count = 0
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, topic, self.on_image, qos)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.spin, daemon=True)
        self.thread.start()

    def on_image(self, msg):
        self.count += 1

    def spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: B902 - the context was shut down meanwhile
                return

    def close(self):
        rclpy.shutdown(context=self.context)
        self.thread.join(5)
        self.node.destroy_node()


@pytest.fixture
def published_weights():
    if not WEIGHTS.exists():
        pytest.skip(f'needs the published ESPNet weights to serve ({WEIGHTS} is absent: a '
                    'clone without ../shared); the offline and corrupted-download paths ran')
    server = Server(WEIGHTS.parent)
    yield server.url
    server.close()


def test_readme_tools_with_published_weights(user, video, published_weights):
    if not (user.clone / 'drive').exists():
        pytest.fail('the bag of the previous test is missing')
    # Segment the bag; the weights are downloaded on first use, with progress and hash check.
    code, out, _ = user.run(tool('semseg-ros-bag'), weights_url=published_weights)
    assert code == 0, out
    assert weights.ESPNET_CAMVID.filename in out  # the download's progress bar
    assert 'semseg-ros-bag: 20 frames, 0 skipped, 0 errors' in out, out
    cached = user.cache / weights.ESPNET_CAMVID.filename
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == weights.ESPNET_CAMVID.sha256
    # Replay the segmented bag over DDS to a subscriber in this process.
    listener = Listener(int(user.env['ROS_DOMAIN_ID']), '/camera/segmentation/overlay')
    try:
        code, out, _ = user.run(tool('semseg-ros-replay'))
        deadline = time.monotonic() + 5
        while listener.count < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.close()
    assert code == 0, out
    assert 'semseg-ros-replay: 100 messages published, 0 skipped' in out, out
    assert listener.count == 20, out
    # Evaluate on labelled frames (the CamVid validation images when present).
    dataset = user.clone / 'camvid_val'
    for sub in ('images', 'labels'):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted((CAMVID / sub).glob('*.png'))[:4]:
            shutil.copy(path, dataset / sub / path.name)
    if len(list((dataset / 'labels').glob('*.png'))) < 4:
        pytest.skip(f'needs labelled CamVid images ({CAMVID} is absent)')
    code, out, _ = user.run(tool('semseg-ros-eval'), weights_url=published_weights)
    assert code == 0, out
    assert '4 images in' in out and 'pictures and metrics.json in eval_output/' in out, out
    accuracy = float(re.search(r'pixel accuracy\s+([0-9.]+)', out).group(1))
    assert accuracy > 0.85, out  # ESPNet on CamVid: 0.93 over the 101 images
    assert (user.clone / 'eval_output' / 'metrics.json').is_file()


def test_make_demo_with_the_weights_placed_as_the_error_said(user, published_weights):
    # Offline, as the demo's error message told: the file placed at the path it named.
    target = Path(re.search(r'place it at (\S+\.pth)', user.offline_output).group(1))
    if target.exists():
        target.unlink()  # downloaded by the tools above
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(WEIGHTS, target)
    code, out, _ = user.run(QUICK_START[0])
    summary = re.search(r'semseg demo: (\d+)/100 frames segmented \(640x480\), [0-9.]+ Hz, '
                        r'latency p50 \d+ ms, p95 \d+ ms; overlays in demo_output/', out)
    assert code == 0 and summary, out
    received = int(summary.group(1))
    assert received >= 1, out
    # Frames are lost only when the node is slower than the camera (a loaded machine); the
    # demo then says so plainly.
    assert ('most frames were lost' in out) == (received < 50), out
    assert len(list((user.clone / 'demo_output').glob('overlay_*.png'))) == received
    # Outputs of the tools and the demo leave the installed package alone.
    code, out, _ = user.run(
        'make -q venv && test -z "$(git status --porcelain --untracked-files=no)"')
    assert code == 0, out

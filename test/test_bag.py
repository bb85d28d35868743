"""The offline bag tool on bags the tests write (sqlite3 and mcap, Image and CompressedImage).

A tiny TorchScript model with a known answer (logits = RGB channels) makes every label checkable;
with the shared assets, real CamVid frames go through the published ESPNet weights.
"""

from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer
from rosbags.typesys import get_typestore
from rosbags.typesys import Stores
from semseg_ros.core.models import torchscript
from semseg_ros.core.models.base import Preprocess
from semseg_ros.io.image import image_to_array
from semseg_ros.tools import bag
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / 'config' / 'semseg.yaml'
TYPES = get_typestore(Stores.ROS2_JAZZY)
IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
INFO = 'sensor_msgs/msg/CameraInfo'
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
PURE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
COLORS = [[200, 0, 0], [0, 200, 0], [0, 0, 200]]
OUTPUTS = ('label', 'color', 'overlay', 'drivable', 'confidence')
START = 1_700_000_000 * 10**9
# A 6 x 6 m grid in front of a camera 1 m up, tilted 0.6 rad down.
GRID = ['grid.enabled:=true', 'grid.resolution:=0.1', 'grid.width:=60', 'grid.height:=60',
        'grid.origin_y:=-3.0', 'camera_pose.z:=1.0', 'camera_pose.pitch:=0.6']


class Channels(torch.nn.Module):
    """Logits = input channels: red pixels are class 0, green 1, blue 2."""

    def forward(self, x):
        return x


def tiny_model(folder):
    """Save the known-answer model and its class set; return the -p overrides that use them."""
    folder = Path(folder)
    model = folder / 'channels.pt'
    torchscript.save(Channels(), str(model), 3, Preprocess(scale=1.0 / 255.0))
    classes = folder / 'rgb.yaml'
    classes.write_text(yaml.safe_dump({'name': 'rgb', 'classes': [
        {'id': i, 'name': n, 'color': COLORS[i], **({'drivable': True} if i == 1 else {})}
        for i, n in enumerate(('red', 'green', 'blue'))]}))
    return ['model.backend:=torchscript', f'model.weights:={model}', f'classes:={classes}',
            'device:=cpu']


def class_map(index, height, width):
    """Return a deterministic class map (blocks of classes 0..2) for frame `index`."""
    rng = np.random.default_rng(index)
    blocks = rng.integers(0, 3, size=(-(-height // 8), -(-width // 8)))
    return np.kron(blocks, np.ones((8, 8), np.int64))[:height, :width].astype(np.uint8)


def header(stamp, frame_id):
    """Return a rosbags std_msgs/Header."""
    time = TYPES.types['builtin_interfaces/msg/Time'](sec=stamp // 10**9,
                                                      nanosec=stamp % 10**9)
    return TYPES.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)


def image_raw(rgb, stamp, frame_id='cam'):
    """Serialize an RGB array as a sensor_msgs/Image rgb8."""
    h, w = rgb.shape[:2]
    msg = TYPES.types[IMAGE](header=header(stamp, frame_id), height=h, width=w,
                             encoding='rgb8', is_bigendian=0, step=3 * w,
                             data=np.ascontiguousarray(rgb).reshape(-1))
    return TYPES.serialize_cdr(msg, IMAGE)


def compressed_raw(rgb, stamp, frame_id='front', data=None):
    """Serialize an RGB array as a PNG sensor_msgs/CompressedImage (or with raw data)."""
    if data is None:
        data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].reshape(-1)
    msg = TYPES.types[COMPRESSED](header=header(stamp, frame_id), format='png',
                                  data=np.frombuffer(bytes(data), np.uint8))
    return TYPES.serialize_cdr(msg, COMPRESSED)


def info_raw(stamp, width=64, height=48):
    """Serialize the sensor_msgs/CameraInfo of a pinhole camera (focal length 40 px)."""
    k = np.array([40.0, 0, (width - 1) / 2, 0, 40.0, (height - 1) / 2, 0, 0, 1])
    msg = TYPES.types[INFO](
        header=header(stamp, 'cam'), height=height, width=width, distortion_model='plumb_bob',
        d=np.zeros(5), k=k, r=np.eye(3).reshape(-1),
        p=np.concatenate([k.reshape(3, 3), np.zeros((3, 1))], axis=1).reshape(-1),
        binning_x=0, binning_y=0,
        roi=TYPES.types['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    return TYPES.serialize_cdr(msg, INFO)


def write_bag(path, storage, messages):
    """Write [(topic, msgtype, timestamp, raw)] into a new bag."""
    with Writer(path, version=8, storage_plugin=STORAGES[storage]) as writer:
        connections = {}
        for topic, msgtype, timestamp, raw in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPES)
            writer.write(connections[topic], timestamp, raw)
    return path


def make_bag(path, storage, frames=6, height=48, width=64, corrupt=True, period=0.1):
    """Write a bag with /cam/image, /front/image/compressed and /cam/camera_info.

    Return (path, expected) where expected maps (topic, timestamp) to the class map. With
    `corrupt`, three bad messages are added: truncated CDR, data that is no image, a too-short
    Image buffer.
    """
    messages = []
    expected = {}
    step = int(period * 1e9)
    for i in range(frames):
        stamp = START + i * step
        labels = class_map(i, height, width)
        messages.append(('/cam/image', IMAGE, stamp, image_raw(PURE[labels], stamp)))
        expected[('/cam/image', stamp)] = labels
        messages.append(('/cam/camera_info', INFO, stamp, info_raw(stamp)))
        labels = class_map(100 + i, height // 2, width // 2)
        stamp2 = stamp + step // 2
        messages.append(('/front/image/compressed', COMPRESSED, stamp2,
                         compressed_raw(PURE[labels], stamp2)))
        expected[('/front/image/compressed', stamp2)] = labels
    if corrupt:
        stamp = START + frames * step
        good = image_raw(PURE[class_map(0, height, width)], stamp)
        messages.append(('/cam/image', IMAGE, stamp, good[:40]))
        messages.append(('/front/image/compressed', COMPRESSED, stamp + 1,
                         compressed_raw(None, stamp + 1, data=b'not an image')))
        short = TYPES.types[IMAGE](header=header(stamp + 2, 'cam'), height=height, width=width,
                                   encoding='rgb8', is_bigendian=0, step=3 * width,
                                   data=np.zeros(10, np.uint8))
        messages.append(('/cam/image', IMAGE, stamp + 2, TYPES.serialize_cdr(short, IMAGE)))
    messages.sort(key=lambda m: m[2])
    return write_bag(path, storage, messages), expected


def read_bag(path):
    """Return {topic: [(timestamp, raw, msgtype)]} of a bag."""
    topics = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            topics.setdefault(connection.topic, []).append(
                (timestamp, raw, connection.msgtype))
    return topics


def stored_image(raw):
    """Deserialize a stored Image; return (msg, array of shape (H, W) or (H, W, C))."""
    msg = TYPES.deserialize_cdr(raw, IMAGE)
    array, _ = image_to_array(msg)
    return msg, array[:, :, 0] if array.shape[2] == 1 else array


def segment(argv):
    """Run the tool in-process; return its exit status."""
    return bag.main([str(a) for a in argv] + ['--no-progress'])


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Return the -p overrides that select the known-answer model."""
    return tiny_model(tmp_path_factory.mktemp('tiny'))


@pytest.mark.parametrize('source_storage,target_storage',
                         [('sqlite3', 'mcap'), ('mcap', 'sqlite3')])
def test_every_output_with_input_headers_and_stamps(tmp_path, tiny, capsys, source_storage,
                                                    target_storage):
    source, expected = make_bag(tmp_path / 'in', source_storage)
    target = tmp_path / 'out'
    argv = [source, target, '--params', PARAMS, '--storage', target_storage, '--batch', '4']
    for override in tiny + ['overlay_alpha:=1.0']:
        argv += ['-p', override]
    assert segment(argv) == 0
    out = capsys.readouterr().out
    assert '12 frames, 3 skipped, 0 errors' in out
    assert '/cam/image: 6 frames, 2 skipped, 0 errors' in out
    assert '/front/image/compressed: 6 frames, 1 skipped, 0 errors' in out
    with Reader(target) as reader:
        storage = 'mcap' if any(p.suffix == '.mcap' for p in target.iterdir()) else 'sqlite3'
        assert storage == target_storage
        assert all(c.msgtype == IMAGE for c in reader.connections)
    topics = read_bag(target)
    want = {f'/{ns}/segmentation/{name}' for ns in ('cam', 'front') for name in OUTPUTS}
    assert set(topics) == want
    inputs = read_bag(source)
    for ns, topic in (('cam', '/cam/image'), ('front', '/front/image/compressed')):
        stamps = [t for (name, t) in expected if name == topic]
        in_headers = {t: TYPES.deserialize_cdr(raw, msgtype).header
                      for t, raw, msgtype in inputs[topic] if t in stamps}
        for name in OUTPUTS:
            messages = topics[f'/{ns}/segmentation/{name}']
            assert [t for t, _, _ in messages] == sorted(stamps), name
            for timestamp, raw, _ in messages:
                msg, array = stored_image(raw)
                assert msg.header == in_headers[timestamp]
                labels = expected[(topic, timestamp)]
                assert array.shape[:2] == labels.shape
                if name == 'label':
                    assert msg.encoding == 'mono8'
                    assert np.array_equal(array, labels)
                elif name in ('color', 'overlay'):
                    assert msg.encoding == 'rgb8'
                    assert np.array_equal(array, np.array(COLORS, np.uint8)[labels])
                elif name == 'drivable':
                    assert np.array_equal(array, np.where(labels == 1, 255, 0))
                else:
                    assert abs(int(np.median(array)) - 147) <= 1  # softmax(1, 0, 0)


def test_include_inputs_copies_every_message(tmp_path, tiny):
    source, _ = make_bag(tmp_path / 'in', 'mcap')
    target = tmp_path / 'out'
    argv = [source, target, '--params', PARAMS, '--include-inputs', '--storage', 'sqlite3']
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 0
    inputs = read_bag(source)
    outputs = read_bag(target)
    for topic, messages in inputs.items():
        assert outputs[topic] == messages, topic  # corrupt ones too, byte for byte
    assert len(outputs['/cam/segmentation/label']) == 6


def test_outputs_follow_the_settings(tmp_path, tiny, capsys):
    source, _ = make_bag(tmp_path / 'in', 'sqlite3', frames=2, corrupt=False)
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'outputs': {'color': False, 'overlay': False, 'confidence': False}}}}))
    target = tmp_path / 'out'
    argv = [source, target, '--params', params, '--topics', '/cam/image',
            '-p', 'outputs.drivable:=false']
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 0
    assert set(read_bag(target)) == {'/cam/segmentation/label'}
    assert '2 frames, 0 skipped, 0 errors' in capsys.readouterr().out


def test_drivable_grid_from_camera_info(tmp_path, tiny, capsys):
    """With grid.enabled, /cam gets a grid and obstacles per frame; /front has no camera_info."""
    from semseg_ros.core import ground
    source, expected = make_bag(tmp_path / 'in', 'mcap', frames=3, corrupt=False)
    target = tmp_path / 'out'
    grid = GRID
    argv = [source, target, '--params', PARAMS, '--storage', 'sqlite3',
            '-p', 'outputs.drivable:=false']
    for override in tiny + grid:
        argv += ['-p', override]
    assert segment(argv) == 0
    assert 'no grid for /front: the bag has no /front/camera_info' in capsys.readouterr().out
    topics = read_bag(target)
    assert '/cam/segmentation/drivable' not in topics
    assert '/front/segmentation/drivable_grid' not in topics
    settings = bag.load_settings(str(PARAMS), tiny + grid)
    spec = ground.GridSpec(**settings.grid)
    info = TYPES.deserialize_cdr(info_raw(START), INFO)
    projector = ground.GroundProjector(ground.CameraModel.from_camera_info(info),
                                       ground.camera_pose(*settings.pose), spec)
    grids = topics['/cam/segmentation/drivable_grid']
    clouds = topics['/cam/segmentation/obstacles']
    assert [t for t, _, _ in grids] == [t for t, _, _ in clouds] == sorted(
        t for name, t in expected if name == '/cam/image')
    for timestamp, raw, msgtype in grids:
        msg = TYPES.deserialize_cdr(raw, msgtype)
        assert msg.header.frame_id == 'base_link'
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == timestamp
        assert (msg.info.width, msg.info.height) == (60, 60)
        assert abs(msg.info.resolution - 0.1) < 1e-6  # float32 in the message
        labels = expected[('/cam/image', timestamp)]
        want = projector.project(np.where(labels == 1, 255, 0).astype(np.uint8))
        cells = msg.data.reshape(60, 60)
        assert np.array_equal(cells, want)
        assert (cells == 0).any() and (cells == 100).any() and (cells == -1).any()
    cloud = TYPES.deserialize_cdr(clouds[0][1], clouds[0][2])
    points = cloud.data.view(np.float32).reshape(-1, 3)
    want = ground.obstacle_points(TYPES.deserialize_cdr(grids[0][1], grids[0][2])
                                  .data.reshape(60, 60), spec)
    assert np.array_equal(points, want)


def test_camera_info_that_does_not_fit_the_images_is_reported(tmp_path, tiny, capsys):
    stamp = START
    source = write_bag(tmp_path / 'in', 'sqlite3', [
        ('/cam/image', IMAGE, stamp, image_raw(PURE[class_map(0, 48, 64)], stamp)),
        ('/cam/camera_info', INFO, stamp, info_raw(stamp, width=100, height=100))])
    argv = [source, tmp_path / 'out', '--params', PARAMS]
    for override in tiny + GRID:
        argv += ['-p', override]
    assert segment(argv) == 0
    out = capsys.readouterr().out
    assert 'no grid for a frame of /cam/image' in out and 'does not match' in out
    topics = read_bag(tmp_path / 'out')
    assert len(topics['/cam/segmentation/label']) == 1
    assert '/cam/segmentation/drivable_grid' not in topics


def test_output_exists_is_an_error_unless_overwrite(tmp_path, tiny, capsys):
    source, _ = make_bag(tmp_path / 'in', 'mcap', frames=1, corrupt=False)
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'metadata.yaml').write_text('old')
    argv = [source, target, '--params', PARAMS]
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 1
    err = capsys.readouterr().err
    assert f'output bag {target} exists already' in err and '--overwrite' in err
    assert (target / 'metadata.yaml').read_text() == 'old'
    assert segment(argv + ['--overwrite']) == 0
    assert len(read_bag(target)['/cam/segmentation/label']) == 1


def test_overwrite_never_deletes_a_folder_that_is_not_a_bag(tmp_path, tiny, capsys):
    source, _ = make_bag(tmp_path / 'in', 'mcap', frames=1, corrupt=False)
    target = tmp_path / 'work'
    target.mkdir()
    (target / 'notes.txt').write_text('keep me')
    argv = [source, target, '--params', PARAMS, '--overwrite']
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 1
    assert 'is not a bag' in capsys.readouterr().err
    assert (target / 'notes.txt').read_text() == 'keep me'


def test_failure_midway_removes_the_partial_bag(tmp_path, tiny, capsys, monkeypatch):
    source, _ = make_bag(tmp_path / 'in', 'mcap', frames=6, corrupt=False)
    target = tmp_path / 'out'
    real = bag.image_message
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) > 12:
            raise OSError(28, 'No space left on device')
        return real(*args)

    monkeypatch.setattr(bag, 'image_message', failing)
    argv = [source, target, '--params', PARAMS, '--batch', '2']
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 1
    err = capsys.readouterr().err
    assert 'No space left on device' in err
    assert f'the partial output bag {target} was removed' in err
    assert not target.exists()


def test_processing_errors_are_counted_not_fatal(tmp_path, tiny, capsys, monkeypatch):
    """A frame the engine rejects is counted as an error; the other frames are written."""
    source, _ = make_bag(tmp_path / 'in', 'sqlite3', frames=3, corrupt=False)
    target = tmp_path / 'out'
    from semseg_ros.core.engine import Segmenter
    real = Segmenter.process

    def picky(self, frames, outputs):
        if any(f.array.shape[0] == 24 for f in frames):
            raise RuntimeError('frame rejected')
        return real(self, frames, outputs)

    monkeypatch.setattr(Segmenter, 'process', picky)
    argv = [source, target, '--params', PARAMS]
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 0
    out = capsys.readouterr().out
    assert '3 frames, 0 skipped, 3 errors' in out
    assert 'processing failed: RuntimeError: frame rejected' in out
    assert set(read_bag(target)) == {f'/cam/segmentation/{name}' for name in OUTPUTS}


def test_topic_selection_errors(tmp_path, tiny, capsys):
    source, _ = make_bag(tmp_path / 'in', 'mcap', frames=1, corrupt=False)
    argv = [source, tmp_path / 'out', '--params', PARAMS, '--topics', '/cam/camera_info']
    for override in tiny:
        argv += ['-p', override]
    assert segment(argv) == 1
    err = capsys.readouterr().err
    assert '/cam/camera_info are not image topics' in err
    assert '/cam/image, /front/image/compressed' in err
    assert not (tmp_path / 'out').exists()
    # Two image topics that would write the same outputs.
    stamp = START
    clash = write_bag(tmp_path / 'clash', 'sqlite3', [
        ('/cam/image', IMAGE, stamp, image_raw(PURE[class_map(0, 8, 8)], stamp)),
        ('/cam/image_rect', IMAGE, stamp, image_raw(PURE[class_map(0, 8, 8)], stamp))])
    argv[0] = clash
    argv = argv[:4]
    assert segment(argv + ['-p', tiny[0], '-p', tiny[1], '-p', tiny[2]]) == 1
    err = capsys.readouterr().err
    assert 'would both write /cam/segmentation/*' in err and '--topics' in err


def test_bad_input_and_settings_are_clear_errors(tmp_path, tiny, capsys):
    assert segment([tmp_path / 'missing', tmp_path / 'out']) == 1
    assert 'input bag' in capsys.readouterr().err
    source, _ = make_bag(tmp_path / 'in', 'mcap', frames=1, corrupt=False)
    assert segment([source, tmp_path / 'out', '--params', PARAMS, '-p', 'overlay_alpha:=3.0']) == 1
    assert 'overlay_alpha' in capsys.readouterr().err
    assert segment([source, tmp_path / 'out', '--params', PARAMS, '-p', 'device:=cpu',
                    '-p', 'model.backend:=torchscript',
                    '-p', f'model.weights:={tmp_path / "none.pt"}']) == 1
    assert 'cannot set up the model' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_output_topic_names():
    assert bag.output_topic('/cam/image', IMAGE, 'label') == '/cam/segmentation/label'
    assert bag.output_topic('/cam/image/compressed', COMPRESSED, 'color') == \
        '/cam/segmentation/color'
    assert bag.output_topic('/a/b/image_raw', IMAGE, 'label') == '/a/b/segmentation/label'
    assert bag.output_topic('/image', IMAGE, 'drivable') == '/segmentation/drivable'
    assert bag.output_topic('/image/compressed', COMPRESSED, 'label') == \
        '/segmentation/label'


def test_command_line_in_its_own_process(tmp_path, tiny):
    source, _ = make_bag(tmp_path / 'in', 'sqlite3', frames=2, corrupt=False)
    target = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'semseg_ros.tools.bag', str(source), str(target),
           '--params', str(PARAMS)]
    for override in tiny:
        cmd += ['-p', override]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '4 frames, 0 skipped, 0 errors' in done.stdout
    assert 'frames/s' in done.stdout
    assert len(read_bag(target)['/front/segmentation/label']) == 2


def test_real_espnet_on_camvid_frames(tmp_path, espnet_weights, camvid_val):
    from semseg_ros.core import classes
    from semseg_ros.core.engine import Frame
    from semseg_ros.core.engine import Segmenter
    from semseg_ros.core.models import create_model

    paths = sorted((camvid_val / 'images').glob('*.png'))[:3]
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    messages = []
    for i, rgb in enumerate(frames):
        stamp = START + i * 10**8
        messages.append(('/camvid/image', IMAGE, stamp, image_raw(rgb, stamp, 'camvid')))
        jpeg = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].reshape(-1)
        messages.append(('/camvid_jpeg/image/compressed', COMPRESSED, stamp,
                         compressed_raw(None, stamp, 'camvid', data=jpeg)))
    source = write_bag(tmp_path / 'in', 'mcap', messages)
    target = tmp_path / 'out'
    argv = [source, target, '--params', PARAMS, '-p', f'model.weights:={espnet_weights}',
            '-p', 'device:=cpu', '--batch', '2']
    assert segment(argv) == 0
    topics = read_bag(target)
    model = create_model('espnet', weights=str(espnet_weights))
    offline = Segmenter(model, classes.load('camvid'), device='cpu').labels(
        [Frame(rgb, 'rgb') for rgb in frames])
    stored = [stored_image(raw)[1] for _, raw, _ in topics['/camvid/segmentation/label']]
    assert len(stored) == 3
    for label, want in zip(stored, offline):
        assert np.array_equal(label, want)
    truth = cv2.imread(str(camvid_val / 'labels' / paths[0].name), cv2.IMREAD_UNCHANGED)
    valid = truth != 11
    assert (stored[0][valid] == truth[valid]).mean() > 0.85
    jpeg_label = stored_image(topics['/camvid_jpeg/segmentation/label'][0][1])[1]
    assert (jpeg_label[valid] == truth[valid]).mean() > 0.8

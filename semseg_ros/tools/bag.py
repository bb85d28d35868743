"""
Segment every image topic of a ROS 2 bag into a new bag, offline (no DDS, no `ros2 bag`).

    semseg-ros-bag INPUT OUTPUT [--params config/semseg.yaml] [--topics T ...]
                   [--storage mcap|sqlite3] [--include-inputs] [-p name:=value ...]

Bags are read and written with `rosbags` (sqlite3 and mcap). Each selected sensor_msgs/Image
or CompressedImage topic goes through the same Segmenter and settings as the live node (the
same params file), a few frames per forward pass. For an input topic `/cam/image` (or
`/cam/image/compressed`) the outputs are `/cam/segmentation/{label,color,overlay,drivable,
confidence}`: the names the node gives when it runs in the namespace `/cam`. Every output
message carries the input header and is written at the input's bag timestamp. With
`grid.enabled` and a `<namespace>/camera_info` topic in the bag, each frame also gives
`<namespace>/segmentation/drivable_grid` (nav_msgs/OccupancyGrid) and
`<namespace>/segmentation/obstacles` (sensor_msgs/PointCloud2), from the camera pose
parameters, as the node computes them (frames before the first camera_info use that one).

Undecodable messages are skipped, counted and reported. When the tool fails midway, the
partial output bag is removed. The exit status is 0 when OUTPUT is a complete bag, 1 when no
bag was written, 130 when interrupted.
"""

import argparse
from collections import namedtuple
import os
from pathlib import Path
import shutil
import signal
import sys
import time
import warnings

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer
from rosbags.typesys import get_typestore
from rosbags.typesys import Stores
from semseg_ros.core import ground
from semseg_ros.core import pipeline
from semseg_ros.core import settings as cfg
from semseg_ros.core.engine import Frame
from semseg_ros.grid import GRID_TOPIC
from semseg_ros.grid import OBSTACLES_TOPIC
from semseg_ros.io.image import compressed_to_array
from semseg_ros.io.image import image_to_array
from semseg_ros.io.image import ImageError
from tqdm import tqdm
import yaml

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED)
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
GRID = 'nav_msgs/msg/OccupancyGrid'
CLOUD = 'sensor_msgs/msg/PointCloud2'
ENCODINGS = {'color': 'rgb8', 'overlay': 'rgb8', 'drivable': 'mono8', 'confidence': 'mono8'}
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# rosbag2 metadata version 8: what Jazzy writes, readable by Jazzy and later.
BAG_VERSION = 8
# Pending messages (copies and frames) that force a flush even before a batch is full.
MAX_PENDING = 256
# Skip and error messages printed one by one; later ones only count.
MAX_WARNINGS = 10

Entry = namedtuple('Entry', 'timestamp copy raw source header frame info')
Entry.__doc__ = """A queued message: a copy, a frame to segment, camera info, or several."""

Source = namedtuple('Source', 'topic msgtype outputs ground')
Source.__doc__ = """A selected input topic, its output connections {name: connection}, its grid."""


class BagError(RuntimeError):
    """The tool cannot run or finish; the message says why."""


def default_params_file():
    """Return the installed config/semseg.yaml (ament index, then sys.prefix), or the source's."""
    path = cfg.find_params_file()
    if path is None:
        raise BagError('no config/semseg.yaml found (searched ' + ', '.join(
            map(str, cfg.params_file_candidates())) + '): pass --params')
    return path


def output_namespace(topic, msgtype):
    """Return the namespace of an input topic: '/cam' for /cam/image and /cam/image/compressed."""
    name = topic.rstrip('/')
    if msgtype == COMPRESSED and name.endswith('/compressed'):
        name = name[:-len('/compressed')]
    return name[:name.rfind('/')] if '/' in name else ''


def output_topic(topic, msgtype, name):
    """Return the output topic of one output name for an input topic."""
    return f'{output_namespace(topic, msgtype)}/segmentation/{name}'


def parse_override(text):
    """Parse 'name:=value' (the value as YAML, like ros2 run -p) into (name, value)."""
    name, sep, value = text.partition(':=')
    if not sep or not name.strip():
        raise BagError(f"parameter override {text!r}: expected 'name:=value'")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ''
    except yaml.YAMLError as exc:
        raise BagError(f'parameter override {text!r}: invalid value: {exc}') from None
    return name.strip(), '' if parsed is None else parsed


def load_settings(params, overrides=()):
    """Return Settings from a params YAML with name:=value overrides applied."""
    if not os.path.isfile(params):
        raise BagError(f'params file {params} does not exist')
    try:
        settings = cfg.load_params_file(params)
        if overrides:
            values = dict(settings.values)
            values.update(parse_override(text) for text in overrides)
            settings = cfg.from_values(values)
    except (cfg.SettingsError, yaml.YAMLError, OSError) as exc:
        raise BagError(f'{params}: {exc}') from None
    return settings


def image_message(typestore, array, encoding, header):
    """Serialize an (H, W) or (H, W, C) uint8/uint16 array as a sensor_msgs/Image (CDR)."""
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    channels = array.shape[2] if array.ndim == 3 else 1
    msg = typestore.types[IMAGE](
        header=header, height=height, width=width, encoding=encoding,
        is_bigendian=int(sys.byteorder == 'big' and array.itemsize > 1),
        step=width * channels * array.itemsize, data=array.reshape(-1).view(np.uint8))
    return typestore.serialize_cdr(msg, IMAGE)


def _stamped(typestore, header, frame_id):
    """Return a Header with the stamp of header and the given frame_id."""
    return typestore.types['std_msgs/msg/Header'](stamp=header.stamp, frame_id=frame_id)


def grid_message(typestore, grid, spec, header):
    """Serialize an int8 grid as a nav_msgs/OccupancyGrid (as semseg_ros.io.nav builds it)."""
    types = typestore.types
    point = types['geometry_msgs/msg/Point'](x=float(spec.origin_x), y=float(spec.origin_y),
                                             z=float(spec.ground_z))
    rotation = types['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0)
    origin = types['geometry_msgs/msg/Pose'](position=point, orientation=rotation)
    info = types['nav_msgs/msg/MapMetaData'](
        map_load_time=header.stamp, resolution=float(spec.resolution), width=spec.width,
        height=spec.height, origin=origin)
    msg = types[GRID](header=_stamped(typestore, header, spec.frame_id), info=info,
                      data=np.ascontiguousarray(grid, np.int8).reshape(-1))
    return typestore.serialize_cdr(msg, GRID)


def cloud_message(typestore, points, frame_id, header):
    """Serialize (N, 3) points as an unorganised float32 x, y, z sensor_msgs/PointCloud2."""
    types = typestore.types
    field = types['sensor_msgs/msg/PointField']
    points = np.ascontiguousarray(points, np.float32).reshape(-1, 3)
    msg = types[CLOUD](
        header=_stamped(typestore, header, frame_id), height=1, width=len(points),
        fields=[field(name=name, offset=4 * i, datatype=field.FLOAT32, count=1)
                for i, name in enumerate('xyz')],
        is_bigendian=sys.byteorder == 'big', point_step=12, row_step=12 * len(points),
        data=points.reshape(-1).view(np.uint8), is_dense=True)
    return typestore.serialize_cdr(msg, CLOUD)


class GroundOutput:
    """The drivable grid and obstacle cloud of one camera, from its camera_info and pose."""

    def __init__(self, settings, grid_connection, cloud_connection):
        self.spec = ground.GridSpec(**settings.grid)
        self.pose = ground.camera_pose(*settings.pose)
        self.boundary = settings.obstacles == 'boundary'
        self.connections = (grid_connection, cloud_connection)
        self.projector = None
        self.frames = 0

    def on_camera_info(self, msg):
        """Take a camera model (the lookup is rebuilt only when it changed)."""
        camera = ground.CameraModel.from_camera_info(msg)
        if self.projector is None:
            self.projector = ground.GroundProjector(camera, self.pose, self.spec)
        else:
            self.projector.update(camera=camera)

    def messages(self, typestore, header, drivable):
        """Return [(connection, data)] for one frame; [] before the first camera_info."""
        if self.projector is None:
            return []
        grid = self.projector.project(drivable)
        points = ground.obstacle_points(grid, self.spec, boundary=self.boundary)
        self.frames += 1
        return [(self.connections[0], grid_message(typestore, grid, self.spec, header)),
                (self.connections[1], cloud_message(typestore, points, self.spec.frame_id,
                                                    header))]


def remove_bag(path):
    """Delete an output bag (a file, or a folder that holds a rosbag2 bag or nothing)."""
    path = Path(path)
    if path.is_dir():
        if any(path.iterdir()) and not (path / 'metadata.yaml').exists() and not any(
                path.glob('*.mcap')) and not any(path.glob('*.db3')):
            raise BagError(f'{path} exists and is not a bag: not removing it')
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class BagSegmenter:
    """Stream an input bag through a Segmenter into an open Writer."""

    def __init__(self, segmenter, outputs, typestore, batch=4, warn=print):
        self.segmenter = segmenter
        self.outputs = tuple(outputs)
        self.compute = self.outputs
        self.typestore = typestore
        self.batch = max(1, int(batch))
        self.warn = warn
        self.writer = None
        self.pending = []
        self.frames = 0
        self.skipped = 0
        self.errors = 0
        self.warnings = 0
        self.per_topic = {}

    def _warn(self, text):
        self.warnings += 1
        if self.warnings <= MAX_WARNINGS:
            self.warn(text)
        elif self.warnings == MAX_WARNINGS + 1:
            self.warn('further skipped or failed messages are only counted')

    def decode(self, source, raw):
        """Return (header, Frame) of a raw message, or None (counted) if it cannot be decoded."""
        try:
            msg = self.typestore.deserialize_cdr(raw, source.msgtype)
        except Exception as exc:  # noqa: B902 - corrupt CDR raises many types
            self._skip(source, f'cannot deserialize: {type(exc).__name__}: {exc}')
            return None
        try:
            if source.msgtype == COMPRESSED:
                array, color = compressed_to_array(msg)
            else:
                array, color = image_to_array(msg)
        except ImageError as exc:
            self._skip(source, f'bad image: {exc}')
            return None
        return msg.header, Frame(array, color)

    def _skip(self, source, reason):
        self.skipped += 1
        self.per_topic.setdefault(source.topic, [0, 0, 0])[1] += 1
        self._warn(f'skipped a message on {source.topic}: {reason}')

    def add(self, timestamp, raw, copy=None, source=None, info=None):
        """
        Queue one input message: copy it, segment it (source) and/or read camera info.

        copy is the output connection of a copied topic, source the Source of an image topic,
        info a list of the GroundOutputs that use this camera_info message.
        """
        header = frame = None
        if source is not None:
            decoded = self.decode(source, raw)
            if decoded is not None:
                header, frame = decoded
        if info:
            try:
                info = (self.typestore.deserialize_cdr(raw, CAMERA_INFO), info)
            except Exception as exc:  # noqa: B902 - corrupt CDR raises many types
                self._warn(f'skipped a camera_info message: {type(exc).__name__}: {exc}')
                info = None
        if copy is None and frame is None and not info:
            return
        self.pending.append(Entry(timestamp, copy, raw, source, header, frame, info))
        frames = sum(entry.frame is not None for entry in self.pending)
        if frames >= self.batch or len(self.pending) >= MAX_PENDING:
            self.flush()

    def _segment(self, frames):
        """Return one result dict per frame, or None for each frame that failed."""
        try:
            return self.segmenter.process(frames, self.compute)
        except Exception as exc:  # noqa: B902 - one bad frame must not stop the bag
            if len(frames) == 1:
                self._warn(f'processing failed: {type(exc).__name__}: {exc}')
                return [None]
        return [self._segment([frame])[0] for frame in frames]

    def flush(self):
        """Segment the queued frames and write the queue in bag order."""
        entries, self.pending = self.pending, []
        todo = [entry for entry in entries if entry.frame is not None]
        results = iter(self._segment([entry.frame for entry in todo]) if todo else ())
        label_encoding = self.segmenter.classes.label_encoding
        for entry in entries:
            if entry.copy is not None:
                self.writer.write(entry.copy, entry.timestamp, entry.raw)
            if entry.info:
                self._camera_info(*entry.info)
            if entry.frame is None:
                continue
            result = next(results)
            counts = self.per_topic.setdefault(entry.source.topic, [0, 0, 0])
            if result is None:
                self.errors += 1
                counts[2] += 1
                continue
            for name, connection in entry.source.outputs.items():
                data = image_message(self.typestore, result[name],
                                     ENCODINGS.get(name, label_encoding), entry.header)
                self.writer.write(connection, entry.timestamp, data)
            if entry.source.ground is not None:
                self._ground(entry, result['drivable'])
            self.frames += 1
            counts[0] += 1

    def _ground(self, entry, drivable):
        try:
            messages = entry.source.ground.messages(self.typestore, entry.header, drivable)
        except ground.ProjectionError as exc:
            self._warn(f'no grid for a frame of {entry.source.topic}: {exc}')
            return
        for connection, data in messages:
            self.writer.write(connection, entry.timestamp, data)

    def _camera_info(self, msg, users):
        for user in users:
            try:
                user.on_camera_info(msg)
            except ground.ProjectionError as exc:
                self._warn(f'unusable camera_info: {exc}')


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='semseg-ros-bag',
        description='Segment the image topics of a ROS 2 bag (sqlite3 or mcap) into a new bag '
                    'with <namespace>/segmentation/* topics, offline.')
    parser.add_argument('input', help='input bag (folder, or a single .mcap/.db3 file)')
    parser.add_argument('output', help='output bag folder (must not exist, see --overwrite)')
    parser.add_argument('--params', default=None,
                        help='node params YAML (default: the installed config/semseg.yaml)')
    parser.add_argument('-p', '--param', dest='overrides', action='append', default=[],
                        metavar='NAME:=VALUE', help='override one parameter (repeatable)')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC',
                        help='image topics to segment (default: every Image and '
                             'CompressedImage topic)')
    parser.add_argument('--storage', choices=sorted(STORAGES), default='mcap',
                        help='output storage format (default: mcap)')
    parser.add_argument('--include-inputs', action='store_true',
                        help='copy every message of the input bag into the output too')
    parser.add_argument('--batch', type=int, default=4,
                        help='frames per forward pass (default: 4)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing output bag')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error('--batch must be at least 1')
    return args


def select_sources(reader, topics):
    """Return the image connections to segment, checking --topics against the bag."""
    images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
    available = sorted({c.topic for c in images})
    if topics:
        wanted = set(topics)
        missing = sorted(wanted - set(available))
        if missing:
            raise BagError(f'topic(s) {", ".join(missing)} are not image topics of the bag; '
                           f'image topics: {", ".join(available) or "none"}')
        images = [c for c in images if c.topic in wanted]
    if not images:
        everything = ', '.join(sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections}))
        raise BagError(f'the bag has no sensor_msgs/Image or CompressedImage topic; topics: '
                       f'{everything or "none"}')
    owners = {}
    for connection in images:
        namespace = output_namespace(connection.topic, connection.msgtype)
        other = owners.setdefault(namespace, connection.topic)
        if other != connection.topic:
            raise BagError(
                f'{other} and {connection.topic} would both write {namespace}/segmentation/*: '
                'select one of them with --topics')
    return images


def add_copy(writer, connection, typestore):
    """Add an output connection for a copied input topic; None if its type is unknown."""
    ext = connection.ext
    options = {'serialization_format': getattr(ext, 'serialization_format', 'cdr'),
               'offered_qos_profiles': getattr(ext, 'offered_qos_profiles', [])}
    if connection.msgdef.data and connection.digest:
        return writer.add_connection(connection.topic, connection.msgtype,
                                     msgdef=connection.msgdef.data, rihs01=connection.digest,
                                     **options)
    if connection.msgtype in typestore.types:
        return writer.add_connection(connection.topic, connection.msgtype, typestore=typestore,
                                     **options)
    return None


def run(args, log=print):
    """Segment args.input into args.output; return a summary dict."""
    source_path = Path(args.input)
    target = Path(args.output)
    if not source_path.exists():
        raise BagError(f'input bag {source_path} does not exist')
    if target.resolve() == source_path.resolve():
        raise BagError('the output bag must differ from the input bag')
    if target.exists() and not args.overwrite:
        raise BagError(f'output bag {target} exists already; choose another path or pass '
                       '--overwrite to replace it')
    settings = load_settings(args.params or default_params_file(), args.overrides)
    if not settings.outputs:
        raise BagError('every output is disabled (outputs.*: false): nothing to write')
    typestore = get_typestore(Stores.ROS2_JAZZY)
    # Frames are read-only views on the bag's bytes; the engine never writes to its input.
    warnings.filterwarnings('ignore', message='The given NumPy array is not writable')
    try:
        reader = Reader(source_path)
        reader.open()
    except Exception as exc:  # noqa: B902 - rosbags raises many types for unreadable bags
        raise BagError(f'cannot read input bag {source_path}: {exc}') from None
    try:
        images = select_sources(reader, args.topics)
        try:
            segmenter = pipeline.build_segmenter(
                settings, log=log, warn=lambda text: log(f'WARNING: {text}'))
        except Exception as exc:  # noqa: B902 - any model set-up failure is fatal here
            raise BagError(f'cannot set up the model (backend {settings.backend!r}): '
                           f'{type(exc).__name__}: {exc}') from None
        if target.exists():
            remove_bag(target)
        return _convert(args, reader, images, segmenter, settings, typestore, log)
    finally:
        reader.close()


def add_ground(writer, reader, namespace, settings, typestore, infos, log):
    """Return the GroundOutput of a camera namespace, or None (with the reason logged)."""
    if settings.grid is None:
        return None
    topic = f'{namespace}/camera_info'
    info = [c for c in reader.connections if c.topic == topic and c.msgtype == CAMERA_INFO]
    if not info:
        log(f'no grid for {namespace or "/"}: the bag has no {topic} (sensor_msgs/CameraInfo)')
        return None
    if settings.pose_source != 'parameters':
        log(f'no grid for {namespace or "/"}: camera_pose.source {settings.pose_source!r} is '
            'not supported offline; set camera_pose.source: parameters and camera_pose.*')
        return None
    output = GroundOutput(
        settings,
        writer.add_connection(f'{namespace}/{GRID_TOPIC}', GRID, typestore=typestore),
        writer.add_connection(f'{namespace}/{OBSTACLES_TOPIC}', CLOUD, typestore=typestore))
    for connection in info:
        infos.setdefault(connection.id, []).append(output)
    # Frames before the first camera_info use it too (drivers often publish it just after).
    messages = reader.messages(connections=info)
    try:
        for _, _, raw in messages:
            try:
                output.on_camera_info(typestore.deserialize_cdr(raw, CAMERA_INFO))
                break
            except Exception as exc:  # noqa: B902 - corrupt CDR, unusable camera_info
                log(f'{topic}: skipped a camera_info message: {type(exc).__name__}: {exc}')
    finally:
        messages.close()
    return output


def _convert(args, reader, images, segmenter, settings, typestore, log):
    target = Path(args.output)
    writer = Writer(target, version=BAG_VERSION, storage_plugin=STORAGES[args.storage])
    progress = None
    tool = BagSegmenter(segmenter, settings.outputs, typestore, args.batch,
                        warn=lambda text: (progress.write if progress else log)(text))
    try:
        writer.open()
    except Exception as exc:  # noqa: B902 - WriterError, OSError
        raise BagError(f'cannot create output bag {target}: {exc}') from None
    tool.writer = writer
    try:
        copies = {}
        if args.include_inputs:
            for connection in reader.connections:
                copy = add_copy(writer, connection, typestore)
                if copy is None:
                    log(f'not copying {connection.topic}: type {connection.msgtype} has no '
                        'definition in the bag or the Jazzy type store')
                copies[connection.id] = copy
        sources = {}
        infos = {}  # camera_info connection id -> [GroundOutput]
        for connection in images:
            namespace = output_namespace(connection.topic, connection.msgtype)
            outputs = {name: writer.add_connection(
                output_topic(connection.topic, connection.msgtype, name), IMAGE,
                typestore=typestore) for name in settings.outputs}
            grid = add_ground(writer, reader, namespace, settings, typestore, infos, log)
            sources[connection.id] = Source(connection.topic, connection.msgtype, outputs, grid)
            names = list(settings.outputs) + ([GRID_TOPIC.rsplit('/', 1)[1],
                                               OBSTACLES_TOPIC.rsplit('/', 1)[1]] if grid else [])
            log(f'{connection.topic} ({connection.msgtype.rsplit("/", 1)[-1]}, '
                f'{connection.msgcount} messages) -> {namespace}/segmentation/'
                f'{{{",".join(names)}}}')
        if infos:
            tool.compute = tuple(sorted(set(settings.outputs) | {'drivable'}))
        selected = reader.connections if args.include_inputs else images + [
            c for c in reader.connections if c.id in infos]
        total = sum(c.msgcount for c in images)
        progress = tqdm(total=total, unit='frame', dynamic_ncols=True,
                        disable=args.no_progress or None)
        start = time.perf_counter()
        for connection, timestamp, raw in reader.messages(connections=selected):
            source = sources.get(connection.id)
            tool.add(timestamp, raw, copies.get(connection.id), source, infos.get(connection.id))
            if source is not None:
                progress.update()
        tool.flush()
        seconds = time.perf_counter() - start
        progress.close()
        progress = None
        writer.close()
    except BaseException as exc:
        if progress is not None:
            progress.close()
        try:
            writer.abort()
        finally:
            remove_bag(target)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise BagError(f'failed after {tool.frames} frames: {type(exc).__name__}: {exc}; '
                       f'the partial output bag {target} was removed') from exc
    return {'frames': tool.frames, 'skipped': tool.skipped, 'errors': tool.errors,
            'seconds': seconds, 'topics': tool.per_topic, 'output': str(target),
            'storage': args.storage}


def summary_line(result):
    """Return the one-line summary of a run."""
    rate = result['frames'] / result['seconds'] if result['seconds'] > 0 else 0.0
    return (f"semseg-ros-bag: {result['frames']} frames, {result['skipped']} skipped, "
            f"{result['errors']} errors, {result['seconds']:.1f} s, {rate:.2f} frames/s "
            f"-> {result['output']} ({result['storage']})")


def _interrupt(signum, frame):
    """Turn SIGTERM into KeyboardInterrupt, so that the partial bag is removed."""
    raise KeyboardInterrupt


def run_tool(tool, work, args, errors):
    """
    Run work(args) for a bag-writing command; return (exit status, result or None).

    SIGTERM counts as Ctrl-C (the partial bag is removed by work); errors (an exception type
    or a tuple of them) print one line and give status 1, an interruption 130.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return 0, work(args)
    except errors as exc:
        print(f'{tool}: error: {exc}', file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print(f'{tool}: interrupted; no bag written ({args.output})', file=sys.stderr)
        return 130, None
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    """Run the command line tool; return the exit status."""
    args = parse_args(argv)
    status, result = run_tool('semseg-ros-bag', run, args, BagError)
    if status:
        return status
    for topic, (frames, skipped, errors) in sorted(result['topics'].items()):
        if skipped or errors:
            print(f'  {topic}: {frames} frames, {skipped} skipped, {errors} errors')
    print(summary_line(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())

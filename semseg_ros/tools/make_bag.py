"""
Make a ROS 2 bag from a video, a folder of images or one image (no ROS 2 install, no DDS).

    semseg-ros-make-bag SOURCE OUTPUT [--rate HZ] [--topic /camera/image_raw]
                        [--frame-id camera_optical_frame] [--encoding rgb8|bgr8|mono8]
                        [--compressed] [--width W] [--height H] [--frames N]
                        [--start SECONDS] [--no-camera-info] [--storage sqlite3|mcap]

Frames are read as the camera source reads them (folders in name order, videos frame by frame,
optional resize) and written with `rosbags` as sensor_msgs/Image (or, with --compressed,
sensor_msgs/CompressedImage JPEG on `<topic>/compressed`), one every 1/rate seconds from
--start (default: now), the bag timestamp equal to the header stamp. A sensor_msgs/CameraInfo
with the same header goes on the image topic's sibling `camera_info` (a nominal pinhole,
fx = fy = image width, centred: replace it for metric work such as the ground grid). The bag
plays with `ros2 bag play`, `semseg-ros-replay` and feeds `semseg-ros-bag`.

Exit status: 0 when OUTPUT is a complete bag, 1 otherwise (a partial bag is removed).
"""

import argparse
from pathlib import Path
import sys
import time

import cv2
import numpy as np
from rosbags.rosbag2 import Writer
from rosbags.typesys import get_typestore
from rosbags.typesys import Stores
from semseg_ros.core.names import camera_info_topic
from semseg_ros.tools.bag import BAG_VERSION
from semseg_ros.tools.bag import CAMERA_INFO
from semseg_ros.tools.bag import COMPRESSED
from semseg_ros.tools.bag import IMAGE
from semseg_ros.tools.bag import image_message
from semseg_ros.tools.bag import remove_bag
from semseg_ros.tools.bag import run_tool
from semseg_ros.tools.bag import STORAGES
from semseg_ros.tools.camera_source import FrameSource
from semseg_ros.tools.camera_source import SourceError
from tqdm import tqdm

ENCODINGS = ('rgb8', 'bgr8', 'mono8')
DEFAULT_RATE = 10.0
JPEG_QUALITY = 90


class MakeBagError(RuntimeError):
    """The bag cannot be made; the message says why."""


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='semseg-ros-make-bag', description=__doc__.strip().splitlines()[0])
    parser.add_argument('source', help='video file, folder of images (.png .jpg .jpeg .bmp, '
                                       'name order) or one image')
    parser.add_argument('output', help='output bag folder (must not exist)')
    parser.add_argument('--rate', type=float, default=None,
                        help='frames per second of the bag time line (default: the video rate, '
                             f'else {DEFAULT_RATE:g})')
    parser.add_argument('--topic', default='/camera/image_raw',
                        help='image topic (default /camera/image_raw; camera_info goes on its '
                             'sibling)')
    parser.add_argument('--frame-id', default='camera_optical_frame', help='header frame_id')
    parser.add_argument('--encoding', default='rgb8', choices=ENCODINGS,
                        help='Image encoding (default rgb8)')
    parser.add_argument('--compressed', action='store_true',
                        help='write sensor_msgs/CompressedImage (JPEG) on <topic>/compressed')
    parser.add_argument('--width', type=int, default=0, help='resize to this width')
    parser.add_argument('--height', type=int, default=0, help='resize to this height')
    parser.add_argument('--frames', type=int, default=0,
                        help='stop after this many frames (0: the whole source)')
    parser.add_argument('--start', type=float, default=None,
                        help='stamp of the first frame, seconds since the epoch (default: now)')
    parser.add_argument('--no-camera-info', action='store_true',
                        help='do not write camera_info')
    parser.add_argument('--storage', default='sqlite3', choices=sorted(STORAGES),
                        help='bag storage (default sqlite3, what Jazzy records by default)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def check_args(args):
    """Raise MakeBagError for values the tool cannot use."""
    if args.rate is not None and not 0 < args.rate <= 10000:
        raise MakeBagError(f'--rate must be in (0, 10000] Hz, got {args.rate:g}')
    if args.width < 0 or args.height < 0 or args.frames < 0:
        raise MakeBagError('--width, --height and --frames must not be negative')
    if args.start is not None and args.start < 0:
        raise MakeBagError(f'--start must be seconds since the epoch (>= 0), got {args.start}')
    if not args.topic.strip() or args.topic.endswith('/') or ' ' in args.topic:
        raise MakeBagError(f'--topic {args.topic!r} is not a topic name')
    if Path(args.output).exists():
        raise MakeBagError(f'output {args.output} exists: choose a new folder')


def video_rate(path):
    """Return the frame rate a video declares, or None."""
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return float(fps) if fps and 0 < fps <= 10000 else None


def camera_info_message(typestore, header, width, height):
    """Return a nominal pinhole CameraInfo (fx = fy = width, centred) for a frame size."""
    k = [float(width), 0.0, width / 2.0, 0.0, float(width), height / 2.0, 0.0, 0.0, 1.0]
    types = typestore.types
    roi = types['sensor_msgs/msg/RegionOfInterest'](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    msg = types[CAMERA_INFO](
        header=header, height=height, width=width, distortion_model='plumb_bob',
        d=np.zeros(5), k=np.array(k), r=np.eye(3).reshape(-1),
        p=np.array([k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]),
        binning_x=0, binning_y=0, roi=roi)
    return typestore.serialize_cdr(msg, CAMERA_INFO)


def encode(frame, encoding):
    """Return the RGB frame in the given Image encoding."""
    if encoding == 'bgr8':
        return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if encoding == 'mono8':
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return frame


def compressed_message(typestore, frame, encoding, header):
    """Return a JPEG sensor_msgs/CompressedImage of an RGB frame."""
    pixels = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if encoding == 'mono8' else \
        cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode('.jpg', pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise MakeBagError('JPEG encoding failed')
    fmt = 'mono8; jpeg compressed mono8' if encoding == 'mono8' else \
        'bgr8; jpeg compressed bgr8'
    msg = typestore.types[COMPRESSED](header=header, format=fmt, data=data.reshape(-1))
    return typestore.serialize_cdr(msg, COMPRESSED)


def make_bag(args, log=print):
    """Write the bag; return a summary dict. Raises MakeBagError."""
    check_args(args)
    try:
        source = FrameSource(args.source, args.width, args.height, loop=False,
                             warn=lambda text: log(f'warning: {text}'))
    except (SourceError, OSError) as exc:
        raise MakeBagError(str(exc)) from None
    rate = args.rate or (video_rate(args.source) if source.kind == 'video' else None) \
        or DEFAULT_RATE
    start_ns = round((time.time() if args.start is None else args.start) * 1e9)
    period_ns = 1e9 / rate
    typestore = get_typestore(Stores.ROS2_JAZZY)
    types = typestore.types
    target = Path(args.output)
    image_topic = args.topic if args.topic.startswith('/') else '/' + args.topic
    writer = Writer(target, version=BAG_VERSION, storage_plugin=STORAGES[args.storage])
    try:
        writer.open()
    except Exception as exc:  # noqa: B902 - WriterError, OSError
        source.close()
        raise MakeBagError(f'cannot create bag {target}: {exc}') from None
    frames = 0
    sizes = set()
    progress = tqdm(total=args.frames or None, unit='frame', dynamic_ncols=True,
                    disable=args.no_progress or None)
    try:
        if args.compressed:
            images = writer.add_connection(image_topic + '/compressed', COMPRESSED,
                                           typestore=typestore)
        else:
            images = writer.add_connection(image_topic, IMAGE, typestore=typestore)
        info = None if args.no_camera_info else writer.add_connection(
            camera_info_topic(image_topic), CAMERA_INFO, typestore=typestore)
        for frame in source:
            stamp_ns = start_ns + round(frames * period_ns)
            header = types['std_msgs/msg/Header'](
                stamp=types['builtin_interfaces/msg/Time'](
                    sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                frame_id=args.frame_id)
            height, width = frame.shape[:2]
            sizes.add((width, height))
            if args.compressed:
                data = compressed_message(typestore, frame, args.encoding, header)
            else:
                data = image_message(typestore, encode(frame, args.encoding), args.encoding,
                                     header)
            writer.write(images, stamp_ns, data)
            if info is not None:
                writer.write(info, stamp_ns, camera_info_message(typestore, header, width,
                                                                 height))
            frames += 1
            progress.update()
            if args.frames and frames >= args.frames:
                break
        progress.close()
        writer.close()
    except BaseException as exc:
        progress.close()
        try:
            writer.abort()
        finally:
            remove_bag(target)
        if isinstance(exc, (KeyboardInterrupt, MakeBagError)):
            raise
        raise MakeBagError(f'failed after {frames} frames: {type(exc).__name__}: {exc}; '
                           f'the partial bag {target} was removed') from exc
    finally:
        source.close()
    topics = [images.topic] + ([info.topic] if info is not None else [])
    return {'frames': frames, 'rate': rate, 'seconds': frames / rate, 'sizes': sorted(sizes),
            'topics': topics, 'output': str(target), 'storage': args.storage}


def summary_line(result):
    """Return the one-line summary of a run."""
    sizes = ', '.join(f'{w}x{h}' for w, h in result['sizes'])
    return (f"semseg-ros-make-bag: {result['frames']} frames ({sizes}) at {result['rate']:g} "
            f"Hz, {result['seconds']:.1f} s -> {result['output']} ({result['storage']}): "
            + ', '.join(result['topics']))


def main(argv=None):
    """Run the command line tool; return the exit status."""
    args = parse_args(argv)
    status, result = run_tool('semseg-ros-make-bag', make_bag, args, MakeBagError)
    if status:
        return status
    print(summary_line(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())

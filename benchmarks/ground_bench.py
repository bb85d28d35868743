"""
Benchmark the ground projection: lookup build once, then the per-frame grid and messages.

A camera 1.2 m up, 10 deg down, about 90 deg wide, with mild barrel distortion, looks at a
grid in front of the robot. Per frame: project the (H, W) drivable mask, build the
OccupancyGrid, collect the obstacle points and build the PointCloud2. Prints one markdown
table row (medians over the frames, in ms); --header prints the table header first.
"""

import argparse
import math
import time

import numpy as np
from semseg_ros.core import ground
from semseg_ros.io import nav
from std_msgs.msg import Header


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--width', type=int, default=1280, help='image width (px)')
    parser.add_argument('--height', type=int, default=720, help='image height (px)')
    parser.add_argument('--size', type=float, default=10.0,
                        help='grid side (m); the grid runs from 0 to SIZE ahead, +-SIZE/2 aside')
    parser.add_argument('--resolution', type=float, default=0.05, help='grid cell size (m)')
    parser.add_argument('--frames', type=int, default=300, help='frames to time')
    parser.add_argument('--torch', action='store_true',
                        help='pass the mask as a torch tensor (CPU) instead of numpy')
    parser.add_argument('--header', action='store_true', help='print the table header first')
    return parser.parse_args(argv)


def median_ms(samples):
    return 1e3 * float(np.median(samples))


def main(argv=None):
    args = parse_args(argv)
    fx = args.width / 2.0  # 90 deg horizontal field of view
    camera = ground.CameraModel.pinhole(args.width, args.height, fx, d=(-0.1, 0.01, 0, 0, 0))
    pose = ground.camera_pose(0.2, 0.0, 1.2, pitch=math.radians(10))
    spec = ground.GridSpec.from_extent(args.size, args.size, args.resolution,
                                       origin_x=0.0, origin_y=-args.size / 2,
                                       max_range=args.size)
    start = time.perf_counter()
    projector = ground.GroundProjector(camera, pose, spec)
    projector.indices((args.height, args.width))
    build = time.perf_counter() - start

    # A road ahead (lower middle of the image) with a non-drivable blob on it.
    rng = np.random.default_rng(0)
    mask = np.zeros((args.height, args.width), np.uint8)
    mask[args.height // 2:, args.width // 5:4 * args.width // 5] = 255
    if args.torch:
        import torch
        mask = torch.from_numpy(mask)
    header = Header(frame_id='camera_optical_frame')
    out = np.empty(spec.shape, np.int8)
    times = {'project': [], 'grid_msg': [], 'cloud': [], 'total': []}
    for _ in range(args.frames):
        y, x = rng.integers(args.height // 2, args.height - 40), rng.integers(0, args.width - 80)
        mask[y:y + 40, x:x + 80] = 0
        t0 = time.perf_counter()
        grid = projector.project(mask, out=out)
        t1 = time.perf_counter()
        nav.grid_to_msg(grid, spec, header)
        t2 = time.perf_counter()
        nav.points_to_cloud(ground.obstacle_points(grid, spec), header, spec.frame_id)
        t3 = time.perf_counter()
        mask[y:y + 40, x:x + 80] = 255
        for key, value in (('project', t1 - t0), ('grid_msg', t2 - t1), ('cloud', t3 - t2),
                           ('total', t3 - t0)):
            times[key].append(value)
    visible = projector.visible.mean()
    if args.header:
        print('| image | grid | visible cells | lookup build (once) | project | OccupancyGrid '
              '| obstacle cloud | per frame |')
        print('|---|---|---|---|---|---|---|---|')
    print(f'| {args.width}x{args.height}{" (torch)" if args.torch else ""} '
          f'| {args.size:g} m x {args.size:g} m @ {args.resolution:g} m '
          f'({spec.width}x{spec.height}) | {100 * visible:.0f} % '
          f'| {1e3 * build:.1f} ms | {median_ms(times["project"]):.3f} ms '
          f'| {median_ms(times["grid_msg"]):.3f} ms | {median_ms(times["cloud"]):.3f} ms '
          f'| {median_ms(times["total"]):.3f} ms |')


if __name__ == '__main__':
    main()

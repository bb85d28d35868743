"""Tiny synthetic segmentation data and a tiny model, drawn and built by the tests."""

from pathlib import Path

import cv2
import numpy as np
from semseg_ros.core import classes as class_sets
from semseg_ros.core.models.base import Preprocess, SegmentationModel
import torch
from torch import nn

# Class set of the synthetic scenes: id 0 background, three shapes, id 4 void.
CLASSES = {'name': 'shapes', 'ignore_id': 4, 'classes': [
    {'id': 0, 'name': 'ground', 'color': [90, 90, 90], 'drivable': True},
    {'id': 1, 'name': 'disc', 'color': [220, 40, 40]},
    {'id': 2, 'name': 'box', 'color': [40, 200, 40]},
    {'id': 3, 'name': 'bar', 'color': [40, 40, 230]},
    {'id': 4, 'name': 'void', 'color': [0, 0, 0]}]}
# Mean BGR color of each shape class (drawn with noise and a texture around it).
SHAPE_BGR = {1: (60, 70, 200), 2: (70, 190, 80), 3: (200, 120, 50)}


def shapes():
    """Return the ClassSet of the synthetic scenes."""
    return class_sets.from_dict(CLASSES, 'shapes')


def scene(rng, width=64, height=48):
    """Return (BGR image, label) of one scene: textured ground with a few shapes."""
    yy, xx = np.mgrid[0:height, 0:width]
    period = rng.uniform(4, 10)
    stripes = 25 * np.sin((xx * rng.uniform(-1, 1) + yy) * 2 * np.pi / period)
    base = rng.uniform(90, 150, 3)
    image = base[None, None, :] + stripes[:, :, None] + rng.normal(0, 12, (height, width, 3))
    label = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, 4))
        mask = np.zeros((height, width), np.uint8)
        cx, cy = int(rng.integers(8, width - 8)), int(rng.integers(8, height - 8))
        size = int(rng.integers(5, 11))
        if cls == 1:
            cv2.circle(mask, (cx, cy), size, 1, -1)
        elif cls == 2:
            cv2.rectangle(mask, (cx - size, cy - size), (cx + size, cy + size), 1, -1)
        else:
            cv2.rectangle(mask, (cx - 2 * size, cy - 2), (cx + 2 * size, cy + 2), 1, -1)
        color = np.array(SHAPE_BGR[cls], np.float64) + rng.normal(0, 15, 3)
        shaded = color[None, None, :] + rng.normal(0, 10, (height, width, 3))
        image = np.where(mask[:, :, None] > 0, shaded, image)
        label[mask > 0] = cls
    # A few void pixels on the border, as real labels have.
    label[:, :2] = 4
    return np.clip(image, 0, 255).astype(np.uint8), label


def draw_dataset(root, count, seed=0, width=64, height=48, prefix='seq'):
    """Write ROOT/images, ROOT/labels and ROOT/classes.yaml with ``count`` scenes."""
    import yaml

    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'labels').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, label = scene(rng, width, height)
        cv2.imwrite(str(root / 'images' / f'{prefix}_{i:05d}.png'), image)
        cv2.imwrite(str(root / 'labels' / f'{prefix}_{i:05d}.png'), label)
    (root / 'classes.yaml').write_text(yaml.safe_dump(CLASSES, sort_keys=False))
    return root


class TinyNet(SegmentationModel):
    """A small fully convolutional net (two scales), random init, logits at 1/2."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.num_classes = num_classes
        self.preprocess = Preprocess(channel_order='rgb', mean=(128.0, 128.0, 128.0),
                                     std=(64.0, 64.0, 64.0), scale=1.0, size_divisor=4)
        self.name = 'tinynet'
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24),
                                  nn.ReLU())
        self.context = nn.Sequential(nn.Conv2d(24, 24, 3, padding=2, dilation=2),
                                     nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Conv2d(48, num_classes, 1)

    def forward(self, x):
        """Return logits at the input size."""
        out = self.logits(x)
        return nn.functional.interpolate(out, size=x.shape[2:], mode='bilinear',
                                         align_corners=False)

    def logits(self, x):
        """Return logits at half the input size."""
        f = self.stem(x)
        return self.head(torch.cat([f, self.context(f)], 1))


def build(options):
    """Build a TinyNet for the model registry (test backend 'tinynet')."""
    from semseg_ros.core import classes as sets

    weights = options.get('weights') or ''
    classes = sets.load(options['classes'])
    net = TinyNet(len(classes))
    if weights:
        net.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
    net.class_set = options['classes']
    return net.eval()


def base_params(folder, classes_yaml, weights):
    """Write a node params file naming the test backend 'tinynet'; return its path."""
    import yaml

    path = Path(folder) / 'base.yaml'
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': {'model': {
        'backend': 'tinynet', 'weights': str(weights),
        'options': yaml.safe_dump({'classes': str(classes_yaml)})}, 'device': 'cpu',
        'warmup': False}}}))
    return path

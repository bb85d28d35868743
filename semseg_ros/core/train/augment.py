"""
Training samples: augmentation (scale and crop, flip, color jitter) and the model's input.

Every sample is drawn from a random generator seeded by (seed, epoch, index), so a run is
repeatable whatever the number of loader workers. Inputs are normalised as the engine does
(``y = (x - mean) / std * scale`` in the model's channel order), at the training size.
"""

import cv2
import numpy as np
from semseg_ros.core.train.dataset import read_image
from semseg_ros.core.train.dataset import read_label
import torch

# Target value of pixels the loss skips (void class, padding).
IGNORE = -1


def to_input(bgr, preprocess):
    """Return a (3, H, W) float32 tensor of a BGR uint8 image, normalised for the model."""
    image = bgr if preprocess.channel_order == 'bgr' else bgr[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std * float(preprocess.scale)


def targets(label, ignore_id):
    """Return int64 targets with the void class set to IGNORE."""
    target = label.astype(np.int64)
    if ignore_id is not None:
        target[target == ignore_id] = IGNORE
    return target


def jitter(image, rng, strength):
    """Change brightness, contrast and saturation of a BGR uint8 image by up to ``strength``."""
    if strength <= 0:
        return image
    x = image.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    saturation = 1.0 + rng.uniform(-strength, strength)
    x = gray + (x - gray) * saturation
    contrast = 1.0 + rng.uniform(-strength, strength)
    x = (x - x.mean()) * contrast + x.mean()
    x = x + 255.0 * rng.uniform(-strength, strength) * 0.5
    return np.clip(x, 0, 255).astype(np.uint8)


def scale_crop(image, label, size, rng, scale_range):
    """
    Resize by a random factor around the training size, then crop (or pad) to ``size``.

    The factor is relative to the one that fits the image's height to the training height.
    Padding gets black pixels and IGNORE targets.
    """
    width, height = size
    base = height / image.shape[0]
    factor = base * rng.uniform(*scale_range)
    h = max(8, int(round(image.shape[0] * factor)))
    w = max(8, int(round(image.shape[1] * factor)))
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    pad_h, pad_w = max(0, height - h), max(0, width - w)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
    top = int(rng.integers(0, label.shape[0] - height + 1))
    left = int(rng.integers(0, label.shape[1] - width + 1))
    return (image[top:top + height, left:left + width],
            label[top:top + height, left:left + width])


class SegmentationSamples(torch.utils.data.Dataset):
    """
    (image, label) pairs as model inputs and targets.

    ``train=True``: augmented crops of ``size`` (flip, scale, jitter). ``train=False``: the
    image resized to ``size`` (as the engine does) and the label at its own size.
    """

    def __init__(self, items, classes, preprocess, size, train=True, seed=0,
                 scale_range=(0.75, 1.5), flip=True, color=0.25):
        self.items = list(items)
        self.classes = classes
        self.preprocess = preprocess
        self.size = tuple(int(v) for v in size)
        self.train = bool(train)
        self.seed = int(seed)
        self.scale_range = tuple(scale_range)
        self.flip = bool(flip)
        self.color = float(color)
        self.epoch = 0

    def __len__(self):
        """Return the number of samples."""
        return len(self.items)

    def __getitem__(self, index):
        """Return (input (3, h, w) float, target (H, W) int64)."""
        image_path, label_path = self.items[index]
        image = read_image(image_path)
        label = targets(read_label(label_path, self.classes), self.classes.ignore_id)
        if label.shape != image.shape[:2]:
            raise ValueError(f'{label_path}: label size differs from its image')
        if not self.train:
            resized = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
            return to_input(resized, self.preprocess), torch.from_numpy(label)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, label = scale_crop(image, label, self.size, rng, self.scale_range)
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = jitter(np.ascontiguousarray(image), rng, self.color)
        return (to_input(image, self.preprocess),
                torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)))

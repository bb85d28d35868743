"""Real weights on real labelled images: ESPNet through the engine on the CamVid val split."""

import cv2
import numpy as np
import pytest
from semseg_ros.core import classes
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.metrics import ConfusionMatrix
from semseg_ros.core.models import create_model

REFERENCE_MIOU = 0.7010  # the original implementation on these 101 images (MANIFEST)
BATCH = 4


def read_split(folder):
    images = sorted((folder / 'images').glob('*.png'))
    assert len(images) == 101
    for path in images:
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label = cv2.imread(str(folder / 'labels' / path.name), cv2.IMREAD_UNCHANGED)
        yield rgb, label


def test_espnet_camvid_miou(espnet_weights, camvid_val):
    camvid = classes.load('camvid')
    model = create_model('espnet', weights=str(espnet_weights), download=False)
    seg = Segmenter(model, camvid, device='cpu')
    matrix = ConfusionMatrix(len(camvid) - 1, ignore_index=camvid.ignore_id)
    pairs = list(read_split(camvid_val))
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start:start + BATCH]
        outputs = seg.process([Frame(rgb, 'rgb') for rgb, _ in chunk], ('label', 'drivable'))
        for (rgb, truth), out in zip(chunk, outputs):
            assert out['label'].shape == truth.shape
            matrix.update(out['label'].astype(np.int64), truth.astype(np.int64))
    iou = matrix.iou()
    print(f'CamVid val (101 images): pixel accuracy {matrix.pixel_accuracy():.4f}, '
          f'mIoU {matrix.mean_iou():.4f}, road IoU {iou[3]:.4f}')
    assert abs(matrix.mean_iou() - REFERENCE_MIOU) <= 0.01
    assert iou[camvid.index('Road')] >= 0.95


# Cityscapes train id -> CamVid id (MANIFEST); terrain, train and background count as wrong.
CITYSCAPES_TO_CAMVID = np.array(
    [3, 4, 1, 1, 7, 2, 6, 6, 5, 11, 0, 9, 10, 8, 8, 8, 11, 10, 10, 11], np.int64)
REFERENCE_ACCURACY_V2 = 0.9036


@pytest.mark.parametrize('upsample', ['labels', 'logits'])
def test_espnetv2_cityscapes_on_camvid(espnetv2_weights, camvid_val, upsample):
    city = classes.load('cityscapes')
    model = create_model('espnetv2', weights=str(espnetv2_weights), download=False)
    # 'labels' is the reference protocol: argmax at 1024x512, labels resized back with
    # nearest. 'logits' (the node's default) resizes the decoder's 512x256 logits bilinearly.
    seg = Segmenter(model, city, device='cpu', upsample=upsample)
    matrix = ConfusionMatrix(11, ignore_index=11)
    pairs = list(read_split(camvid_val))
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start:start + BATCH]
        outputs = seg.process([Frame(rgb, 'rgb') for rgb, _ in chunk], ('label',))
        for (_, truth), out in zip(chunk, outputs):
            mapped = CITYSCAPES_TO_CAMVID[out['label'].astype(np.int64)]
            matrix.update(mapped, truth.astype(np.int64))
    iou = matrix.iou()
    print(f'ESPNetv2 Cityscapes on CamVid val ({upsample}): pixel accuracy '
          f'{matrix.pixel_accuracy():.4f}, mIoU {matrix.mean_iou():.4f}, road IoU {iou[3]:.4f}')
    assert abs(matrix.pixel_accuracy() - REFERENCE_ACCURACY_V2) <= 0.01
    assert iou[3] >= 0.95

"""Real weights on real labelled images: ESPNet through the engine on the CamVid val split."""

from conftest import assets_or_skip
import cv2
import numpy as np
import pytest
from semseg_ros.core import classes
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.metrics import ConfusionMatrix
from semseg_ros.core.models import create_model
from semseg_ros.core.models import espnetv2 as espnetv2_model
import torch

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


class OneForward:
    """
    ESPNetv2 seen by two Segmenters: the decoder runs once per batch, both protocols use it.

    Both engines preprocess a frame identically, so the second asks for the logits of a batch
    equal to the first's: they come from the cache. forward() is the model's own (the
    decoder's logits, resized with aligned corners), as the 'labels' protocol takes it.
    """

    def __init__(self, model):
        self.model = model
        self.num_classes = model.num_classes
        self.name = model.name
        self.forwards = 0
        self._batch = None
        self._logits = None

    def logits(self, batch):
        if self._batch is None or self._batch.shape != batch.shape or \
                not torch.equal(self._batch, batch):
            self._batch = batch.clone()
            self._logits = self.model.logits(batch)
            self.forwards += 1
        return self._logits

    def __call__(self, batch):
        return espnetv2_model._resize(self.logits(batch), batch.shape[2:])


@pytest.fixture(scope='module')
def espnetv2_confusion():
    """Confusion matrices of ESPNetv2 on the 101 images, per upsample mode, from one pass."""
    espnetv2_weights = assets_or_skip('models', 'espnetv2_s_2.0_city_1024x512.pth')
    camvid_val = assets_or_skip('camvid_val')
    city = classes.load('cityscapes')
    model = create_model('espnetv2', weights=str(espnetv2_weights), download=False)
    shared = OneForward(model)
    # 'labels' is the reference protocol: argmax at 1024x512, labels resized back with
    # nearest. 'logits' (the node's default) resizes the decoder's 512x256 logits bilinearly.
    engines = {}
    for mode in ('labels', 'logits'):
        engines[mode] = Segmenter(model, city, device='cpu', upsample=mode, warmup=False)
        engines[mode].model = shared
    matrices = {mode: ConfusionMatrix(11, ignore_index=11) for mode in engines}
    pairs = list(read_split(camvid_val))
    for rgb, truth in pairs:  # one frame at a time, as the engine runs on the CPU
        for mode, seg in engines.items():
            label = seg.process([Frame(rgb, 'rgb')], ('label',))[0]['label']
            matrices[mode].update(CITYSCAPES_TO_CAMVID[label.astype(np.int64)],
                                  truth.astype(np.int64))
    assert shared.forwards == len(pairs)  # one decoder pass per image, for both protocols
    return matrices


@pytest.mark.parametrize('upsample', ['labels', 'logits'])
def test_espnetv2_cityscapes_on_camvid(espnetv2_confusion, upsample):
    matrix = espnetv2_confusion[upsample]
    iou = matrix.iou()
    print(f'ESPNetv2 Cityscapes on CamVid val ({upsample}): pixel accuracy '
          f'{matrix.pixel_accuracy():.4f}, mIoU {matrix.mean_iou():.4f}, road IoU {iou[3]:.4f}')
    assert abs(matrix.pixel_accuracy() - REFERENCE_ACCURACY_V2) <= 0.01
    assert iou[3] >= 0.95

"""
Export a trained model as a model directory, and gate it against the base model.

The directory holds ``model.ts`` (the model's logits, traced to TorchScript at the training
size, with the semseg_ros metadata inside) and ``model.yaml`` (the model card: format, classes,
preprocessing, provenance), so the node, the bag tool and the eval tool load it with
``model.backend: auto`` and ``model.weights: OUT``.

The gate runs the base model and the trained model through the same engine (Segmenter) as the
node on the validation split and compares their mIoU on the dataset's classes; the base
model's predictions count through the class-name mapping.
"""

from datetime import datetime, timezone
from pathlib import Path
import warnings

import cv2
import numpy as np
from semseg_ros.core.engine import Frame
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.metrics import ConfusionMatrix
from semseg_ros.core.models.common import dump_metadata
from semseg_ros.core.train.dataset import read_image
from semseg_ros.core.train.dataset import read_label
import torch

MODEL_FILE = 'model.ts'
META_FILE = 'semseg_ros.yaml'


class LogitsModule(torch.nn.Module):
    """Expose a SegmentationModel's ``logits`` (its own resolution) as ``forward``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        """Return the logits of a normalised batch."""
        return self.model.logits(batch)


def preprocess_dict(preprocess, size):
    """Return the card's preprocess mapping for a model run at ``size`` (width, height)."""
    return {'channel_order': preprocess.channel_order,
            'mean': [float(v) for v in preprocess.mean],
            'std': [float(v) for v in preprocess.std], 'scale': float(preprocess.scale),
            'input_size': [int(size[0]), int(size[1])],
            'size_divisor': int(preprocess.size_divisor), 'resize': preprocess.resize}


def export_model_dir(model, classes, out, size, provenance=None):
    """
    Write OUT/model.ts and OUT/model.yaml for ``model`` run at ``size``; return the card path.

    The traced module is checked against the eager model on a random input.
    """
    from semseg_ros.core.models.base import Preprocess
    from semseg_ros.core.models.card import CARD_FILE, ModelCard, write_card

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in size)
    module = LogitsModule(model).cpu().eval()
    example = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(example)
    with torch.no_grad(), warnings.catch_warnings():
        # Sizes computed from the input become constants: the card fixes the input size.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    pre = preprocess_dict(model.preprocess, (width, height))
    spec = Preprocess(pre['channel_order'], tuple(pre['mean']), tuple(pre['std']),
                      pre['scale'], (width, height), pre['size_divisor'], pre['resize'])
    meta = dump_metadata(len(classes), spec, None)
    path = out / MODEL_FILE
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # TorchScript is deprecated, still loads
        torch.jit.save(traced, str(path), _extra_files={META_FILE: meta})
        loaded = torch.jit.load(str(path), map_location='cpu')
    with torch.inference_mode():
        got = loaded(example)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise RuntimeError(f'the traced model differs from the trained one (max difference '
                           f'{(got - expected).abs().max().item():.3g}); it is not exported')
    provenance = dict(provenance or {})
    provenance.setdefault('created', datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
    provenance.setdefault('tool', 'semseg-ros-train')
    card = ModelCard(file=MODEL_FILE, format='torchscript', num_classes=len(classes),
                     classes=classes.to_dict(), preprocess=pre,
                     output={'kind': 'logits', 'name': None}, options={},
                     provenance=provenance)
    card_path = out / CARD_FILE
    write_card(card, card_path)
    return card_path


def engine_labels(segmenter, image_paths):
    """Return the engine's label map (uint8/uint16) of each image (BGR files)."""
    labels = []
    for path in image_paths:
        out = segmenter.process([Frame(read_image(path), 'bgr')], ('label',))[0]
        labels.append(out['label'])
    return labels


def gate(base_model, base_classes, trained_model, classes, items, table, size, device='cpu',
         margin=0.0, mosaic_rows=4, trained_classes=None, trained_table=None):
    """
    Score base and trained models on (image, label) ``items`` through the engine.

    ``table``: base id -> dataset id (-1: counts as wrong). A trained model with other classes
    than the dataset's (YOLO: no void class) gives ``trained_classes`` and ``trained_table``
    (trained id -> dataset id). Returns a dict with per-class IoU
    of both, their mIoU and pixel accuracy, ``passed`` (trained mIoU > base mIoU + margin)
    and ``mosaic`` (image | truth | base | trained, BGR).
    """
    lut = np.asarray(table, np.int64)
    lut = np.where(lut < 0, len(classes), lut)
    own = np.arange(len(classes)) if trained_table is None else np.asarray(trained_table)
    base = Segmenter(base_model, base_classes, device=device, warmup=False)
    trained = Segmenter(trained_model, trained_classes or classes, device=device,
                        input_size=size, warmup=False)
    matrices = {'base': ConfusionMatrix(len(classes), classes.ignore_id),
                'trained': ConfusionMatrix(len(classes), classes.ignore_id)}
    rows = []
    for image_path, label_path in items:
        image = read_image(image_path)
        truth = read_label(label_path, classes).astype(np.int64)
        frame = [Frame(image, 'bgr')]
        predicted = {
            'base': lut[base.process(frame, ('label',))[0]['label'].astype(np.int64)],
            'trained': own[trained.process(frame, ('label',))[0]['label'].astype(np.int64)]}
        for key, prediction in predicted.items():
            matrices[key].update(prediction, truth)
        if len(rows) < mosaic_rows:
            colors = np.vstack([classes.colors, np.full((1, 3), 255, np.uint8)])
            tiles = [image] + [colors[np.clip(x, 0, len(classes))][:, :, ::-1]
                               for x in (truth, predicted['base'], predicted['trained'])]
            rows.append(np.hstack(tiles))
    result = {'classes': [n for i, n in enumerate(classes.names) if i != classes.ignore_id],
              'images': len(items)}
    for key, matrix in matrices.items():
        iou = matrix.iou()
        result[key] = {
            'miou': float(matrix.mean_iou()), 'pixel_accuracy': float(matrix.pixel_accuracy()),
            'iou': {n: (None if np.isnan(v) else float(v))
                    for i, (n, v) in enumerate(zip(classes.names, iou))
                    if i != classes.ignore_id}}
    result['margin'] = float(margin)
    result['passed'] = bool(result['trained']['miou'] > result['base']['miou'] + margin)
    result['mosaic'] = mosaic_picture(rows) if rows else None
    return result


def mosaic_picture(rows, height=120):
    """Return the gate rows scaled to one height with a caption strip (BGR)."""
    scaled = []
    for row in rows:
        scale = height / row.shape[0]
        scaled.append(cv2.resize(row, (int(row.shape[1] * scale), height),
                                 interpolation=cv2.INTER_NEAREST))
    width = max(r.shape[1] for r in scaled)
    caption = np.full((18, width, 3), 255, np.uint8)
    for i, text in enumerate(('image', 'truth', 'base', 'trained')):
        cv2.putText(caption, text, (4 + i * width // 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([caption] + [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)),
                                         constant_values=255) for r in scaled])


def gate_table(result):
    """Return the gate result as a markdown table (per-class IoU, mIoU, pixel accuracy)."""
    lines = ['| class | base IoU | trained IoU |', '|---|---:|---:|']

    def text(value):
        return 'n/a' if value is None else f'{value:.4f}'

    for name in result['classes']:
        lines.append(f'| {name} | {text(result["base"]["iou"][name])} | '
                     f'{text(result["trained"]["iou"][name])} |')
    for key, label in (('miou', 'mIoU'), ('pixel_accuracy', 'pixel accuracy')):
        lines.append(f'| **{label}** | **{result["base"][key]:.4f}** | '
                     f'**{result["trained"][key]:.4f}** |')
    verdict = 'passed' if result['passed'] else 'FAILED'
    lines.append('')
    lines.append(f'Gate {verdict}: trained mIoU {result["trained"]["miou"]:.4f} vs base '
                 f'{result["base"]["miou"]:.4f} (+ margin {result["margin"]:.4f}) on '
                 f'{result["images"]} val images, through the node\'s engine.')
    return '\n'.join(lines)

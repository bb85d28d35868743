"""
Ultralytics backend: YOLO semantic (YOLO26 -sem) and instance-segmentation models.

Semantic models (task ``semantic``, e.g. ``yolo26n-sem``, Cityscapes-trained) give class
logits at 1/8 of the input; they are used as they are (the engine upsamples them), with the
model's own class names. Instance models (YOLOv8-seg, YOLO11-seg, YOLO26-seg) are handled as
follows.

The detections of one forward pass (boxes, class scores, mask coefficients and prototypes)
are decoded here on the device: score threshold ``conf``, class-wise NMS (``iou``) unless the
head is end-to-end, at most ``max_det`` instances, masks cropped to their boxes. The
instances are then merged into one semantic map by class (see ``merge_instances``): output
channel 0 is the background and channel c + 1 the model's class c, so a COCO model gives the
'coco' class set (81 classes). Logits come at the resolution of the mask prototypes (1/4 of
the input); the engine upsamples them.

Weights: a ``.pt`` file saved by Ultralytics (a pickled model: load only files you trust) or
a model config such as ``yolov8n-seg.yaml`` (random weights; for tests). Nothing is
downloaded (``YOLO_OFFLINE=1`` is set unless already set, so that the library does not probe
the network). Input: RGB scaled to 0..1, any size padded to a multiple of the model stride.

Install: ``ultralytics`` requires ``opencv-python``, which would replace the OpenCV 4 build
that cv_bridge needs; install it with ``pip install --no-deps -r requirements-nodeps.txt``
(its other dependencies are in requirements.txt).
"""

import os

from semseg_ros.core import classes as class_sets
from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.common import class_set_for, require
from semseg_ros.core.models.registry import check_options
import torch
from torchvision.ops import batched_nms

DEFAULTS = {'weights': '', 'download': True, 'conf': 0.25, 'iou': 0.7, 'max_det': 100,
            'imgsz': 0, 'allow_pickle': False}
MASK_THRESHOLD = 0.5
MIN_MARGIN = 1e-3
TINY = 1e-6


def merge_instances(masks, scores, labels, num_classes):
    """
    Merge instance masks into (num_classes, h, w) log-probabilities of one semantic map.

    masks: (k, h, w) mask probabilities; scores: (k,) detection scores; labels: (k,) output
    channels 1..num_classes-1 (channel 0 is the background). A pixel takes the class of the
    instance with the highest mask x score among those whose mask is above 0.5, with that
    product as its probability; any other pixel is background with probability
    1 - max(mask x score). The winning channel holds the probability and the others share the
    rest, so argmax gives the label and softmax gives the probability back as confidence.
    """
    h, w = masks.shape[1:]
    device = masks.device
    if masks.shape[0] == 0:
        value = torch.ones(h, w, device=device)
        label = torch.zeros(h, w, dtype=torch.long, device=device)
    else:
        weighted = masks * scores.view(-1, 1, 1)
        inside = torch.where(masks > MASK_THRESHOLD, weighted, torch.zeros_like(weighted))
        best, which = inside.max(dim=0)
        found = best > 0
        label = torch.where(found, labels.long()[which], torch.zeros_like(which))
        value = torch.where(found, best, 1.0 - weighted.max(dim=0).values)
    value = value.clamp(1.0 / num_classes + MIN_MARGIN, 1.0 - TINY)
    rest = ((1.0 - value) / (num_classes - 1)).clamp_min(TINY)
    logits = rest.log().unsqueeze(0).repeat(num_classes, 1, 1)
    logits.scatter_(0, label.unsqueeze(0), value.log().unsqueeze(0))
    return logits


def crop_to_boxes(masks, boxes):
    """Zero the mask pixels outside each instance's box (x1, y1, x2, y2 in mask pixels)."""
    k, h, w = masks.shape
    xs = torch.arange(w, device=masks.device, dtype=boxes.dtype).view(1, 1, w)
    ys = torch.arange(h, device=masks.device, dtype=boxes.dtype).view(1, h, 1)
    x1, y1, x2, y2 = (boxes[:, i].view(k, 1, 1) for i in range(4))
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    return masks * inside


class YoloSemanticModel(SegmentationModel):
    """A YOLO semantic-segmentation network: class logits at 1/8 of the input."""

    def __init__(self, net, nc, preprocess, class_set=None, classes=None, name='yolo'):
        super().__init__()
        self.net = net
        self.nc = int(nc)
        # A one-class model gives one score map (class where > 0): background + the class.
        self.num_classes = max(2, self.nc)
        self.preprocess = preprocess
        self.class_set = class_set
        self.classes = classes
        self.name = name

    def forward(self, batch):
        """Return (N, num_classes, h, w) logits at the head's resolution."""
        out = self.net(batch)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if self.nc == 1:
            out = torch.cat([torch.zeros_like(out), out], dim=1)
        return out


class YoloSegModel(SegmentationModel):
    """A YOLO segmentation network whose instances are merged into semantic logits."""

    def __init__(self, net, nc, preprocess, conf=0.25, iou=0.7, max_det=100, class_set=None,
                 classes=None, name='yolo'):
        super().__init__()
        self.net = net
        self.nc = int(nc)
        self.num_classes = self.nc + 1
        self.preprocess = preprocess
        self.conf = float(conf)
        self.iou = float(iou)
        self.max_det = int(max_det)
        self.class_set = class_set
        self.classes = classes
        self.name = name

    def forward(self, batch):
        """Return (N, nc + 1, h, w) semantic logits at the prototype resolution."""
        out = self.net(batch)
        first = out[0]
        preds, proto = first if isinstance(first, (tuple, list)) else (out[0], out[1])
        head = self.net.model[-1]
        end2end = bool(getattr(head, 'end2end', False))
        size = batch.shape[2:]
        return torch.stack([self._one(preds[i].float(), proto[i].float(), size, end2end)
                            for i in range(batch.shape[0])])

    def _detections(self, pred, end2end):
        """Return boxes (x1, y1, x2, y2 in input pixels), scores, classes, mask coefficients."""
        if end2end:  # (k, 6 + nm): x1, y1, x2, y2, score, class, coefficients
            det = pred[pred[:, 4] >= self.conf][:self.max_det]
            return det[:, :4], det[:, 4], det[:, 5].long(), det[:, 6:]
        pred = pred.transpose(0, 1)  # (anchors, 4 + nc + nm): cx, cy, w, h, scores, coefs
        scores, cls = pred[:, 4:4 + self.nc].max(dim=1)
        keep = scores >= self.conf
        pred, scores, cls = pred[keep], scores[keep], cls[keep]
        xy, wh = pred[:, :2], pred[:, 2:4] / 2
        boxes = torch.cat([xy - wh, xy + wh], dim=1)
        order = batched_nms(boxes, scores, cls, self.iou)[:self.max_det]
        return boxes[order], scores[order], cls[order], pred[order, 4 + self.nc:]

    def _one(self, pred, proto, size, end2end):
        boxes, scores, cls, coefs = self._detections(pred, end2end)
        nm, ph, pw = proto.shape
        masks = torch.sigmoid(coefs @ proto.view(nm, -1)).view(-1, ph, pw)
        scale = boxes.new_tensor([pw / size[1], ph / size[0], pw / size[1], ph / size[0]])
        masks = crop_to_boxes(masks, boxes * scale)
        return merge_instances(masks, scores, cls + 1, self.num_classes)


def _class_sets(names):
    """Return (class_set, ClassSet) for background + the model's class names."""
    if len(names) == 80 and all(str(n) == str(i) for i, n in enumerate(names)):
        coco = class_sets.load('coco')  # an unnamed 80-class model: COCO order
        return 'coco', coco
    return class_set_for(['background'] + list(names), 'yolo', 'ultralytics model names')


def build(options):
    """
    Load a YOLO semantic or instance segmentation model.

    Options: ``weights`` (.pt file or model .yaml; required), ``conf`` (score threshold,
    0.25), ``iou`` (NMS overlap, 0.7), ``max_det`` (instances per frame, 100) (these three
    for instance models), ``imgsz``
    (square input size the model runs at; 0 = the frame's own size, padded to the stride).
    ``download`` is accepted and ignored: nothing is downloaded. A ``.pt`` file is a Python
    pickle that can run code when loaded: it is refused unless ``allow_pickle`` is true
    (parameter model.allow_pickle), which you set only for files you trust.
    """
    opts = check_options('ultralytics', options, DEFAULTS)
    path = os.path.expanduser(str(opts['weights'] or ''))
    if not path:
        raise ModelError('ultralytics backend: parameter model.weights must name a YOLO '
                         'segmentation .pt file (e.g. yolov8n-seg.pt) or model .yaml')
    is_config = path.endswith(('.yaml', '.yml'))
    if not is_config and not os.path.isfile(path):
        raise ModelError(f'YOLO model file {path} does not exist (nothing is downloaded: '
                         'place the .pt file there)')
    if not is_config and not opts['allow_pickle']:
        raise ModelError(f'{path} is an Ultralytics .pt file, a Python pickle that can run '
                         'code when loaded: set model.allow_pickle: true if you trust it')
    if not 0.0 <= float(opts['conf']) <= 1.0 or not 0.0 < float(opts['iou']) <= 1.0:
        raise ModelError('ultralytics backend: conf must be in 0..1 and iou in (0, 1]')
    if int(opts['max_det']) < 1:
        raise ModelError('ultralytics backend: max_det must be at least 1')
    os.environ.setdefault('YOLO_OFFLINE', '1')
    ultra = require('ultralytics', 'ultralytics')
    try:
        yolo = ultra.YOLO(path)
    except Exception as exc:  # noqa: B902 - ultralytics raises many types for bad files
        raise ModelError(f'{path}: ultralytics cannot load the model: '
                         f'{type(exc).__name__}: {str(exc)[:300]}') from None
    semantic = yolo.task == 'semantic'
    if not semantic and (yolo.task != 'segment' or not hasattr(yolo.model.model[-1], 'proto')):
        raise ModelError(f'{path} is a YOLO {yolo.task} model; the ultralytics backend needs '
                         'a semantic (-sem) or instance-segmentation (-seg) model')
    net = yolo.model.float().eval()
    try:
        net = net.fuse(verbose=False)
    except (TypeError, AttributeError):
        pass
    head = net.model[-1]
    nc = int(head.nc)
    raw = getattr(net, 'names', None) or {}
    if isinstance(raw, dict):
        names = [raw.get(i, str(i)) for i in range(nc)]
    else:
        names = list(raw) + [str(i) for i in range(len(raw), nc)]
    if semantic:
        labelled = list(names) if nc > 1 else ['background'] + list(names)
        class_set, classes = class_set_for(labelled, 'yolo', 'ultralytics model names')
    else:
        class_set, classes = _class_sets(names)
    stride = int(max(getattr(net, 'stride', torch.tensor([32.0])).tolist()))
    size = int(opts['imgsz'])
    preprocess = Preprocess('rgb', (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0 / 255.0,
                            (size, size) if size > 0 else None, stride, 'letterbox')
    name = os.path.splitext(os.path.basename(path))[0]
    if semantic:
        return YoloSemanticModel(net, nc, preprocess, class_set, classes, name)
    return YoloSegModel(net, nc, preprocess, opts['conf'], opts['iou'], opts['max_det'],
                        class_set, classes, name)

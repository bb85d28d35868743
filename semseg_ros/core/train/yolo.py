"""
The Ultralytics path: YOLO semantic models (YOLO26 -sem) trained with ultralytics' own API.

A dataset is converted to ultralytics' semantic layout (images/{train,val}, masks/{train,val},
data.yaml with the class names and a label_mapping that sends the void class to its ignore
label), trained with ``YOLO(model).train(...)``, and the best network is wrapped as a
SegmentationModel (RGB, x / 255, logits at 1/8) so that it is exported, gated and deployed
exactly like the torch models: one model directory format for both families.
"""

from pathlib import Path

from semseg_ros.core import classes as class_sets
from semseg_ros.core.models.base import ModuleModel, Preprocess
from semseg_ros.core.train.dataset import link_or_copy
import yaml

# YOLO strides: input sides must be multiples of 32.
SIZE_DIVISOR = 32
PREPROCESS = Preprocess(channel_order='rgb', mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                        scale=1.0 / 255.0, input_size=None, size_divisor=SIZE_DIVISOR)


def trained_classes(classes):
    """Return (class set without the void class, table trained id -> dataset id)."""
    kept = [i for i in range(len(classes)) if i != classes.ignore_id]
    entries = [{'id': j, 'name': classes.names[i],
                'color': [int(c) for c in classes.colors[i]]}
               for j, i in enumerate(kept)]
    for j, i in enumerate(kept):
        if i in classes.drivable:
            entries[j]['drivable'] = True
    return class_sets.from_dict({'name': classes.name, 'classes': entries},
                                f'{classes.source} (no void)'), kept


def write_dataset(train_items, val_items, classes, out):
    """Write ultralytics' semantic dataset layout (hard links) and data.yaml; return its path."""
    out = Path(out)
    for part, items in (('train', train_items), ('val', val_items)):
        for image, label in items:
            link_or_copy(image, out / 'images' / part / image.name)
            link_or_copy(label, out / 'masks' / part / (image.stem + '.png'))
    _, kept = trained_classes(classes)
    mapping = {i: j for j, i in enumerate(kept)}
    if classes.ignore_id is not None:
        mapping[classes.ignore_id] = 'ignore_label'
    data = {'path': str(out.resolve()), 'train': 'images/train', 'val': 'images/val',
            'masks_dir': 'masks', 'names': {j: classes.names[i] for j, i in enumerate(kept)},
            'label_mapping': mapping}
    path = out / 'data.yaml'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def train(model, data, folder, size, epochs=0, minutes=0.0, batch=8, device='auto', seed=0,
          workers=-1, lr=None):
    """
    Train with ultralytics; return the path of its best weights.

    ``model``: a YOLO semantic model file (yolo26n-sem.pt) or config (yolo26n-sem.yaml).
    ``minutes`` is passed as ultralytics' ``time`` (hours), which overrides the epochs.
    """
    from ultralytics import YOLO

    yolo = YOLO(model, task='semantic')
    if yolo.task != 'semantic':
        raise ValueError(f'{model} is a YOLO {yolo.task} model, not a semantic (-sem) one')
    args = {'data': str(data), 'epochs': int(epochs or 1000), 'imgsz': int(max(size)),
            'batch': int(batch), 'seed': int(seed), 'plots': False, 'verbose': False,
            'project': str(Path(folder).resolve()), 'name': 'ultralytics', 'exist_ok': True,
            'workers': (0 if device == 'cpu' else 4) if workers < 0 else workers}
    if device != 'auto':
        args['device'] = device
    if minutes:
        args['time'] = float(minutes) / 60.0
    if lr:
        args['lr0'] = float(lr)
        args['optimizer'] = 'AdamW'
    yolo.train(**args)
    best = Path(folder) / 'ultralytics' / 'weights' / 'best.pt'
    if not best.is_file():
        raise RuntimeError(f'ultralytics wrote no {best}')
    return best


def as_segmentation_model(weights, classes):
    """Wrap trained YOLO semantic weights as a SegmentationModel of ``classes`` (eval mode)."""
    from ultralytics import YOLO

    yolo = YOLO(str(weights), task='semantic')
    names = [str(n) for n in dict(yolo.model.names).values()]
    if names != list(classes.names):
        raise ValueError(f'{weights}: classes {names} differ from {list(classes.names)}')
    net = yolo.model.float().eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return ModuleModel(net, len(classes), PREPROCESS, None, Path(weights).stem)

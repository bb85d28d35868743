"""
The training loop: one ``train_one_epoch``, one ``evaluate`` with a confusion matrix, ``fit``.

``fit`` trains with AdamW and a polynomial learning-rate decay over the run (by epochs, or by
wall-clock time with a time limit), mixed precision on CUDA and the same code in float32 on
the CPU. Before training (epoch 0) and after every epoch it validates (mIoU), appends a row
to ``curves.csv``, redraws ``curves.png`` and saves ``last.pt`` (model, optimizer, scaler,
epoch, time spent, history) and, when the mIoU is the best so far, ``best.pt``.
``resume=True`` continues from ``last.pt``.
"""

import csv
from dataclasses import asdict, dataclass
import math
from pathlib import Path
import random
import time

import numpy as np
from semseg_ros.core.metrics import ConfusionMatrix
from semseg_ros.core.train.augment import IGNORE
import torch
from torch.nn import functional
from tqdm import tqdm

CURVES_CSV = 'curves.csv'
CURVES_PNG = 'curves.png'
LAST = 'last.pt'
BEST = 'best.pt'
COLUMNS = ('epoch', 'seconds', 'lr', 'train_loss', 'val_miou', 'val_pixel_accuracy')


@dataclass
class TrainConfig:
    """Options of a training run (every one a command-line flag of semseg-ros-train)."""

    epochs: int = 0           # 0 = until the time limit
    minutes: float = 0.0      # 0 = no time limit
    batch: int = 4
    lr: float = 5e-4
    weight_decay: float = 1e-4
    seed: int = 0
    workers: int = -1         # -1 = 4 on CUDA, 0 (the main process) on the CPU
    device: str = 'auto'
    amp: bool = True          # mixed precision, CUDA only
    val_batch: int = 4
    progress: bool = True


def seed_everything(seed):
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def select_device(spec):
    """Return a torch.device: 'auto' picks CUDA when there is one."""
    if spec == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(spec)


def forward_logits(model, inputs, size):
    """Return the model's logits resized (bilinear) to ``size`` (H, W)."""
    logits = model.logits(inputs)
    if logits.shape[-2:] != tuple(size):
        logits = functional.interpolate(logits, size=tuple(size), mode='bilinear',
                                        align_corners=False)
    return logits


def collate_eval(batch):
    """Stack inputs (one size) and keep labels (each its own size) in a list."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def train_one_epoch(model, loader, optimizer, scaler, device, amp, schedule, stop, bar=None):
    """
    Run one epoch; return (mean loss, steps, stopped early).

    ``schedule()`` returns the learning rate for the next step; ``stop()`` True ends the
    epoch early (time limit).
    """
    model.train()
    total, steps = 0.0, 0
    for inputs, target in loader:
        if steps and stop():
            return total / max(1, steps), steps, True
        for group in optimizer.param_groups:
            group['lr'] = schedule()
        inputs = inputs.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = forward_logits(model, inputs, target.shape[-2:])
            loss = functional.cross_entropy(logits.float(), target, ignore_index=IGNORE)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'the loss became {loss.item()} at step {steps}: lower '
                                     '--lr')
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.item())
        steps += 1
        if bar is not None:
            bar.set_postfix(loss=f'{loss.item():.3f}', lr=f'{optimizer.param_groups[0]["lr"]:.1e}')
            bar.update(1)
    return total / max(1, steps), steps, False


def evaluate(model, loader, num_classes, ignore_id, device, amp=False):
    """Return the ConfusionMatrix of the model on a loader of (inputs, [labels])."""
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_id)
    model.eval()
    with torch.inference_mode():
        for inputs, labels in loader:
            inputs = inputs.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model.logits(inputs).float()
            for logit, label in zip(logits, labels):
                logit = functional.interpolate(logit[None], size=tuple(label.shape),
                                               mode='bilinear', align_corners=False)
                prediction = logit[0].argmax(0).cpu().numpy()
                truth = label.numpy().copy()
                if ignore_id is not None:
                    truth[truth == IGNORE] = ignore_id
                matrix.update(prediction, truth)
    return matrix


def write_curves(folder, history):
    """Write curves.csv and curves.png (loss and val mIoU per epoch) into a folder."""
    folder = Path(folder)
    with open(folder / CURVES_CSV, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row[k] for k in COLUMNS})
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    epochs = [row['epoch'] for row in history]
    trained = [row for row in history if row['train_loss'] is not None]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(8, 3), dpi=80)
    left.plot([row['epoch'] for row in trained], [row['train_loss'] for row in trained], 'o-',
              color='tab:red')
    left.set_xlabel('epoch')
    left.set_ylabel('train loss')
    left.grid(alpha=0.3)
    right.plot(epochs, [row['val_miou'] for row in history], 'o-', color='tab:blue')
    right.set_xlabel('epoch')
    right.set_ylabel('val mIoU')
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(folder / CURVES_PNG)
    pyplot.close(figure)


def fit(model, train_set, val_set, folder, config, resume=False, log=print, extra=None):
    """
    Train ``model`` on ``train_set`` and validate on ``val_set``; return the history.

    ``folder`` receives curves.csv/png, last.pt and best.pt; ``extra`` is stored in the
    checkpoints (e.g. the class mapping). Returns a list of per-epoch rows with the keys of
    COLUMNS; the model ends with the best epoch's weights.
    """
    if not config.epochs and not config.minutes:
        raise ValueError('give a number of epochs or a time limit in minutes')
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = select_device(config.device)
    amp = bool(config.amp and device.type == 'cuda')
    model.to(device)
    workers = config.workers if config.workers >= 0 else (4 if device.type == 'cuda' else 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    history, epoch, spent, best = [], 0, 0.0, -1.0
    if resume:
        path = folder / LAST
        if not path.is_file():
            raise FileNotFoundError(f'--resume: {path} does not exist (no earlier run here)')
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scaler.load_state_dict(state['scaler'])
        history, epoch, spent = state['history'], state['epoch'], state['seconds']
        best = max([row['val_miou'] for row in history] or [-1.0])
        log(f'resumed after epoch {epoch} ({spent / 60:.1f} min spent, best val mIoU '
            f'{best:.4f})')
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch, shuffle=True, drop_last=len(train_set) > config.batch,
        num_workers=workers, generator=generator, pin_memory=device.type == 'cuda',
        persistent_workers=False)  # workers see each epoch's seed
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=config.val_batch, shuffle=False, num_workers=workers,
        collate_fn=collate_eval)
    steps_per_epoch = max(1, len(loader))
    limit = config.minutes * 60.0
    start = time.monotonic() - spent
    done = {'steps': epoch * steps_per_epoch}

    def progress():
        by_epochs = done['steps'] / (config.epochs * steps_per_epoch) if config.epochs else 0.0
        by_time = (time.monotonic() - start) / limit if limit else 0.0
        return min(1.0, max(by_epochs, by_time))

    def schedule():
        done['steps'] += 1
        warm = min(1.0, done['steps'] / min(50, steps_per_epoch))
        return config.lr * warm * (1.0 - progress()) ** 0.9 + config.lr * 1e-3

    def out_of_time():
        return bool(limit) and time.monotonic() - start >= limit

    def record(loss, note=''):
        """Validate, log, checkpoint and redraw the curves after an epoch (0: before any)."""
        nonlocal best
        matrix = evaluate(model, val_loader, len(train_set.classes),
                          train_set.classes.ignore_id, device, amp)
        miou = matrix.mean_iou()
        miou = 0.0 if math.isnan(miou) else miou
        row = {'epoch': epoch, 'seconds': round(time.monotonic() - start, 1),
               'lr': optimizer.param_groups[0]['lr'] if epoch else 0.0,
               'train_loss': round(loss, 5) if epoch else None,
               'val_miou': round(miou, 5),
               'val_pixel_accuracy': round(float(matrix.pixel_accuracy()), 5)}
        history.append(row)
        trained = f'loss {loss:.4f}, ' if epoch else 'before training: '
        log(f'epoch {epoch}{note}: {trained}val mIoU {miou:.4f}, pixel accuracy '
            f'{row["val_pixel_accuracy"]:.4f}, {row["seconds"] / 60:.1f} min')
        state = {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                 'scaler': scaler.state_dict(), 'epoch': epoch, 'seconds': row['seconds'],
                 'history': history, 'config': asdict(config), 'extra': extra or {}}
        torch.save(state, folder / LAST)
        if miou > best:
            best = miou
            torch.save({'model': model.state_dict(), 'epoch': epoch, 'val_miou': miou,
                        'extra': extra or {}}, folder / BEST)
        write_curves(folder, history)

    if not history:
        record(0.0)  # the starting point: the base model with its adapted head
    first = epoch
    # Every run trains at least one step, however short its time limit.
    while (not config.epochs or epoch < config.epochs) and (epoch == first
                                                            or not out_of_time()):
        train_set.epoch = epoch
        with tqdm(total=steps_per_epoch, desc=f'epoch {epoch + 1}', unit='step',
                  disable=not config.progress, leave=False) as bar:
            loss, steps, stopped = train_one_epoch(
                model, loader, optimizer, scaler, device, amp, schedule, out_of_time, bar)
        if steps == 0:
            raise RuntimeError('the training set gave no batch')
        epoch += 1
        record(loss, ' (time limit)' if stopped else '')
    best_state = torch.load(folder / BEST, map_location=device, weights_only=True)
    model.load_state_dict(best_state['model'])
    return history

"""Segmentation metrics: confusion matrix, pixel accuracy and intersection over union."""

import numpy as np


class ConfusionMatrix:
    """
    Accumulate a confusion matrix over label maps (rows = target, columns = prediction).

    Target pixels equal to ``ignore_index`` are skipped. A prediction that is not a valid
    class (negative, ``>= num_classes`` or equal to ``ignore_index``) counts as wrong for its
    target pixel: it is kept out of ``matrix`` but counted in ``invalid``, so it lowers the
    accuracy and the IoU of the target class.
    """

    def __init__(self, num_classes, ignore_index=None):
        if int(num_classes) < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.reset()

    def reset(self):
        """Forget all counts."""
        n = self.num_classes
        self._counts = np.zeros((n, n + 1), np.int64)

    def update(self, pred, target):
        """Add one prediction / target pair (integer arrays of the same shape)."""
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f'prediction shape {pred.shape} != target shape {target.shape}')
        for name, arr in (('prediction', pred), ('target', target)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f'{name} must hold integers, not {arr.dtype}')
        n = self.num_classes
        t = target.ravel().astype(np.int64)
        p = pred.ravel().astype(np.int64)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            t = t[keep]
            p = p[keep]
        if t.size and (t.min() < 0 or t.max() >= n):
            bad = np.unique(t[(t < 0) | (t >= n)])
            raise ValueError(f'target ids {bad.tolist()} are outside 0..{n - 1}'
                             f' (ignore index: {self.ignore_index})')
        invalid = (p < 0) | (p >= n)
        if self.ignore_index is not None:
            invalid |= p == self.ignore_index
        p[invalid] = n
        self._counts += np.bincount(t * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)

    @property
    def matrix(self):
        """Return the (num_classes, num_classes) counts, rows = target, columns = prediction."""
        return self._counts[:, :-1].copy()

    @property
    def invalid(self):
        """Return, per target class, the pixels whose prediction was not a valid class."""
        return self._counts[:, -1].copy()

    @property
    def total(self):
        """Return the number of counted (not ignored) target pixels."""
        return int(self._counts.sum())

    def pixel_accuracy(self):
        """Return the fraction of counted pixels predicted right (NaN when none counted)."""
        total = self.total
        if total == 0:
            return float('nan')
        return float(np.trace(self._counts[:, :-1])) / total

    def iou(self):
        """Return the per-class IoU; NaN for classes in neither prediction nor target."""
        m = self._counts[:, :-1]
        tp = np.diag(m).astype(np.float64)
        union = self._counts.sum(1) + m.sum(0) - tp
        out = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=out, where=union > 0)
        return out

    def mean_iou(self):
        """Return the mean IoU over classes that occur (NaN when none does)."""
        iou = self.iou()
        if np.all(np.isnan(iou)):
            return float('nan')
        return float(np.nanmean(iou))

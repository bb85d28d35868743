"""
Label maps at the frame's resolution from low-resolution logits, exactly and cheaply.

The label of an output pixel is the argmax of the bilinearly interpolated logits (as
``F.interpolate(mode='bilinear', align_corners=False)`` then argmax). Interpolated logits are
a convex combination of the four source pixels around the output pixel; when those four agree
on their argmax, the combination has the same argmax. So the argmax is taken once at the
logits' resolution, spread to the output with the four-neighbour lookup, and the interpolation
is computed only where the neighbours disagree (class borders, a few percent of the pixels).
On the CPU this costs a small fraction of interpolating every class channel at full size
(ESPNetv2's 512x256 logits to 1920x1080: 6 ms against 80 ms).
"""

import numpy as np
import torch
import torch.nn.functional as F


def bilinear_taps(size_in, size_out, device=None):
    """
    Return (lower index, upper index, upper weight) along one axis, as F.interpolate uses.

    ``align_corners=False`` without antialiasing: source = (out + 0.5) * in / out - 0.5,
    clamped at 0; the upper index is clamped to the last source pixel.
    """
    scale = size_in / size_out
    src = (torch.arange(size_out, dtype=torch.float32, device=device) + 0.5) * scale - 0.5
    src.clamp_(min=0.0)
    lower = src.floor().long().clamp_(max=size_in - 1)
    upper = (lower + 1).clamp_(max=size_in - 1)
    return lower, upper, src - lower


def dense_labels(logits, size):
    """Return the (H, W) int64 argmax of the (C, h, w) logits interpolated to size (H, W)."""
    full = F.interpolate(logits[None], size=tuple(size), mode='bilinear', align_corners=False)
    return full[0].max(dim=0).indices


def _row_spans(taps, size_in):
    """Return (first output index, count) of the outputs whose lower tap is each source index."""
    first = np.searchsorted(taps, np.arange(size_in))
    return first, np.diff(np.append(first, len(taps)))


def sparse_labels(logits, size, low=None):
    """
    Return the labels of ``dense_labels``, interpolating only at class borders (CPU tensors).

    Ties between classes aside, the result is identical; it needs the logits as float32. It is
    uint8 (int32 past 256 classes). ``low`` is the argmax of the logits when the caller has it.
    """
    channels, h, w = logits.shape
    out_h, out_w = (int(v) for v in size)
    y0, _, wy = bilinear_taps(h, out_h)
    x0, x1, wx = bilinear_taps(w, out_w)
    if low is None:
        low = logits.max(dim=0).indices
    low = low.to(torch.uint8 if channels <= 256 else torch.int32)
    # An output pixel's taps are source pixels (y0, x0) to (y0 + 1, x0 + 1), clamped at the
    # edges: it is a border pixel when that 2 x 2 block has more than one argmax. Found at the
    # logits' resolution, then spread like the labels (numpy's take is the fastest spread).
    right = torch.cat((low[:, 1:], low[:, -1:]), 1)
    mixed = low != right
    mixed |= low != torch.cat((low[1:], low[-1:]), 0)
    mixed |= low != torch.cat((right[1:], right[-1:]), 0)
    y0n, x0n = y0.numpy(), x0.numpy()
    labels = np.take(low.numpy(), x0n, axis=1)[y0n]
    # Border pixels as (source row, output column): all output rows of one source row share
    # its two taps, so the logits are interpolated along x once per pair, then along y per row.
    rows, cols = np.nonzero(np.take(mixed.numpy(), x0n, axis=1))
    if rows.size:
        first, count = _row_spans(y0n, h)
        first, count = first[rows], count[rows]
        top = torch.from_numpy(rows * w)
        bottom = torch.from_numpy(np.minimum(rows + 1, h - 1) * w)
        at = torch.from_numpy(cols)
        col0, col1, fx = x0[at], x1[at], wx[at]
        flat = logits.reshape(channels, -1)
        upper = flat.index_select(1, top + col0).lerp_(flat.index_select(1, top + col1), fx)
        lower = flat.index_select(1, bottom + col0).lerp_(flat.index_select(1, bottom + col1), fx)
        # Output rows of each pair: first, first + 1, ... first + count - 1.
        ys = np.repeat(first - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
        repeat = torch.from_numpy(count)
        upper = upper.repeat_interleave(repeat, dim=1)
        lower = lower.repeat_interleave(repeat, dim=1)
        best = upper.lerp_(lower, wy[torch.from_numpy(ys)]).max(dim=0).indices
        labels[ys, np.repeat(cols, count)] = best.numpy()
    return torch.from_numpy(labels)


def upsample_labels(logits, size, low=None):
    """
    Return the (H, W) argmax labels of (C, h, w) logits bilinearly resized to size.

    The CPU takes the border-only path; CUDA interpolates every channel (cheap there, and it
    avoids the host synchronisation of ``nonzero``). Both give the same labels (integer
    dtypes differ: uint8 / int32 on the CPU, int64 on CUDA).
    """
    if logits.device.type == 'cpu':
        return sparse_labels(logits, size, low)
    return dense_labels(logits, size)

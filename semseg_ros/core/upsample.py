"""
Label maps at the frame's resolution from low-resolution logits, exactly and cheaply.

The label of an output pixel is the argmax of the bilinearly interpolated logits (as
``F.interpolate(mode='bilinear', align_corners=False)`` then argmax). Interpolated logits are
a convex combination of the four source pixels around the output pixel; when those four agree
on their argmax, the combination has the same argmax. So the argmax is taken once at the
logits' resolution, spread to the output with the four-neighbour lookup, and the interpolation
is computed only where the neighbours disagree (class borders, a few percent of the pixels).
On the CPU this costs well under half of interpolating every class channel at full size.
"""

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


def sparse_labels(logits, size, low=None):
    """
    Return the same labels as ``dense_labels``, interpolating only at class borders.

    Ties between classes aside, the result is identical; it needs the logits as float32.
    ``low`` is the argmax of the logits when the caller has it already.
    """
    channels, h, w = logits.shape
    out_h, out_w = (int(v) for v in size)
    y0, y1, wy = bilinear_taps(h, out_h, logits.device)
    x0, x1, wx = bilinear_taps(w, out_w, logits.device)
    if low is None:
        low = logits.max(dim=0).indices
    low = low.to(torch.uint8 if channels <= 256 else torch.int32)
    top, bottom = low.index_select(0, y0), low.index_select(0, y1)
    labels = top.index_select(1, x0)
    mixed = labels != top.index_select(1, x1)
    mixed |= labels != bottom.index_select(1, x0)
    mixed |= labels != bottom.index_select(1, x1)
    labels = labels.long()
    ys, xs = mixed.nonzero(as_tuple=True)
    if ys.numel():
        flat = logits.reshape(channels, -1)
        row0, row1 = y0[ys] * w, y1[ys] * w
        col0, col1 = x0[xs], x1[xs]
        fy, fx = wy[ys], wx[xs]
        upper = torch.lerp(flat[:, row0 + col0], flat[:, row0 + col1], fx)
        lower = torch.lerp(flat[:, row1 + col0], flat[:, row1 + col1], fx)
        labels[ys, xs] = torch.lerp(upper, lower, fy).max(dim=0).indices
    return labels


def upsample_labels(logits, size, low=None):
    """
    Return the (H, W) int64 argmax labels of (C, h, w) logits bilinearly resized to size.

    The CPU takes the border-only path; CUDA interpolates every channel (cheap there, and it
    avoids the host synchronisation of ``nonzero``). Both give the same labels.
    """
    if logits.device.type == 'cpu':
        return sparse_labels(logits, size, low)
    return dense_labels(logits, size)

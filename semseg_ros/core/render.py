"""
Rendering of label maps as tensor operations: color, overlay, drivable mask, confidence.

Every function takes and returns tensors on one device, so the CPU and CUDA paths are the
same code.
"""

import torch


def lookup(labels, lut):
    """Map a (..., H, W) integer label tensor through a (K, ...) lookup table."""
    return lut[labels.long()]


def colorize(labels, color_lut):
    """Return (H, W, 3) uint8 RGB colors for (H, W) labels and a (K, 3) uint8 table."""
    return lookup(labels, color_lut)


def drivable(labels, drivable_lut):
    """Return an (H, W) uint8 mask, 255 where the class is drivable, for a (K,) 0/255 table."""
    return lookup(labels, drivable_lut)


def overlay(rgb, colors, alpha):
    """Blend (H, W, 3) uint8 colors over the (H, W, 3) uint8 image: alpha 0 = image only."""
    alpha = float(alpha)
    if alpha <= 0.0:
        return rgb.contiguous()
    if alpha >= 1.0:
        return colors
    out = rgb.to(torch.float32).mul_(1.0 - alpha).add_(colors.to(torch.float32), alpha=alpha)
    return out.round_().to(torch.uint8)


def confidence(probability):
    """Scale a max-softmax probability tensor in 0..1 to uint8 0..255."""
    return probability.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)

"""The one interface every segmentation backend implements."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch


RESIZE_MODES = ('stretch', 'letterbox')
# The grey a letterboxed frame is padded with (0..255, as Ultralytics pads).
LETTERBOX_GREY = 114.0


@dataclass(frozen=True)
class Preprocess:
    """
    How a model wants its input.

    The engine computes, per channel and on the device,
    ``y = (x - mean) / std * scale`` with ``x`` the pixel in 0..255 after reordering the
    channels to ``channel_order``. ImageNet models use mean = 255 * [0.485, 0.456, 0.406],
    std = 255 * [0.229, 0.224, 0.225], scale = 1.
    """

    channel_order: str = 'rgb'
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    # (width, height) the model runs at; None = the frame's own size.
    input_size: Optional[Tuple[int, int]] = None
    # Spatial sizes must be multiples of this (the engine pads or resizes to it).
    size_divisor: int = 1
    # How a frame meets a fixed input_size: 'stretch' (resized to it) or 'letterbox' (scaled
    # to fit with its aspect ratio kept, the rest padded with grey 114 at the bottom and right).
    resize: str = 'stretch'

    def __post_init__(self):
        """Validate the fields."""
        if self.channel_order not in ('rgb', 'bgr'):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {self.channel_order!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be 'stretch' or 'letterbox', not {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError('mean and std need three values (one per channel)')
        if any(s <= 0 for s in self.std):
            raise ValueError(f'std values must be positive, got {self.std}')
        if self.input_size is not None and (
                len(self.input_size) != 2 or min(self.input_size) <= 0):
            raise ValueError(f'input_size must be (width, height) > 0, got {self.input_size}')


class SegmentationModel(torch.nn.Module):
    """
    A semantic segmentation model: float NCHW batch in, NCHW logits out.

    Subclasses set ``num_classes`` (number of output channels), ``preprocess`` and
    ``class_set`` (name of the class set in config/classes that matches the outputs), and
    implement ``forward``. Logits may come at a lower resolution than the input; the engine
    resizes them.
    """

    num_classes: int = 0
    preprocess: Preprocess = Preprocess()
    class_set: Optional[str] = None
    classes = None  # a ClassSet the model carries (its own class names), if any
    name: str = 'model'
    # What forward returns: 'logits' or 'probabilities' (N, C, h, w), or 'class_ids'
    # (N, h, w) integers from an argmax inside the model.
    output_kind: str = 'logits'
    # Lines to show the user at start-up (e.g. preprocessing defaults that were assumed).
    warnings: tuple = ()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Return logits of shape (N, num_classes, h, w)."""
        raise NotImplementedError

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """
        Return the logits at the model's own output resolution.

        The engine calls this when it resizes the logits itself; a model whose ``forward``
        ends by upsampling its logits overrides it to skip that step. Default: ``forward``.
        """
        return self(batch)


class ModuleModel(SegmentationModel):
    """Wrap any ``torch.nn.Module`` (or scripted module) that maps NCHW to logits."""

    def __init__(self, module, num_classes, preprocess, class_set=None, name='model'):
        super().__init__()
        self.module = module
        self.num_classes = int(num_classes)
        self.preprocess = preprocess
        self.class_set = class_set
        self.name = name

    def forward(self, batch):
        """Run the wrapped module; accept dict outputs ('out' entry) and tuples (the first)."""
        out = self.module(batch)
        if isinstance(out, dict):
            out = out['out'] if 'out' in out else next(iter(out.values()))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out


class ModelError(RuntimeError):
    """A model could not be built or loaded; the message says which file or parameter."""

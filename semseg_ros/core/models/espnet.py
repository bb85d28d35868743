"""
ESPNet (Mehta et al., ECCV 2018): the encoder-decoder segmentation network.

Our implementation of the paper's full ESPNet (``p`` ESP modules at 1/4 scale, ``q`` at 1/8
scale, a light decoder with two learned 2x upsamplings and a final one). The attribute names
follow the published state dicts so that their weights load with ``strict=True``. Every
batch norm uses eps = 1e-3, as in the paper's training code.
"""

from semseg_ros.core import weights as wts
from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.registry import check_options
import torch
from torch import nn

BN_EPS = 1e-3

# The published CamVid model: 11 classes + void (11), trained on BGR input at 480x360.
CAMVID_PREPROCESS = Preprocess(
    channel_order='bgr',
    mean=(110.3310, 108.4089, 105.0332),
    std=(72.1257, 72.6907, 69.9043),
    scale=1.0 / 255.0,
    input_size=(480, 360),
    size_divisor=8,
)


class Conv(nn.Module):
    """A bias-free convolution with 'same' padding (``conv``)."""

    def __init__(self, n_in, n_out, kernel, stride=1, dilation=1):
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=pad,
                              dilation=dilation, bias=False)

    def forward(self, x):
        """Convolve."""
        return self.conv(x)


class BnAct(nn.Module):
    """Batch norm followed by a per-channel PReLU (``bn``, ``act``)."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x):
        """Normalise and activate."""
        return self.act(self.bn(x))


class ConvBnAct(nn.Module):
    """Convolution, batch norm and PReLU (``conv``, ``bn``, ``act``)."""

    def __init__(self, n_in, n_out, kernel, stride=1):
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x):
        """Convolve, normalise and activate."""
        return self.act(self.bn(self.conv(x)))


class _Pyramid(nn.Module):
    """
    Reduce, split into five dilated branches (rates 1, 2, 4, 8, 16) and merge them.

    The branches with rates 2..16 are summed hierarchically (each adds the previous sum) before
    the concatenation, which removes the gridding artefacts of plain dilated pyramids. The
    first branch takes what is left of ``n_out`` after the other four.
    """

    def __init__(self, n_in, n_out, reduce_kernel, reduce_stride):
        super().__init__()
        n = n_out // 5
        n1 = n_out - 4 * n
        self.c1 = Conv(n_in, n, reduce_kernel, stride=reduce_stride)
        self.d1 = Conv(n, n1, 3, dilation=1)
        self.d2 = Conv(n, n, 3, dilation=2)
        self.d4 = Conv(n, n, 3, dilation=4)
        self.d8 = Conv(n, n, 3, dilation=8)
        self.d16 = Conv(n, n, 3, dilation=16)

    def pyramid(self, x):
        """Return the concatenated branch outputs (``n_out`` channels)."""
        x = self.c1(x)
        parts = [self.d1(x)]
        total = None
        for branch in (self.d2, self.d4, self.d8, self.d16):
            y = branch(x)
            total = y if total is None else total + y
            parts.append(total)
        return torch.cat(parts, 1)


class EspDown(_Pyramid):
    """The strided ESP module: halves the resolution (3x3 stride-2 reduction, no residual)."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out, 3, 2)
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x):
        """Return the features at half resolution."""
        return self.act(self.bn(self.pyramid(x)))


class EspBlock(_Pyramid):
    """The ESP module (1x1 reduction), with a residual connection when ``residual``."""

    def __init__(self, n_in, n_out, residual=True):
        super().__init__(n_in, n_out, 1, 1)
        self.residual = residual and n_in == n_out
        self.bn = BnAct(n_out)

    def forward(self, x):
        """Return the features at the same resolution."""
        y = self.pyramid(x)
        if self.residual:
            y = y + x
        return self.bn(y)


class Encoder(nn.Module):
    """The ESPNet-C encoder: 1/8-resolution features and a 1x1 classifier."""

    def __init__(self, classes, p=2, q=8):
        super().__init__()
        # The input, average-pooled to 1/2 and 1/4, is concatenated to the features there.
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.level1 = ConvBnAct(3, 16, 3, stride=2)
        self.b1 = BnAct(16 + 3)
        self.level2_0 = EspDown(16 + 3, 64)
        self.level2 = nn.ModuleList(EspBlock(64, 64) for _ in range(p))
        self.b2 = BnAct(64 + 64 + 3)
        self.level3_0 = EspDown(64 + 64 + 3, 128)
        self.level3 = nn.ModuleList(EspBlock(128, 128) for _ in range(q))
        self.b3 = BnAct(128 + 128)
        self.classifier = Conv(256, classes, 1)

    def features(self, x):
        """Return the features at 1/2, 1/4 and 1/8 of the input size (19, 131, 256 ch.)."""
        half = self.pool(x)
        quarter = self.pool(half)
        f1 = self.b1(torch.cat([self.level1(x), half], 1))
        down2 = self.level2_0(f1)
        y = down2
        for block in self.level2:
            y = block(y)
        f2 = self.b2(torch.cat([y, down2, quarter], 1))
        down3 = self.level3_0(f2)
        y = down3
        for block in self.level3:
            y = block(y)
        f3 = self.b3(torch.cat([down3, y], 1))
        return f1, f2, f3

    def forward(self, x):
        """Return logits at 1/8 of the input size."""
        return self.classifier(self.features(x)[2])


def _up(channels):
    """Return a learned 2x upsampling (transposed 2x2 convolution, stride 2, no bias)."""
    return nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False)


class ESPNet(SegmentationModel):
    """
    The full ESPNet: encoder plus decoder, logits at the input resolution.

    Input sides must be multiples of 8 (three stride-2 stages, each undone by a 2x
    upsampling); other sizes raise ``ValueError``.
    """

    def __init__(self, classes=12, p=2, q=8, preprocess=CAMVID_PREPROCESS, class_set='camvid'):
        super().__init__()
        self.num_classes = int(classes)
        self.preprocess = preprocess
        self.class_set = class_set
        self.name = 'espnet'
        c = self.num_classes
        self.encoder = Encoder(c, p, q)
        # 1/4-scale skip: the 131 encoder channels projected to class scores.
        self.level3_C = Conv(64 + 64 + 3, c, 1)
        self.br = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv = ConvBnAct(16 + 3 + c, c, 3)
        self.up_l3 = nn.Sequential(_up(c))
        self.combine_l2_l3 = nn.Sequential(BnAct(2 * c), EspBlock(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(_up(c), BnAct(c))
        self.classifier = _up(c)

    def forward(self, batch):
        """Return logits of shape (N, num_classes, H, W) for a (N, 3, H, W) batch."""
        h, w = batch.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f'ESPNet needs input sides that are multiples of 8, got {w}x{h}')
        f1, f2, f3 = self.encoder.features(batch)
        score3 = self.up_l3(self.br(self.encoder.classifier(f3)))
        score2 = self.combine_l2_l3(torch.cat([self.level3_C(f2), score3], 1))
        score1 = self.conv(torch.cat([self.up_l2(score2), f1], 1))
        return self.classifier(score1)


def build(options):
    """
    Build the CamVid ESPNet (p=2, q=8) with its published weights.

    Options: ``weights`` (local file, '' = cache or download), ``cache`` (directory, None =
    the default cache), ``download`` (bool: allow fetching the published file) and
    ``classes`` (class count, default 12 = CamVid with void; other counts need their weights).
    """
    opts = check_options('espnet', options,
                         {'weights': '', 'cache': None, 'download': True, 'classes': 12})
    count = opts['classes']
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ModelError(f'espnet: option classes must be an integer >= 2, not {count!r}')
    if count != 12 and not opts['weights']:
        raise ModelError('espnet: the published CamVid weights have 12 classes; for classes '
                         f'{count} give your weights in model.weights')
    path = wts.resolve(wts.ESPNET_CAMVID, path=opts['weights'] or '', cache=opts['cache'],
                       download=bool(opts['download']))
    model = ESPNet(classes=count, class_set='camvid' if count == 12 else None)
    state = wts.load_state_dict_file(path)
    # BatchNorm step counters are absent from the published file and do not matter here.
    counters = {k: v for k, v in model.state_dict().items() if k.endswith('num_batches_tracked')}
    state = {k: v for k, v in state.items() if k not in counters}
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in counters}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    if missing or unexpected or reshaped:
        raise ModelError(
            f'{path} is not an ESPNet p=2 q=8 state dict with {count} classes (option '
            f'classes): {len(missing)} missing '
            f'{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, '
            f'{len(reshaped)} of another shape {reshaped[:3]}')
    model.load_state_dict({**counters, **state}, strict=True)
    return model.eval()

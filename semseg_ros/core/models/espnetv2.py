"""
ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019), width scale s = 2.0.

Our own implementation of the network described in the paper. The module names and shapes
follow the published Cityscapes state_dict (``espnetv2_s_2.0_city_1024x512.pth``) so that it
loads with ``strict=True``.

Layout:

* encoder (``base_net``): a strided 3x3 conv, then three down-sampling units (an EESP unit with
  stride 2 beside a 3x3 average pool, plus input reinforcement from the image) with 3 and 7
  EESP units after the second and third of them; output stride 16.
* decoder: an efficient pyramid pooling module at 1/16, then three times: upsample by 2, add
  the encoder feature of that scale (through a gated grouped 3x3 conv), BN + PReLU and another
  pyramid pooling module. The last one gives the class logits at 1/2, which are upsampled
  bilinearly to the input size.
"""

import math

from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.common import load_into
import torch
from torch import nn
from torch.nn import functional

# Channels of the encoder levels for s = 2.0: level1, level2, level3, level4.
ENCODER_CHANNELS = (32, 128, 256, 512)
# EESP units after the level 3 and level 4 down-sampling units.
LEVEL3_UNITS = 3
LEVEL4_UNITS = 7
EESP_BRANCHES = 4
# Largest effective kernel of the EESP branches: level2_0, level3_0, level3 and level4_0,
# level4 units.
MAX_KERNEL = (13, 11, 9, 7)
# Decoder widths (Cityscapes: 16 base planes) and pyramid pooling scales.
DECODER_BASE = 16
DECODER_CHANNELS = (4 * DECODER_BASE, 3 * DECODER_BASE, 2 * DECODER_BASE)
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
PYRAMID_MIN_SIZE = 5

NUM_CLASSES = 20
PREPROCESS = Preprocess(
    channel_order='rgb',
    mean=(0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0),
    std=(0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0),
    scale=1.0,
    input_size=(1024, 512),
    # Four stride-2 stages; the decoder adds upsampled features to the encoder's.
    size_divisor=16,
)
OPTIONS = ('cache', 'download', 'weights', 'classes')
# Class sets of the published class counts: Cityscapes (19 + background), PASCAL VOC (21).
CLASS_SETS = {20: 'cityscapes', 21: 'voc'}


class ConvBlock(nn.Module):
    """Conv (no bias), optionally followed by BatchNorm and PReLU (encoder naming)."""

    def __init__(self, nin, nout, kernel, stride=1, dilation=1, groups=1, bn=True, act=True):
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(nin, nout, kernel, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(nout) if bn else None
        self.act = nn.PReLU(nout) if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class BNAct(nn.Module):
    """BatchNorm then PReLU (encoder naming)."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x):
        return self.act(self.bn(x))


class SeqCBR(nn.Module):
    """Conv (no bias), BatchNorm and PReLU held in one Sequential ``cbr`` (decoder naming)."""

    def __init__(self, nin, nout, kernel, groups=1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(nin, nout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(nout),
            nn.PReLU(nout),
        )

    def forward(self, x):
        return self.cbr(x)


def bn_prelu(channels):
    """Return BatchNorm + PReLU as a Sequential."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))


class SeqBR(nn.Module):
    """BatchNorm and PReLU held in one Sequential ``br`` (decoder naming)."""

    def __init__(self, channels):
        super().__init__()
        self.br = bn_prelu(channels)

    def forward(self, x):
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` equal groups."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


class EESP(nn.Module):
    """
    Extremely Efficient Spatial Pyramid unit.

    Grouped 1x1 reduction, ``branches`` depth-wise 3x3 convs with growing dilation whose
    outputs are summed hierarchically (each branch adds the previous one), concatenation,
    BN + PReLU, grouped 1x1 expansion with BN, then a residual add and PReLU. In a
    down-sampling unit (``stride=2``) the expansion output is returned as is.
    """

    def __init__(self, nin, nout, stride=1, branches=EESP_BRANCHES, max_kernel=7):
        super().__init__()
        width = nout // branches
        if width * branches != nout:
            raise ValueError(f'EESP output channels {nout} not divisible by {branches}')
        self.stride = stride
        self.proj_1x1 = ConvBlock(nin, width, 1, groups=branches)
        # Effective kernel sizes 3, 5, 7, ...; those above max_kernel fall back to 3.
        kernels = sorted(k if k <= max_kernel else 3 for k in range(3, 3 + 2 * branches, 2))
        self.spp_dw = nn.ModuleList(
            ConvBlock(width, width, 3, stride=stride, dilation=(k - 1) // 2, groups=width,
                      bn=False, act=False)
            for k in kernels)
        self.conv_1x1_exp = ConvBlock(nout, nout, 1, groups=branches, act=False)
        self.br_after_cat = BNAct(nout)
        self.module_act = nn.PReLU(nout)

    def forward(self, x):
        reduced = self.proj_1x1(x)
        outputs = []
        for conv in self.spp_dw:
            y = conv(reduced)
            if outputs:
                y = y + outputs[-1]
            outputs.append(y)
        y = self.conv_1x1_exp(self.br_after_cat(torch.cat(outputs, 1)))
        if self.stride > 1:
            return y
        if y.shape == x.shape:
            y = y + x
        return self.module_act(y)


class DownSampler(nn.Module):
    """
    Stride-2 unit: [avg pool, strided EESP] concatenated, plus input reinforcement.

    The image is average-pooled (3x3, stride 2) down to the output size and mapped by a
    3x3 CBR and a 1x1 CB to the output channels, then added before the final PReLU.
    """

    def __init__(self, nin, nout, max_kernel, image_channels=3):
        super().__init__()
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.eesp = EESP(nin, nout - nin, stride=2, max_kernel=max_kernel)
        self.inp_reinf = nn.Sequential(
            ConvBlock(image_channels, image_channels, 3),
            ConvBlock(image_channels, nout, 1, act=False),
        )
        self.act = nn.PReLU(nout)

    def forward(self, x, image):
        pooled = self.avg(x)
        y = torch.cat([pooled, self.eesp(x)], 1)
        while image.shape[2] > pooled.shape[2]:
            image = functional.avg_pool2d(image, 3, stride=2, padding=1)
        return self.act(y + self.inp_reinf(image))


class Encoder(nn.Module):
    """ESPNetv2 backbone without its classification head (output stride 16)."""

    def __init__(self, channels=ENCODER_CHANNELS):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.level1 = ConvBlock(3, c1, 3, stride=2)
        self.level2_0 = DownSampler(c1, c2, MAX_KERNEL[0])
        self.level3_0 = DownSampler(c2, c3, MAX_KERNEL[1])
        self.level3 = nn.ModuleList(
            EESP(c3, c3, max_kernel=MAX_KERNEL[2]) for _ in range(LEVEL3_UNITS))
        self.level4_0 = DownSampler(c3, c4, MAX_KERNEL[2])
        self.level4 = nn.ModuleList(
            EESP(c4, c4, max_kernel=MAX_KERNEL[3]) for _ in range(LEVEL4_UNITS))

    def forward(self, image):
        """Return the features at strides 2, 4, 8 and 16."""
        f1 = self.level1(image)
        f2 = self.level2_0(f1, image)
        f3 = self.level3_0(f2, image)
        for unit in self.level3:
            f3 = unit(f3)
        f4 = self.level4_0(f3, image)
        for unit in self.level4:
            f4 = unit(f4)
        return f1, f2, f3, f4


class PyramidPool(nn.Module):
    """
    Efficient pyramid pooling: one depth-wise 3x3 conv per scale of a projected input.

    Scales above 1 upsample (bilinear), convolve and average-pool back; scales below 1
    average-pool, convolve and upsample back. The branches are batch-normalised together,
    channel-shuffled, fused by a grouped 3x3 CBR and a 1x1 conv to ``nout`` channels.
    """

    def __init__(self, nin, proj, nout, last=False):
        super().__init__()
        scales = len(PYRAMID_SCALES)
        self.projection_layer = SeqCBR(nin, proj, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(proj, proj, 3, padding=1, groups=proj, bias=False) for _ in range(scales))
        self.merge_layer = nn.Sequential(
            SeqBR(proj * scales),
            ChannelShuffle(scales),
            SeqCBR(proj * scales, proj, 3, groups=proj),
            nn.Conv2d(proj, nout, 1, bias=last),
        )
        # The last pyramid produces logits: a biased 1x1 conv and no BN + PReLU.
        self.br = None if last else SeqBR(nout)

    def forward(self, x):
        x = self.projection_layer(x)
        height, width = int(x.shape[2]), int(x.shape[3])
        branches = []
        for scale, stage in zip(PYRAMID_SCALES, self.stages):
            size = (max(int(math.ceil(height * scale)), PYRAMID_MIN_SIZE),
                    max(int(math.ceil(width * scale)), PYRAMID_MIN_SIZE))
            if scale > 1.0:
                y = _resize(x, size)
                y = adaptive_avg_pool(stage(y), (height, width))
            elif scale < 1.0:
                y = stage(adaptive_avg_pool(x, size))
                y = _resize(y, (height, width))
            else:
                y = stage(x)
            branches.append(y)
        y = self.merge_layer(torch.cat(branches, 1))
        if self.br is not None:
            y = self.br(y)
        return y


class GatedProjection(nn.Module):
    """Encoder-to-decoder projection: grouped 3x3 CBR scaled by a global sigmoid gate."""

    def __init__(self, nin, nout):
        super().__init__()
        self.wt_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(nin, nout, 1, bias=False),
            nn.Sigmoid(),
        )
        self.expansion_layer = SeqCBR(nin, nout, 3, groups=math.gcd(nin, nout))

    def forward(self, x):
        return self.expansion_layer(x) * self.wt_layer(x)


def adaptive_avg_pool(x, size):
    """
    Adaptive average pooling of an NCHW tensor to size (height, width), exportable to ONNX.

    The bins are those of ``torch.nn.functional.adaptive_avg_pool2d`` (output cell i of an
    axis averages input cells floor(i * n / m) to ceil((i + 1) * n / m)). When the output
    divides the input this is a plain average pool; otherwise each axis is pooled in turn as
    a weighted sum of a few gathered slices, operators that every ONNX exporter takes (the
    exporters reject adaptive pooling to a size that does not divide the input). In eager
    mode torch's own kernel runs (3x faster; the two differ by float rounding, 2e-7).
    """
    if not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()):
        return functional.adaptive_avg_pool2d(x, (int(size[0]), int(size[1])))
    return exportable_avg_pool(x, size)


def exportable_avg_pool(x, size):
    """Adaptive average pooling (torch's bins) from average pools, gathers and sums."""
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = int(x.shape[2]), int(x.shape[3])
    if in_h % out_h == 0 and in_w % out_w == 0:
        kernel = (in_h // out_h, in_w // out_w)
        return functional.avg_pool2d(x, kernel, kernel)
    return _pool_axis(_pool_axis(x, 2, in_h, out_h), 3, in_w, out_w)


def _pool_axis(x, dim, size_in, size_out):
    """Average the adaptive-pooling bins of one axis (dim) of x: size_in -> size_out cells."""
    if size_in == size_out:
        return x
    starts = [i * size_in // size_out for i in range(size_out)]
    ends = [-(-(i + 1) * size_in // size_out) for i in range(size_out)]
    shape = [1] * x.ndim
    shape[dim] = size_out
    total = None
    for step in range(max(e - s for s, e in zip(starts, ends))):
        index = torch.tensor([min(s + step, e - 1) for s, e in zip(starts, ends)],
                             device=x.device)
        weight = torch.tensor([1.0 / (e - s) if s + step < e else 0.0
                               for s, e in zip(starts, ends)], dtype=x.dtype, device=x.device)
        term = x.index_select(dim, index) * weight.view(shape)
        total = term if total is None else total + term
    return total


def _resize(x, size):
    """Bilinear resize with aligned corners, as used throughout the original network."""
    return functional.interpolate(x, size=size, mode='bilinear', align_corners=True)


class ESPNetv2(SegmentationModel):
    """
    ESPNetv2 segmentation network, s = 2.0, trained on Cityscapes at 1024x512.

    ``forward`` takes a normalised RGB batch (see ``PREPROCESS``) whose height and width should
    be multiples of 16 (other sizes run, but the decoder's skip features are then slightly
    misaligned) and returns logits for 20 classes (19 Cityscapes train ids, 19 =
    background) at the full input resolution (the decoder works at 1/2 and the logits are
    upsampled bilinearly, corners aligned).
    """

    num_classes = NUM_CLASSES
    preprocess = PREPROCESS
    class_set = 'cityscapes'
    name = 'espnetv2'

    def __init__(self, num_classes=NUM_CLASSES, channels=ENCODER_CHANNELS):
        super().__init__()
        self.num_classes = num_classes
        self.class_set = CLASS_SETS.get(num_classes)
        self.channels = tuple(channels)
        c1, c2, c3, c4 = channels
        d1, d2, d3 = DECODER_CHANNELS
        proj = min(num_classes // 2, DECODER_BASE)
        self.base_net = Encoder(channels)
        self.bu_dec_l1 = PyramidPool(c4, proj, d1)
        self.bu_dec_l2 = PyramidPool(d1, proj, d2)
        self.bu_dec_l3 = PyramidPool(d2, proj, d3)
        self.bu_dec_l4 = PyramidPool(d3, proj, num_classes, last=True)
        self.merge_enc_dec_l2 = GatedProjection(c3, d1)
        self.merge_enc_dec_l3 = GatedProjection(c2, d2)
        self.merge_enc_dec_l4 = GatedProjection(c1, d3)
        self.bu_br_l2 = bn_prelu(d1)
        self.bu_br_l3 = bn_prelu(d2)
        self.bu_br_l4 = bn_prelu(d3)

    def forward(self, batch):
        """Return logits (N, 20, H, W) at the input's resolution."""
        return _resize(self.logits(batch), batch.shape[2:])

    def logits(self, batch):
        """Return the decoder's half-resolution logits, before the final upsampling."""
        f1, f2, f3, f4 = self.base_net(batch)
        y = self.bu_dec_l1(f4)
        y = self.bu_br_l2(_resize(y, f3.shape[2:]) + self.merge_enc_dec_l2(f3))
        y = self.bu_dec_l2(y)
        y = self.bu_br_l3(_resize(y, f2.shape[2:]) + self.merge_enc_dec_l3(f2))
        y = self.bu_dec_l3(y)
        y = self.bu_br_l4(_resize(y, f1.shape[2:]) + self.merge_enc_dec_l4(f1))
        return self.bu_dec_l4(y)


# State-dict entries whose first dimension is the width of encoder levels 1..4.
WIDTH_KEYS = ('base_net.level1.conv.weight', 'base_net.level2_0.act.weight',
              'base_net.level3_0.act.weight', 'base_net.level4_0.act.weight')


def widths_of(state):
    """
    Return the encoder widths (levels 1..4) a state dict was trained with.

    The published ESPNetv2 models differ in the width scale s (0.5 .. 2.0), which sets these
    four widths; the rest of the network follows from them. Defaults (s = 2.0) for entries a
    state dict lacks (its load then fails with the missing keys).
    """
    state = _strip_parallel(state)
    return tuple(int(state[k].shape[0]) if k in state and state[k].ndim else d
                 for k, d in zip(WIDTH_KEYS, ENCODER_CHANNELS))


def _strip_parallel(state):
    if state and all(key.startswith('module.') for key in state):
        # Saved from a DataParallel wrapper.
        return {key[len('module.'):]: value for key, value in state.items()}
    return state


def load_weights(model, state, source='state_dict'):
    """Load ``state`` into ``model`` strictly; raise ModelError naming ``source`` on mismatch."""
    if not isinstance(state, dict):
        raise ModelError(f'{source}: expected a state_dict, got {type(state).__name__}')
    state = _strip_parallel(state)
    load_into(model, state, source,
              f'ESPNetv2 (encoder widths {list(model.channels)}, {model.num_classes} classes: '
              'option classes)')
    return model


def build(options):
    """
    Build ESPNetv2 with its Cityscapes weights, in eval mode.

    Options: ``weights`` (explicit file, '' = the published file), ``cache`` (cache
    directory, '' or None = default), ``download`` (allow fetching the published file) and
    ``classes`` (class count, default 20: other published weights, e.g. PASCAL VOC with 21,
    or fine-tuned ones; the published Cityscapes file has 20). The encoder widths (the width
    scale s of the published models) are read from the weights.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ModelError(
            f'espnetv2: unknown option(s) {", ".join(unknown)}; valid: {", ".join(OPTIONS)}')
    count = options.get('classes', NUM_CLASSES)
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ModelError(f'espnetv2: option classes must be an integer >= 2, not {count!r}')
    if count != NUM_CLASSES and not options.get('weights'):
        raise ModelError(f'espnetv2: the published Cityscapes weights have {NUM_CLASSES} '
                         f'classes; for classes {count} give your weights in model.weights')
    # Imported here so the architecture itself has no dependency on the weights code.
    from semseg_ros.core import weights

    path = weights.resolve(
        weights.ESPNETV2_CITYSCAPES,
        path=str(options.get('weights') or ''),
        cache=options.get('cache') or None,
        download=bool(options.get('download', True)),
    )
    state = weights.load_state_dict_file(path)
    channels = widths_of(state)
    try:
        model = ESPNetv2(count, channels)
    except ValueError as exc:
        raise ModelError(f'{path}: encoder widths {list(channels)} do not make an ESPNetv2: '
                         f'{exc}') from None
    model = load_weights(model, state, str(path))
    return model.eval()

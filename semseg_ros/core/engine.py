"""
The Segmenter: preprocess -> infer -> postprocess, batched and device resident.

A frame goes up to the device once (zero-copy on the CPU, a pinned staging buffer and a
non-blocking copy on CUDA); encoding conversion, resize, normalisation, inference, upsampling,
argmax and the lookup tables all run as tensor operations there; only the uint8 outputs that
were asked for come back. CUDA-only extras sit in small guarded helpers with the CPU result.
"""

from collections import namedtuple
import contextlib
import threading
import time

import numpy as np
import semseg_ros
from semseg_ros.core import render
from semseg_ros.core import runtimes
from semseg_ros.core.models.base import LETTERBOX_GREY, SegmentationModel
from semseg_ros.core.upsample import upsample_labels
import torch
import torch.nn.functional as F

OUTPUTS = ('label', 'color', 'overlay', 'drivable', 'confidence')
# Outputs that need the argmax label map.
LABEL_OUTPUTS = frozenset(('label', 'color', 'overlay', 'drivable'))
COLORS = ('rgb', 'bgr', 'rgba', 'bgra', 'mono')
# Precision -> the dtype torch computes in (autocast for fp16/bf16; int8 runs a quantized
# model on OpenVINO, see core/runtimes/int8.py, and torch stays in fp32).
PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16,
              'int8': torch.float32}
UPSAMPLE_MODES = ('logits', 'labels')
# What a model's forward returns: logits or probabilities (N, C, h, w), or class ids
# (N, h, w) / (N, 1, h, w) integers from an argmax inside the model.
OUTPUT_KINDS = ('logits', 'probabilities', 'class_ids')

Frame = namedtuple('Frame', ['array', 'color'])
Frame.__doc__ = """An image as an (H, W, C) or (H, W) uint8/uint16 array and its channel order."""


class EngineError(RuntimeError):
    """The engine cannot be set up or cannot process a frame."""


def select_device(spec='auto'):
    """Return the torch.device for 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    spec = (spec or 'auto').strip().lower()
    if spec == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if spec == 'cpu':
        return torch.device('cpu')
    if spec == 'cuda' or spec.startswith('cuda:'):
        if not torch.cuda.is_available():
            raise EngineError(
                f'device {spec!r} requested but CUDA is not available '
                f'(torch {torch.__version__}, built for CUDA {torch.version.cuda}); '
                "use device 'auto' to fall back to the CPU")
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise EngineError(f'invalid device {spec!r}: {exc}') from None
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise EngineError(f'device {spec!r} requested but only {count} CUDA device(s) exist')
        return device
    raise EngineError(f"invalid device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


class _Uploader:
    """
    Host to device copies: zero-copy on the CPU, pinned staging + non_blocking on CUDA.

    Each frame of one batch gets its own staging buffer (an asynchronous copy may still be
    reading the previous one); `reset` starts a new batch, once the last one has synchronised.
    Tensors (e.g. JPEG decoded on the device) are only moved to the device.
    """

    def __init__(self, device, pinned=True):
        self.device = device
        self.pinned = pinned and device.type == 'cuda'
        self._staging = {}
        self._used = {}

    def reset(self):
        """Start a new batch: staging buffers may be reused."""
        self._used.clear()

    def __call__(self, array):
        if isinstance(array, torch.Tensor):
            return array.to(self.device)
        if any(stride < 0 for stride in array.strides):
            array = np.ascontiguousarray(array)  # torch rejects negative strides
        host = torch.from_numpy(array)
        if self.device.type == 'cpu':
            return host
        if not self.pinned:
            return host.to(self.device)
        return self.stage(host).to(self.device, non_blocking=True)

    @staticmethod
    def _alloc(shape, dtype):
        return torch.empty(shape, dtype=dtype).pin_memory()

    def stage(self, host):
        """Copy a host tensor into this batch's own staging buffer of its shape."""
        key = (tuple(host.shape), host.dtype)
        slot = self._used.get(key, 0)
        self._used[key] = slot + 1
        buffers = self._staging.setdefault(key, [])
        if slot == len(buffers):
            buffers.append(self._alloc(host.shape, host.dtype))
        return buffers[slot].copy_(host)


def compile_model(model):
    """Replace the model's forward (and own ``logits``) by torch.compile'd versions."""
    model.forward = torch.compile(model.forward, dynamic=True)
    if getattr(type(model), 'logits', SegmentationModel.logits) is not SegmentationModel.logits:
        model.logits = torch.compile(model.logits, dynamic=True)
    return model


def _synchronize(device):
    """Wait for queued device work (CUDA only) so stage timings are honest."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def letterbox(chw, size):
    """
    Scale a (C, H, W) 0..255 frame to fit ``size`` (width, height) with its aspect ratio kept.

    The rest is padded with LETTERBOX_GREY at the bottom and right. Returns the padded frame
    and its valid region (h, w, height, width), as the postprocessing crops it.
    """
    h, w = chw.shape[1:]
    tw, th = size
    scale = min(tw / w, th / h)
    nw, nh = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
    if (nw, nh) != (w, h):
        chw = F.interpolate(chw[None], size=(nh, nw), mode='bilinear', align_corners=False)[0]
    if (nw, nh) != (tw, th):
        chw = F.pad(chw, (0, tw - nw, 0, th - nh), value=LETTERBOX_GREY)
    return chw, (nh, nw, th, tw)


class Segmenter:
    """Run a SegmentationModel on frames and produce the uint8 outputs asked for."""

    def __init__(self, model, classes, device='auto', precision='fp32', input_size=None,
                 upsample='logits', channels_last=False, overlay_alpha=0.5, warmup=True,
                 pinned_memory=True, compiled=False, max_batch=0, runtime=None, report=None,
                 int8=None):
        """
        Put the model on the device, check it against the class set and warm it up.

        input_size (width, height) overrides the model's own; None keeps it, and a model
        without one runs at each frame's size (padded to its size divisor). runtime: what
        executes the model (see core/runtimes; None = the model as built); the choice and its
        reason end up in ``self.runtime``. report: a runtimes.Reporter for its progress lines
        and warnings. int8: with precision int8, a dict of the int8.* settings
        (calibration_folder, validation_folder, max_miou_drop, calibration_frames).
        """
        if precision not in PRECISIONS:
            raise EngineError(f'precision must be one of {", ".join(PRECISIONS)}, '
                              f'not {precision!r}')
        if upsample not in UPSAMPLE_MODES:
            raise EngineError(f'upsample must be one of {", ".join(UPSAMPLE_MODES)}')
        classes.check_model(model.num_classes, getattr(model, 'name', 'the model'))
        self.output_kind = getattr(model, 'output_kind', 'logits') or 'logits'
        if self.output_kind not in OUTPUT_KINDS:
            raise EngineError(f'model output kind {self.output_kind!r} is not one of '
                              f'{", ".join(OUTPUT_KINDS)}')
        name = getattr(model, 'name', 'the model')
        # Outputs this model cannot give, with the reason; process() leaves them out.
        self.unavailable = {}
        if self.output_kind == 'class_ids':
            self.unavailable['confidence'] = (
                f'{name} outputs class ids (its argmax is inside the model), from which no '
                'per-pixel confidence can be computed: the confidence output is not produced '
                '(export the logits or probabilities to get it)')
        # Lines the node, the evaluation and the bag tools print at start-up.
        self.warnings = list(getattr(model, 'warnings', ()) or ()) + list(
            self.unavailable.values())
        self.device = select_device(device) if isinstance(device, str) else device
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.upsample = upsample
        self.channels_last = bool(channels_last)
        # Frames per forward pass. 0 = auto: every waiting frame on CUDA; one at a time on the
        # CPU, where a batch of 3 runs slower per frame than single frames (e2e_bench).
        self.max_batch = int(max_batch)
        self.classes = classes
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        spec = model.preprocess
        self.preprocess = spec
        size = tuple(input_size) if input_size else spec.input_size
        self.input_size = self._round_size(size) if size else None
        self._upload = _Uploader(self.device, pinned_memory)
        # y = x * gain + bias, per channel, in the model's channel order.
        std = torch.tensor(spec.std, dtype=torch.float32)
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        self._gain = (spec.scale / std).view(3, 1, 1).to(self.device)
        self._bias = (-mean * spec.scale / std).view(3, 1, 1).to(self.device)
        plan = None
        if precision == 'int8':
            plan = runtimes.Int8Plan(**(int8 or {}), to_batch=self.model_input,
                                     classes=classes)
        self.runtime = runtimes.prepare(
            self.model, runtime, self.device, self.input_size, upsample, precision, compiled,
            report=report, int8=plan)
        self.model = self.runtime.model
        if self.runtime.runtime != 'torch' and self.device.type == 'cpu' \
                and semseg_ros.SPIN_LATE:
            (report or runtimes.Reporter()).warning(
                f'torch was imported before semseg_ros, so its idle OpenMP threads spin '
                f"libgomp's default 300000 times after each torch step, on the cores "
                f'{self.runtime.runtime} needs (OpenVINO ran ESPNet 20-40 % slower that way '
                'here): import semseg_ros first, or set GOMP_SPINCOUNT=30000 in the '
                'environment')
        if compiled:
            compile_model(self.model)
        self._lock = threading.Lock()
        self.set_overlay_alpha(overlay_alpha)
        self.set_classes(classes)
        self.timings = {'preprocess': 0.0, 'inference': 0.0, 'postprocess': 0.0}
        self.frames = 0
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        if warmup:
            self.warmup()

    # Settings that may change at run time.
    def set_classes(self, classes):
        """Replace the class set (same class count): colors and drivable ids."""
        classes.check_model(self.model.num_classes, getattr(self.model, 'name', 'the model'))
        self.classes = classes
        self._color_lut = torch.from_numpy(classes.color_lut()).to(self.device)
        self._drivable_lut = torch.from_numpy(classes.drivable_lut()).to(self.device)

    def set_overlay_alpha(self, alpha):
        """Set the overlay opacity of the class colors, 0..1."""
        if not 0.0 <= float(alpha) <= 1.0:
            raise EngineError(f'overlay alpha must be in 0..1, got {alpha}')
        self.overlay_alpha = float(alpha)

    @property
    def label_dtype(self):
        """Return the numpy dtype of label maps (uint8 up to 256 classes, else uint16)."""
        return np.uint8 if len(self.classes) <= 256 else np.uint16

    def _round_size(self, size):
        div = max(1, int(self.preprocess.size_divisor))
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise EngineError(f'input size must be positive, got {size}')
        return (-(-w // div) * div, -(-h // div) * div)

    def warmup(self, size=None):
        """Run one forward pass on a blank frame so the first real frame is not slow."""
        w, h = size or self.input_size or (64 * self.preprocess.size_divisor,) * 2
        self.process([Frame(np.zeros((h, w, 3), np.uint8), 'rgb')], ('label',))
        self.frames = 0

    def model_input(self, rgb):
        """Return the model input (1, 3, h, w) of an RGB uint8 frame, as process() makes it."""
        _, chw = self._to_chw(Frame(rgb, 'rgb'))
        return self._batch([chw])[0][0]

    # Stages.
    def _to_chw(self, frame):
        """Upload one frame; return it and ((C, H, W) float view, channel order for the model)."""
        array, color = frame
        if color not in COLORS:
            raise EngineError(f'unknown channel order {color!r}; expected one of {COLORS}')
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
            raise EngineError(f'frame must be (H, W), (H, W, 1|3|4) and not empty, '
                              f'got {tuple(array.shape)}')
        dtype = array.dtype
        if isinstance(array, torch.Tensor):
            dtype = {torch.uint8: np.uint8, torch.uint16: np.uint16}.get(dtype, dtype)
        if dtype not in (np.uint8, np.uint16):
            raise EngineError(f'frame dtype must be uint8 or uint16, got {array.dtype}')
        hwc = self._upload(array)
        channels = hwc.shape[2]
        if channels == 1:
            order = [0, 0, 0]
        elif color.startswith('bgr'):
            order = [2, 1, 0]
        else:
            order = [0, 1, 2]
        if self.preprocess.channel_order == 'bgr':
            order = order[::-1]
        # Float in the frame's own (H, W, C) layout, seen as a channels-last (C, H, W) view:
        # converting and resizing in that layout is about twice as fast on the CPU as a
        # planar copy first; the channels are put in order after the resize.
        chw = (hwc[:, :, :3] if channels == 4 else hwc).to(torch.float32)
        if hwc.dtype != torch.uint8:
            chw.mul_(255.0 / 65535.0)
        return hwc, (chw.permute(2, 0, 1), order)

    def _batch(self, chws):
        """Resize (or pad) and normalise frames into batches: [(tensor, [(index, valid)])]."""
        groups = {}
        for i, (chw, order) in enumerate(chws):
            h, w = chw.shape[1:]
            if self.input_size:
                tw, th = self.input_size
                valid = (th, tw, th, tw)
                if (w, h) != (tw, th) and self.preprocess.resize == 'letterbox':
                    chw, valid = letterbox(chw, (tw, th))
                elif (w, h) != (tw, th):
                    chw = F.interpolate(chw[None], size=(th, tw), mode='bilinear',
                                        align_corners=False)[0]
            else:
                tw, th = self._round_size((w, h))
                if (w, h) != (tw, th):
                    chw = F.pad(chw, (0, tw - w, 0, th - h))
                valid = (h, w, th, tw)
            if order != [0, 1, 2] or not chw.is_contiguous():
                chw = chw[order]  # a planar copy in the model's channel order
            groups.setdefault((th, tw), []).append((i, valid, chw))
        limit = self.max_batch or (1 if self.device.type == 'cpu' else len(chws))
        chunks = [items[i:i + limit] for items in groups.values()
                  for i in range(0, len(items), limit)]
        batches = []
        for items in chunks:
            if len(items) == 1:
                batch = items[0][2][None]  # the frame's own tensor: no copy
            else:
                batch = torch.stack([chw for _, _, chw in items])
            batch.mul_(self._gain).add_(self._bias)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            batches.append((batch, [(i, valid) for i, valid, _ in items]))
        return batches

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _infer(self, batch):
        # In 'logits' mode the engine resizes the logits itself, so it takes them at the
        # model's own output resolution (ESPNetv2: half the input) when the model offers it.
        forward = self.model
        if self.upsample == 'logits':
            forward = getattr(self.model, 'logits', self.model)
        with self._autocast():
            logits = forward(batch)
        if self.output_kind == 'class_ids':
            return self._class_ids(logits)
        if logits.ndim != 4 or logits.shape[1] != self.model.num_classes:
            raise EngineError(
                f'model returned shape {tuple(logits.shape)}; expected (N, '
                f'{self.model.num_classes}, h, w)')
        return logits.float()

    def _class_ids(self, ids):
        """Check a class-id output and return it as (N, h, w) int64."""
        if isinstance(ids, torch.Tensor) and ids.ndim == 4 and ids.shape[1] == 1:
            ids = ids[:, 0]
        if (not isinstance(ids, torch.Tensor) or ids.ndim != 3 or ids.is_floating_point()
                or ids.is_complex()):
            got = (f'{ids.dtype} {tuple(ids.shape)}' if isinstance(ids, torch.Tensor)
                   else type(ids).__name__)
            raise EngineError(f'model output class ids must be an integer (N, h, w) tensor; '
                              f'got {got}')
        ids = ids.long()
        if ids.numel():
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.model.num_classes:
                raise EngineError(f'model output class id {low if low < 0 else high} is '
                                  f'outside 0..{self.model.num_classes - 1} (its class count)')
        return ids

    def _postprocess(self, logits, valid, image, wanted):
        """Turn one frame's (C, h, w) logits into the wanted outputs at the frame's size."""
        ph, pw = logits.shape[-2:]
        vh, vw, th, tw = valid
        if (vh, vw) != (th, tw):
            # Drop the padding, at the logits' own resolution (often a fraction of the input).
            logits = logits[..., :-(-vh * ph // th), :-(-vw * pw // tw)]
        h, w = image[0].shape[:2]
        resize = tuple(logits.shape[-2:]) != (h, w)
        out = {}
        if self.output_kind == 'class_ids':
            return self._render(self._ids_to_size(logits, (h, w)), image, wanted, out)
        top = logits.max(dim=0)  # max().indices is much faster than argmax on the CPU
        if 'confidence' in wanted:
            # At the logits' resolution, then resized like an image.
            if self.output_kind == 'probabilities':
                conf = top.values.clamp(0.0, 1.0)
            else:
                conf = render.max_probability(logits, top.values)
            if resize:
                conf = F.interpolate(conf[None, None], size=(h, w), mode='bilinear',
                                     align_corners=False)[0, 0]
            out['confidence'] = render.confidence(conf)
        if wanted & LABEL_OUTPUTS:
            if not resize:
                labels = top.indices
            elif self.upsample == 'logits':
                labels = upsample_labels(logits, (h, w), top.indices)
            else:
                labels = self._ids_to_size(top.indices, (h, w))
            self._render(labels, image, wanted, out)
        return out

    @staticmethod
    def _ids_to_size(ids, size):
        """Return (h, w) class ids resized to size with nearest neighbours."""
        if tuple(ids.shape) == tuple(size):
            return ids
        return F.interpolate(ids[None, None].float(), size=tuple(size),
                             mode='nearest')[0, 0].long()

    def _render(self, labels, image, wanted, out):
        """Add the label, color, overlay and drivable outputs of a label map to ``out``."""
        if wanted & LABEL_OUTPUTS:
            if 'label' in wanted:
                dtype = torch.uint8 if self.label_dtype == np.uint8 else torch.int32
                out['label'] = labels.to(dtype)
            if 'color' in wanted or 'overlay' in wanted:
                colors = render.colorize(labels, self._color_lut)
                if 'color' in wanted:
                    out['color'] = colors
                if 'overlay' in wanted:
                    out['overlay'] = render.overlay(self._rgb(*image), colors, self.overlay_alpha)
            if 'drivable' in wanted:
                out['drivable'] = render.drivable(labels, self._drivable_lut)
        return out

    @staticmethod
    def _rgb(hwc, order):
        """Return the uploaded (H, W, C) frame as (H, W, 3) uint8 RGB for the overlay."""
        rgb = hwc
        if rgb.dtype != torch.uint8:
            rgb = (rgb.to(torch.float32) * (255.0 / 65535.0)).round_().to(torch.uint8)
        if rgb.shape[2] == 1:
            return rgb.expand(-1, -1, 3)
        if order == [0, 1, 2] and rgb.shape[2] == 3:
            return rgb
        return rgb[:, :, order]

    def process(self, frames, outputs=OUTPUTS):
        """
        Segment frames; return one dict per frame of numpy arrays for the outputs asked for.

        label: (H, W) uint8 (uint16 past 256 classes); color and overlay: (H, W, 3) uint8 RGB;
        drivable: (H, W) uint8 0/255; confidence: (H, W) uint8 max softmax x 255 (the max
        probability for a model that outputs probabilities). Outputs in ``self.unavailable``
        (confidence of a model that outputs class ids) are left out of the dicts.
        """
        wanted = set(outputs)
        unknown = wanted - set(OUTPUTS)
        if unknown:
            raise EngineError(f'unknown outputs {sorted(unknown)}; valid: {OUTPUTS}')
        wanted -= set(self.unavailable)  # reported once in self.warnings, never faked
        if not frames or not wanted:
            return [{} for _ in frames]
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            self._upload.reset()
            uploaded = [self._to_chw(f) for f in frames]
            batches = self._batch([chw for _, chw in uploaded])
            _synchronize(self.device)
            t1 = time.perf_counter()
            results = [None] * len(frames)
            inference = 0.0
            # Each batch is postprocessed before the next forward: a runtime may hand back
            # the same output tensor for every batch of a shape (openvino_runtime).
            for batch, index in batches:
                start = time.perf_counter()
                logits = self._infer(batch)
                _synchronize(self.device)
                inference += time.perf_counter() - start
                for row, (i, valid) in enumerate(index):
                    image = (uploaded[i][0], self._rgb_order(frames[i]))
                    results[i] = self._postprocess(logits[row], valid, image, wanted)
            host = [{k: self._download(v) for k, v in r.items()} for r in results]
            t3 = time.perf_counter()
        self.timings = {'preprocess': t1 - t0, 'inference': inference,
                        'postprocess': t3 - t1 - inference}
        self.frames += len(frames)
        return host

    @staticmethod
    def _rgb_order(frame):
        array, color = frame
        if array.ndim == 2 or array.shape[2] == 1:
            return [0]
        return [2, 1, 0] if color.startswith('bgr') else [0, 1, 2]

    def _download(self, tensor):
        array = tensor.cpu().numpy()
        if array.dtype == np.int32:
            array = array.astype(np.uint16)
        return array

    def labels(self, frames):
        """Return only the label maps of frames (evaluation helper)."""
        return [r['label'] for r in self.process(frames, ('label',))]

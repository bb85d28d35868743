"""
precision int8: post-training static quantization of a model's ONNX export for OpenVINO (CPU).

NNCF (OpenVINO's quantization library) calibrates the activations on frames of
``int8.calibration_folder`` and checks the result with its accuracy control: layers go back
to fp32, most sensitive first, until the mIoU drop is at most ``int8.max_miou_drop``. The
mIoU is measured on ``int8.validation_folder`` (a dataset: images/ and labels/ of the model's
class ids) or, without one, on held-out calibration frames against the fp32 model's own labels
(stricter: any change counts). A model whose drop stays above the limit is refused: the fp32
export runs instead, with a warning. Quantized models (OpenVINO IR) are cached beside the
export, keyed by the export, the frames and the settings; the JSON record keeps the figures.
"""

import contextlib
from dataclasses import dataclass
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from typing import Callable

import numpy as np
from semseg_ros.core.metrics import ConfusionMatrix
from semseg_ros.core.runtimes import export as onnx_export
from semseg_ros.core.runtimes.base import Heartbeat, RuntimeSetupError
from semseg_ros.core.train import dataset
from semseg_ros.core.weights import sha256_of
import torch
import torch.nn.functional as F

# Quantizing and ranking a layer group runs the model on this many validation frames at most.
RANKING_FRAMES = 8
# Held-out calibration frames that stand in for a validation set without labels.
HELD_OUT_FRAMES = 16
# Layer groups the accuracy control may put back to fp32 before it gives up.
MAX_REVERTS = 12
INSTALL = 'pip install nncf'
# Set while nncf imports: NNCF then sends no usage telemetry (see nncf_module).
TELEMETRY_OFF = 'NNCF_CI'


class Int8Refused(RuntimeError):
    """The model cannot run in int8 here (quantization failed, or its mIoU dropped too much)."""


@dataclass
class Int8Plan:
    """What ``precision: int8`` asks for, and how frames become model inputs."""

    calibration_folder: str
    validation_folder: str = ''
    max_miou_drop: float = 0.01
    calibration_frames: int = 64
    to_batch: Callable = None  # RGB uint8 (H, W, 3) -> (1, 3, h, w) float tensor
    classes: object = None  # ClassSet of the model's outputs (labels are checked against it)


def check_plan(plan):
    """Raise RuntimeSetupError when the plan's folders or package are unusable."""
    nncf_module()
    calibration_files(plan)
    if plan.validation_folder:
        validation_pairs(plan)


def nncf_module():
    """
    Import NNCF quietly; a missing package raises RuntimeSetupError with the fix.

    NNCF sends usage telemetry (Google Analytics, through openvino-telemetry) from every
    quantization unless the user opted out, and a robot should not do that unasked. NNCF
    decides at import time, and its switch is the NNCF_CI variable, so that variable is set
    while it imports.
    """
    first = 'nncf' not in sys.modules
    before = os.environ.get(TELEMETRY_OFF)
    try:
        if first:
            os.environ[TELEMETRY_OFF] = '1'
        import nncf
    except ImportError as err:
        raise RuntimeSetupError(
            f'precision int8 needs the Python package nncf, which cannot be imported ({err}): '
            f'{INSTALL}, or set precision to fp32') from None
    finally:
        if first and before is None:
            os.environ.pop(TELEMETRY_OFF, None)
    nncf.set_log_level(logging.WARNING)
    return nncf


def image_folder(folder):
    """Return the folder holding the images: ``folder/images`` when it exists, else itself."""
    images = os.path.join(folder, 'images')
    return images if os.path.isdir(images) else folder


def spread(items, count):
    """Return ``count`` of the items, evenly spread over them (in order)."""
    count = min(len(items), max(0, int(count)))
    return [items[int(i * len(items) / count)] for i in range(count)]


def calibration_files(plan):
    """
    Return (calibration, held out) image paths of the calibration folder, spread over it.

    Without a validation folder, up to HELD_OUT_FRAMES frames that do not calibrate are held
    out for the accuracy check: from those left over, or, when the calibration takes them all,
    a quarter of the folder (at least two frames are then needed).
    """
    folder = str(plan.calibration_folder or '').strip()
    if not folder:
        raise RuntimeSetupError('precision int8 needs int8.calibration_folder: a folder of '
                                "frames from the robot's cameras (png, jpg)")
    try:
        files = [str(p) for p in dataset.image_files(image_folder(folder))]
    except dataset.DatasetError as exc:
        raise RuntimeSetupError(f'int8.calibration_folder: {exc}') from None
    if not files:
        raise RuntimeSetupError(f'int8.calibration_folder {folder} holds no image '
                                '(png, jpg, bmp)')
    chosen = spread(files, plan.calibration_frames)
    if plan.validation_folder:
        return chosen, []
    rest = [f for f in files if f not in set(chosen)]
    if not rest:
        if len(files) < 2:
            raise RuntimeSetupError(
                f'int8.calibration_folder {folder} holds 1 image: without '
                'int8.validation_folder some frames are held out to check the accuracy, so at '
                'least 2 are needed (dozens make a sound check)')
        rest = spread(files, max(1, len(files) // 4))
        chosen = [f for f in files if f not in set(rest)]
    return chosen, spread(rest, HELD_OUT_FRAMES)


def validation_pairs(plan):
    """Return the (image, label) pairs of int8.validation_folder."""
    try:
        return [(str(i), str(lb)) for i, lb in dataset.pairs(plan.validation_folder)]
    except dataset.DatasetError as exc:
        raise RuntimeSetupError(f'int8.validation_folder: {exc}') from None


def digest(plan, source_key):
    """Return the cache key (hex) of a quantized model: export, frames, settings, versions."""
    nncf = nncf_module()
    import openvino
    chosen, held_out = calibration_files(plan)
    files = chosen + held_out
    if plan.validation_folder:
        files += [p for pair in validation_pairs(plan) for p in pair]
    # By content: a copy or a re-sync of the same frames (new file times) keeps the key.
    fields = {'export': source_key, 'files': [sha256_of(path) for path in files],
              'validation': bool(plan.validation_folder),
              'max_drop': float(plan.max_miou_drop), 'frames': int(plan.calibration_frames),
              'nncf': nncf.__version__, 'openvino': openvino.__version__,
              'rules': [RANKING_FRAMES, HELD_OUT_FRAMES, MAX_REVERTS]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def read_rgb(path):
    """Return an image file as RGB uint8; RuntimeSetupError when unreadable."""
    try:
        image = dataset.read_image(path)
    except dataset.DatasetError as exc:
        raise RuntimeSetupError(f'int8: {exc}') from None
    return np.ascontiguousarray(image[:, :, ::-1])


def predicted_labels(logits, size):
    """Return the argmax labels of (1, C, h, w) logits, resized (nearest) to size (h, w)."""
    labels = torch.as_tensor(np.asarray(logits)).argmax(1, keepdim=True).float()
    if tuple(labels.shape[-2:]) != tuple(size):
        labels = F.interpolate(labels, size=tuple(size), mode='nearest')
    return labels[0, 0].to(torch.int64).numpy()


def miou(run, items, num_classes, ignore_id):
    """Return the mIoU of ``run`` (input array -> logits) over (input, labels) items."""
    matrix = ConfusionMatrix(num_classes, ignore_id)
    for inputs, labels in items:
        matrix.update(predicted_labels(run(inputs), labels.shape), labels)
    value = matrix.mean_iou()
    return 0.0 if np.isnan(value) else value


def check_classes(plan):
    """Raise RuntimeSetupError when the validation set's classes.yaml names other classes."""
    own = os.path.join(plan.validation_folder, dataset.CLASSES_FILE)
    if not os.path.isfile(own):
        return
    try:
        names = dataset.dataset_classes(plan.validation_folder).names
    except dataset.DatasetError as exc:
        raise RuntimeSetupError(f'int8.validation_folder: {exc}') from None
    model = plan.classes.names
    if [n.strip().lower() for n in names] != [n.strip().lower() for n in model]:
        raise RuntimeSetupError(
            f'int8.validation_folder: its {dataset.CLASSES_FILE} names {len(names)} classes '
            f'({", ".join(names[:4])}, ...), the model {len(model)} ({", ".join(model[:4])}, '
            "...): the labels must be the model's class ids")


def reference_items(plan, held_out, fp32_run):
    """Return ((input, labels) items, what the labels are) for the accuracy check."""
    if plan.validation_folder:
        check_classes(plan)
        items = []
        for image, label in validation_pairs(plan):
            try:
                ids = dataset.read_label(label, plan.classes).astype(np.int64)
            except dataset.DatasetError as exc:
                raise RuntimeSetupError(f'int8.validation_folder: {exc}') from None
            rgb = read_rgb(image)
            if ids.shape != rgb.shape[:2]:
                raise RuntimeSetupError(f'int8.validation_folder: {label} is '
                                        f'{ids.shape[1]}x{ids.shape[0]}, its image '
                                        f'{rgb.shape[1]}x{rgb.shape[0]}')
            items.append((plan.to_batch(rgb).numpy().copy(), ids))
        return items, f'labels of {len(items)} validation frames'
    items = []
    for path in held_out:
        rgb = read_rgb(path)
        inputs = plan.to_batch(rgb).numpy().copy()
        items.append((inputs, predicted_labels(fp32_run(inputs), rgb.shape[:2])))
    return items, f"the fp32 model's labels on {len(items)} held-out calibration frames"


def quantized(onnx_path, source_key, plan, cache, report):
    """
    Return (OpenVINO IR path, figures) of the int8 model of an ONNX export.

    From the cache when this export was quantized with the same frames and settings; else
    quantized now (minutes for a large model; progress goes to ``report.info``). Raises
    Int8Refused when the model cannot run in int8 (figures in the message), RuntimeSetupError
    when the plan is unusable.
    """
    key = digest(plan, source_key)
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    folder = os.path.join(cache, 'int8')
    os.makedirs(folder, exist_ok=True)
    xml = os.path.join(folder, f'{stem}-int8-{key[:16]}.xml')
    record_path = xml[:-4] + '.json'
    record = onnx_export.read_record(record_path)
    if record.get('key') == key and 'accepted' in record:
        if not record['accepted']:
            raise Int8Refused(record.get('reason', 'refused before'))
        if os.path.isfile(xml):
            report.info(f'int8: quantized model from the cache: {xml}')
            return xml, record
    with Heartbeat(report.info, f'int8: quantizing {stem} with NNCF (cache {folder})', 30.0), \
            progress_to(report.info):
        record = _quantize(onnx_path, xml, plan)
    record['key'] = key
    onnx_export.write_record(record_path, record)
    if not record['accepted']:
        raise Int8Refused(record['reason'])
    return xml, record


class LineStream(io.TextIOBase):
    """A text stream that hands each complete line to ``info``, without colour codes."""

    def __init__(self, info):
        super().__init__()
        self.info = info
        self.rest = ''

    def writable(self):
        return True

    def write(self, text):
        self.rest += text
        *lines, self.rest = self.rest.split('\n')
        for line in lines:
            line = re.sub('\x1b\\[[0-9;?]*[A-Za-z]', '', line)  # ANSI colours, cursor moves
            text_only = ' '.join(re.sub('[\u2500-\u259f]+', ' ', line).split())  # the bars
            if text_only:
                self.info(f'int8: NNCF: {text_only}')
        return len(text)


@contextlib.contextmanager
def progress_to(info):
    """
    Send rich's console output meanwhile (NNCF's progress bars) to ``info``, line by line.

    NNCF draws its steps with rich's global console on stdout, which in a node is the launch
    log; there they become report lines like the others ('int8: NNCF: Statistics collection
    100% 16/16 ...'). Only rich's console is redirected: other output, such as a tool's own
    progress lines on stdout, is not held back.
    """
    try:
        import rich
    except ImportError:  # NNCF without rich: nothing to redirect
        yield
        return
    stream = LineStream(info)
    rich.reconfigure(file=stream)
    try:
        yield
    finally:
        rich.reconfigure()  # the default console again (stdout, looked up when it writes)
        stream.write('\n')


def _quantize(onnx_path, xml, plan):
    """
    Quantize with accuracy control; save the IR when accepted; return the record.

    A failure of NNCF raises Int8Refused (not cached, so the next start tries again).
    """
    nncf = nncf_module()
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    start = time.monotonic()
    core = ov.Core()
    config = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1,
              'INFERENCE_NUM_THREADS': max(1, torch.get_num_threads()),
              'INFERENCE_PRECISION_HINT': 'f32'}
    model = core.read_model(onnx_path)
    fp32 = core.compile_model(model, 'CPU', config)

    def fp32_run(inputs):
        return fp32(inputs)[0]

    chosen, held_out = calibration_files(plan)
    calibration = [plan.to_batch(read_rgb(p)).numpy().copy() for p in chosen]
    items, reference = reference_items(plan, held_out, fp32_run)
    if not items:
        raise RuntimeSetupError('int8: no frame to check the accuracy on')
    classes = plan.classes
    ignore = classes.ignore_id if plan.validation_folder else None
    count = len(classes)

    def validate(compiled, data):
        return miou(lambda x: compiled(x)[0], data, count, ignore)

    base = validate(fp32, items)
    restorer = AdvancedAccuracyRestorerParameters(
        max_num_iterations=MAX_REVERTS, ranking_subset_size=min(len(items), RANKING_FRAMES))
    try:
        result = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(calibration), nncf.Dataset(items, lambda item: item[0]),
            validation_fn=validate, max_drop=float(plan.max_miou_drop),
            drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calibration), advanced_accuracy_restorer_parameters=restorer)
    except Exception as exc:  # noqa: B902 - NNCF and OpenVINO raise many types
        # Not recorded: a failure of the library is not a verdict on the model.
        raise Int8Refused(f'NNCF quantization failed: {type(exc).__name__}: '
                          f'{str(exc).strip()[:300]}') from None
    value = validate(core.compile_model(result, 'CPU', config), items)
    drop = base - value
    figures = {'fp32_miou': base, 'int8_miou': value, 'drop': drop,
               'max_drop': float(plan.max_miou_drop), 'reference': reference,
               'calibration_frames': len(calibration), 'seconds': time.monotonic() - start}
    text = (f'mIoU {base:.4f} fp32 -> {value:.4f} int8 (drop {drop:.4f}, limit '
            f'{plan.max_miou_drop:.4f}) on {reference}')
    if drop > float(plan.max_miou_drop) + 1e-9:
        return dict(figures, accepted=False, reason='int8 refused: ' + text)
    ov.save_model(result, xml, compress_to_fp16=False)
    return dict(figures, accepted=True, reason=text)

"""
Build the Segmenter that a Settings object describes (shared by the node and the tools).

ROS-free: the live node and the offline bag tool call the same functions, so one params file
gives the same model, class set, drivable classes and engine options in both.
"""

from semseg_ros.core import classes as class_sets
from semseg_ros.core.engine import Segmenter
from semseg_ros.core.models.loader import DOWNLOAD_BACKENDS, load_model, PICKLE_BACKENDS
from semseg_ros.core.runtimes import Reporter

__all__ = ['DOWNLOAD_BACKENDS', 'PICKLE_BACKENDS', 'build_model', 'build_segmenter',
           'describe', 'load_classes']


def build_model(settings):
    """
    Create the model of settings.backend (or auto) with its weights and model.options.

    A model card found beside model.weights (or in its directory) is applied
    (semseg_ros.core.models.loader).
    """
    return load_model(settings.backend, settings.weights, settings.options,
                      download=settings.download, allow_pickle=settings.allow_pickle)


def load_classes(settings, model):
    """
    Return (base, classes): the class set, and the same with drivable_classes applied.

    The class set is settings.classes, else the model's class-set name, else the classes the
    model carries, else a generic one; the node
    keeps `base` to apply later changes of drivable_classes.
    """
    name = settings.classes or model.class_set
    if name:
        base = class_sets.load(name)
    elif getattr(model, 'classes', None) is not None:
        base = model.classes  # the model's own names (Hugging Face id2label, YOLO names)
    else:
        base = class_sets.generic(model.num_classes)
    classes = base.with_drivable(settings.drivable_classes) if settings.drivable_classes \
        else base
    return base, classes


def describe(segmenter, settings):
    """Return one line naming the model, device, input size, class set and drivable classes."""
    size = 'frame size' if segmenter.input_size is None else '%dx%d' % segmenter.input_size
    classes = segmenter.classes
    drivable = [classes.names[i] for i in classes.drivable] or ['none']
    name = getattr(segmenter.model, 'name', 'model')
    backend = getattr(segmenter.model, 'backend', None) or settings.backend
    if settings.backend == 'auto':
        backend = f'auto -> {backend}'
    return (f'model {backend} ({name}) on {segmenter.device} {settings.precision}, '
            f'runtime {segmenter.runtime.summary()}, input {size}, {len(classes)} classes '
            f'from {classes.source}, drivable: ' + ', '.join(drivable))


def build_segmenter(settings, log=None, warn=None):
    """
    Build the model, class set and Segmenter of settings; log(line) gets a summary line.

    The model runs on settings.runtime; log gets its progress lines. warn(line) gets the
    runtime's warnings and each of the segmenter's warnings (assumed preprocessing, outputs the
    model cannot give); the latter also stay in ``segmenter.warnings``.

    Errors propagate (ModelError, ClassSetError, EngineError, OSError): the caller decides
    whether they are fatal.
    """
    model = build_model(settings)
    _, classes = load_classes(settings, model)
    segmenter = Segmenter(
        model, classes, device=settings.device, precision=settings.precision,
        input_size=settings.input_size, upsample=settings.upsample,
        channels_last=settings.channels_last, overlay_alpha=settings.overlay_alpha,
        warmup=settings.warmup, compiled=settings.compiled, max_batch=settings.max_batch,
        runtime=settings.runtime, report=Reporter(log, warn), int8=settings.int8)
    if log is not None:
        log(describe(segmenter, settings))
    if warn is not None:
        for line in segmenter.warnings:
            warn(line)
    return segmenter

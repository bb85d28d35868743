"""Model backends by name; each is imported only when a model of its kind is built."""

import importlib

from semseg_ros.core.models.base import ModelError, SegmentationModel

# backend name -> 'module:function'; the function takes the options dict and returns a
# SegmentationModel. Strings keep optional libraries out of the import of this module.
_BACKENDS = {
    'espnet': 'semseg_ros.core.models.espnet:build',
    'espnetv2': 'semseg_ros.core.models.espnetv2:build',
    'torchscript': 'semseg_ros.core.models.torchscript:build',
    'export': 'semseg_ros.core.models.export:build',
    'onnx': 'semseg_ros.core.models.onnx:build',
    'torchvision': 'semseg_ros.core.models.torchvision:build',
    'huggingface': 'semseg_ros.core.models.huggingface:build',
    'smp': 'semseg_ros.core.models.smp:build',
    'ultralytics': 'semseg_ros.core.models.ultralytics:build',
}


def available_backends():
    """Return the registered backend names, sorted."""
    return sorted(_BACKENDS)


def register(backend, target):
    """Register (or replace) a backend as a 'module:function' string."""
    module, sep, func = str(target).partition(':')
    if not module or not sep or not func:
        raise ValueError(f"backend target must be 'module:function', got {target!r}")
    _BACKENDS[str(backend)] = str(target)


def check_options(backend, options, defaults):
    """Return ``defaults`` updated with ``options``; unknown keys raise ModelError."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ModelError(
            f'unknown option(s) {", ".join(unknown)} for model backend {backend!r}; '
            f'valid: {", ".join(sorted(defaults)) or "none"}')
    merged = dict(defaults)
    merged.update(options)
    return merged


def create_model(backend, **options):
    """
    Build the model of ``backend`` with its options (see each backend's ``build``).

    ``auto`` infers the backend from options['weights'] and applies a model card found for
    it (see ``loader.load_model``).
    """
    if backend == 'auto':
        from semseg_ros.core.models.loader import load_model

        options = dict(options)
        return load_model('auto', options.pop('weights', ''), options,
                          download=options.pop('download', True),
                          allow_pickle=options.pop('allow_pickle', False))
    target = _BACKENDS.get(backend)
    if target is None:
        raise ModelError(
            f'unknown model backend {backend!r}; valid: {", ".join(available_backends())}')
    module_name, _, func_name = target.partition(':')
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(
            f'model backend {backend!r} cannot be used: importing {module_name} failed '
            f'({err}); install what it needs') from err
    builder = getattr(module, func_name, None)
    if builder is None:
        raise ModelError(f'model backend {backend!r}: {module_name} has no {func_name}()')
    model = builder(dict(options))
    if not isinstance(model, SegmentationModel):
        raise ModelError(
            f'model backend {backend!r} returned a {type(model).__name__}, '
            f'not a SegmentationModel')
    return model

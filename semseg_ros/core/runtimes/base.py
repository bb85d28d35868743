"""What every runtime adapter shares: errors, the choice made, threads and a progress line."""

from dataclasses import dataclass, field
import importlib
import threading
import time
import warnings

from semseg_ros.core.models.base import ModelError
import torch

RUNTIMES = ('auto', 'torch', 'onnxruntime', 'openvino', 'tensorrt')
# The Python package each non-torch runtime needs.
PACKAGES = {'onnxruntime': 'onnxruntime', 'openvino': 'openvino', 'tensorrt': 'onnxruntime'}
INSTALL = {
    'onnxruntime': 'pip install onnxruntime',
    'openvino': 'pip install openvino',
    'tensorrt': 'pip install onnxruntime-gpu and TensorRT (its TensorrtExecutionProvider)',
}


class RuntimeSetupError(ModelError):
    """A runtime cannot run this model here (missing package or provider, wrong device)."""


class ExportError(RuntimeError):
    """A torch module could not be exported to ONNX or its export does not match it."""


@dataclass
class RuntimeChoice:
    """The runtime that executes the model, why, and how (for the log and diagnostics)."""

    runtime: str
    requested: str
    reason: str
    threads: int = 0
    model: object = None
    fallbacks: list = field(default_factory=list)

    def note_fallback(self, text):
        """Record that one input size runs on torch instead (text says which and why)."""
        self.fallbacks.append(text)

    def summary(self):
        """Return one line: runtime (reason; threads; sizes that fell back to torch)."""
        extra = [self.reason] if self.reason else []
        if self.threads and self.runtime != 'torch':
            extra.append(f'{self.threads} threads')
        extra += [f'torch at {text}' for text in self.fallbacks]
        return self.runtime + (f' ({"; ".join(extra)})' if extra else '')


class Reporter:
    """Where runtime messages go: info lines and warnings (default: Python warnings)."""

    def __init__(self, info=None, warning=None):
        self._info = info
        self._warning = warning

    def info(self, text):
        """Report a line of progress."""
        if self._info is not None:
            self._info(text)

    def warning(self, text):
        """Report a problem the model survives (e.g. a fallback to torch)."""
        if self._warning is not None:
            self._warning(text)
        else:
            warnings.warn(text, RuntimeWarning, stacklevel=3)


def import_runtime(name):
    """Import the package of a runtime; a missing one raises RuntimeSetupError with the fix."""
    package = PACKAGES[name]
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise RuntimeSetupError(
            f'model.runtime {name!r} needs the Python package {package!r}, which cannot be '
            f'imported ({err}): {INSTALL[name]}, or set model.runtime to auto or torch') from None


def available(name):
    """Return True when the package of a runtime can be imported."""
    try:
        import_runtime(name)
    except RuntimeSetupError:
        return False
    return True


def thread_budget():
    """
    Return the intra-op threads a runtime may use: torch's own (the node's budget).

    The engine runs preprocessing and postprocessing with torch and inference with the runtime,
    one after the other on one worker thread, so the two pools never compute at the same time;
    giving both torch's count uses the cores the node was given and no more. torch's idle
    OpenMP workers spin only briefly after its work (GOMP_SPINCOUNT, semseg_ros/__init__.py).
    """
    return max(1, int(torch.get_num_threads()))


class Heartbeat:
    """
    A context manager that reports progress every ``period`` s while a slow step runs.

    TensorRT engine builds take minutes: the log must say what is happening, never block
    silently.
    """

    def __init__(self, report, what, period=10.0):
        self.report = report
        self.what = what
        self.period = float(period)
        self._done = threading.Event()
        self._thread = None
        self._start = 0.0

    def __enter__(self):
        self._start = time.monotonic()
        self.report(f'{self.what}: started')
        self._thread = threading.Thread(target=self._beat, name='semseg_heartbeat', daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._done.wait(self.period):
            self.report(f'{self.what}: still running, {time.monotonic() - self._start:.0f} s')

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        state = 'failed' if exc[0] is not None else 'done'
        self.report(f'{self.what}: {state} in {time.monotonic() - self._start:.1f} s')
        return False

"""
Live model swap: build a new engine beside the running one, exchange them between two batches.

The owner of a running Segmenter (the node) calls ``ModelSwap.swap(settings, ...)`` with the
new settings. The model is built and warmed up on a thread of its own while the worker goes on
with the old one; the worker runs each batch inside ``ModelSwap.batch()``, so the exchange
waits for at most the batch in flight, and no batch (and no frame) sees two models. A model
that fails to load leaves the old one running, and the reason comes back in the result.

The call returns once the new model runs (or has failed): a set-parameters call that triggers
a swap is answered with the outcome, which is what a caller needs to know.

Memory: both models are resident until the exchange; the old one is freed right after it
(garbage-collected, and on CUDA the cached blocks released), so the peak is the two models
together. Running out of device memory while loading is reported like any other failure.

ROS-free: the node turns the results into parameter results, log lines and diagnostics.
"""

from concurrent.futures import ThreadPoolExecutor
import contextlib
from dataclasses import dataclass
import gc
import threading
import time

from semseg_ros.core import pipeline
from semseg_ros.core import settings as cfg
import torch

# Parameters whose change rebuilds the engine (Spec.change == 'swap').
SWAP_PARAMETERS = frozenset(s.name for s in cfg.PARAMETERS if s.change == 'swap')
# Longest reason given back (parameter result, diagnostics); the log has the whole error.
REASON_LIMIT = 600


def needs_swap(names):
    """Return True when any of the parameter names rebuilds the engine."""
    return any(name in SWAP_PARAMETERS for name in names)


def build_engine(settings, log=None):
    """Return (segmenter, base class set) for settings: what configure builds."""
    segmenter = pipeline.build_segmenter(settings, log)
    base = pipeline.load_classes(settings, segmenter.model)[0]
    return segmenter, base


def class_summary(classes):
    """Return 'name (N classes: a, b, c, ...)' for a class set."""
    names = ', '.join(classes.names[:6]) + (', ...' if len(classes) > 6 else '')
    return f'{classes.name} ({len(classes)} classes: {names})'


def clip(text, limit=REASON_LIMIT):
    """Return text cut to limit characters, saying how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f'{text[:limit]}... ({len(text) - limit} more characters in the log)'


def _mib(value):
    return f'{value / 2**20:.0f} MiB'


def _free():
    """
    Where CUDA is in use, collect garbage and give the cached blocks back to the driver.

    On the CPU the old model's memory goes back when its last reference does; a full
    collection there would only hold the interpreter lock (and the worker) for a while.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


@dataclass
class SwapResult:
    """The outcome of one swap attempt."""

    ok: bool
    reason: str = ''  # why it failed ('' on success), clipped to REASON_LIMIT
    detail: str = ''  # the whole error, for the log
    seconds: float = 0.0  # load and warm-up time of the new model
    model: str = ''  # the model that runs after the attempt (pipeline.describe)
    classes: str = ''  # 'old -> new' class sets on success
    classes_changed: bool = False
    memory: str = ''  # CUDA: allocated before, at the peak and after the swap


class ModelSwap:
    """Swap the running Segmenter for a new one between two batches (see the module doc)."""

    def __init__(self, build=build_engine):
        """build(settings, log) -> (segmenter, base classes); errors mean a failed load."""
        self.lock = threading.Lock()  # held by the worker for a batch, by swap to exchange
        self._open = threading.Event()  # cleared while a swap waits for the lock
        self._open.set()
        self._build = build
        self._state = threading.Lock()  # guards the fields below
        self.running = ''  # description of the running model
        self.loading = None  # (what, monotonic start) while a load runs
        self.last = None  # SwapResult of the last attempt
        self.swaps = 0
        self.failures = 0

    def track(self, segmenter, settings):
        """Record the model that runs now (after configure; None after cleanup)."""
        with self._state:
            self.running = pipeline.describe(segmenter, settings) if segmenter else ''
            self.last = None

    @contextlib.contextmanager
    def batch(self):
        """Hold the running model for one batch; a waiting swap goes first."""
        self._open.wait()
        with self.lock:
            yield

    def swap(self, settings, current, install, log=None):
        """
        Load settings' model beside `current`; on success install it between two batches.

        install(segmenter, base_classes) runs with the lock held: the caller replaces its
        references there (nothing else may hold the old Segmenter afterwards, so that it is
        freed). log(line) gets progress lines. Never raises: returns a SwapResult.
        """
        log = log or (lambda line: None)
        what = f'{settings.backend} {settings.weights or "(published weights)"}'
        with self._state:
            if self.loading is not None:
                return SwapResult(False, f'a model swap is already in progress '
                                         f'({self.loading[0]})', model=self.running)
            self.loading = (what, time.monotonic())
        held = [current]  # _swap drops the last reference to the old model
        current = None
        try:
            result = self._swap(settings, held, install, log, what)
        except Exception as exc:  # noqa: B902 - a bug here must not block later swaps
            reason = f'model swap failed unexpectedly: {type(exc).__name__}: {exc}'
            result = SwapResult(False, clip(reason), detail=reason)
        finally:
            _free()
        with self._state:
            self.loading = None
            self.last = result
            self.swaps += result.ok
            self.failures += not result.ok
            if result.ok:
                self.running = result.model
            else:
                result.model = self.running
        return result

    def _swap(self, settings, held, install, log, what):
        current = held.pop()
        device = current.device
        cuda = device.type == 'cuda'
        before = torch.cuda.memory_allocated(device) if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        log(f'model swap: loading {what} beside the running model')
        start = time.monotonic()
        # A thread of its own, ended after the load: its OpenMP pool goes with it.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='semseg_model_load')
        try:
            segmenter, base = pool.submit(self._build, settings, log).result()
        except Exception as exc:  # noqa: B902 - any load error leaves the old model running
            seconds = time.monotonic() - start
            reason = self._reason(exc, device)
            return SwapResult(False, clip(reason), seconds=seconds, detail=reason)
        finally:
            pool.shutdown(wait=True)
        seconds = time.monotonic() - start
        old_classes = current.classes
        self._open.clear()
        try:
            with self.lock:
                install(segmenter, base)
        finally:
            self._open.set()
        new_classes = segmenter.classes
        changed = (old_classes.names != new_classes.names
                   or old_classes.colors.tobytes() != new_classes.colors.tobytes())
        model = pipeline.describe(segmenter, settings)
        del segmenter, current  # the old model has no reference left: free it now
        memory = ''
        if cuda:
            peak = torch.cuda.max_memory_allocated(device)
            _free()
            after = torch.cuda.memory_allocated(device)
            memory = f'{_mib(before)} before, {_mib(peak)} at the peak, {_mib(after)} after'
        return SwapResult(True, seconds=seconds, model=model, classes=(
            f'{class_summary(old_classes)} -> {class_summary(new_classes)}'),
            classes_changed=changed, memory=memory)

    @staticmethod
    def _reason(exc, device):
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            _free()
            where = ''
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info(device if device.type == 'cuda' else None)
                where = f' ({_mib(free)} free of {_mib(total)})'
            return (f'out of device memory loading the new model beside the running one'
                    f'{where}: {exc}. To swap models that do not fit together, deactivate, '
                    'clean up, set the parameters and configure (no outputs meanwhile)')
        text = str(exc).strip()
        known = (ValueError, RuntimeError, OSError, ImportError)
        return text if text and isinstance(exc, known) else f'{type(exc).__name__}: {text}'

    def report(self):
        """Return (level 'OK' or 'WARN', message, {key: value}) for diagnostics."""
        with self._state:
            loading, last = self.loading, self.last
            values = {'running': self.running, 'swaps': str(self.swaps),
                      'failed swaps': str(self.failures)}
            if last is not None:
                values['last swap'] = 'ok' if last.ok else f'failed: {last.reason}'
                values['last swap load (s)'] = f'{last.seconds:.2f}'
                if last.memory:
                    values['last swap device memory'] = last.memory
            if loading is not None:
                since = time.monotonic() - loading[1]
                return 'OK', f'loading {loading[0]} ({since:.1f} s)', values
            if last is not None and not last.ok:
                return 'WARN', f'model swap failed, the old model keeps running: ' \
                               f'{last.reason}', values
            return 'OK', 'ok', values

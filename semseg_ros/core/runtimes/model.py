"""
RuntimeModel: a SegmentationModel whose forward (and logits) another runtime executes.

Per entry point and input size it holds one runner: the ONNX export of the torch model (from
the cache folder, or exported and checked against torch on a sample frame) run by
onnxruntime, OpenVINO or TensorRT; where the export fails or its labels differ from torch's
on more than 0.1 % of the pixels, the torch model itself, with a warning. In bf16 (OpenVINO)
the labels may differ as much as torch's own bf16 autocast differs from fp32 on the same
frame, plus 0.5 % (bf16 keeps 8 bits of mantissa: labels near a class boundary flip). An
``onnx`` backend model is run from its own file. With an int8 plan (OpenVINO), the checked
export is quantized (core/runtimes/int8.py); a refused quantization runs the fp32 export.
The engine calls it like any model.
"""

import os
import tempfile

from semseg_ros.core.models.base import SegmentationModel
from semseg_ros.core.runtimes import export as onnx_export
from semseg_ros.core.runtimes import graph
from semseg_ros.core.runtimes.base import ExportError, import_runtime, RuntimeSetupError
from semseg_ros.core.weights import sha256_of
import torch

ATTRIBUTES = ('num_classes', 'preprocess', 'class_set', 'classes', 'name', 'backend',
              'output_kind', 'warnings')


def own_logits(model):
    """Return True when a model overrides ``logits`` (its logits differ from ``forward``)."""
    return getattr(type(model), 'logits', None) is not SegmentationModel.logits


def autocast_bf16(run, device):
    """Return ``run`` under torch's bf16 autocast (the reference of a bf16 runtime)."""
    def call(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return run(batch)
    return call


def parity_min(figures):
    """Return the least label agreement accepted for a runtime's parity figures."""
    if 'torch_bf16' in figures:  # bf16: as close as torch's own bf16 is, less 0.5 %
        return min(onnx_export.PARITY_MIN, float(figures['torch_bf16']) - 0.005)
    return onnx_export.PARITY_MIN


class RuntimeModel(SegmentationModel):
    """Run ``source`` with a runtime: exported per (entry, height, width) on first use."""

    def __init__(self, source, runtime, device, threads, report, cache, precision='fp32',
                 onnx_file=None, int8=None):
        super().__init__()
        self.source = source
        for attr in ATTRIBUTES:
            if hasattr(source, attr):
                setattr(self, attr, getattr(source, attr))
        self.runtime = runtime
        self.device = device
        self.threads = int(threads)
        self.report = report
        self.cache = cache
        self.precision = precision  # fp32; fp16 (tensorrt) or bf16 (openvino)
        self.onnx_file = onnx_file
        self.int8 = int8  # an int8.Int8Plan, or None for fp32
        self.int8_results = {}  # (entry, h, w) -> (accepted, figures or reason)
        self._folder_ok = False
        self.choice = None  # the RuntimeChoice that describes this model (set by prepare)
        self.runners = {}  # (entry, h, w) -> callable
        self.fallbacks = {}  # (entry, h, w) -> why torch runs that shape
        self.parity = {}  # (entry, h, w) -> parity figures of the runtime
        self.records = {}  # (entry, h, w) -> path of the export's JSON record
        self.forms = {}  # (entry, h, w) -> (graph form run, {form: ms} when both were timed)
        self._file_digest = None  # sha256 of onnx_file, once known

    def forward(self, batch):
        """Return the logits of ``source.forward``, computed by the runtime."""
        return self._call('forward', batch)

    def logits(self, batch):
        """Return the logits of ``source.logits``, computed by the runtime."""
        return self._call('logits', batch)

    def entry(self, name):
        """Return the entry point that ``name`` runs (logits = forward unless overridden)."""
        return 'logits' if name == 'logits' and own_logits(self.source) else 'forward'

    def _call(self, name, batch):
        key = (self.entry(name), int(batch.shape[2]), int(batch.shape[3]))
        runner = self.runners.get(key)
        if runner is None:
            runner = self.prime(*key, race=False)  # mid-stream: no timing runs
        return runner(batch)

    def prime(self, entry, height, width, race=True):
        """
        Make (or load) the runner of one entry point and input size; return it.

        race: time the graph forms where the export's record has no timings for them (at
        start-up; mid-stream, frames would wait, so the graph as exported runs instead).
        """
        key = (entry, int(height), int(width))
        if key in self.runners:
            return self.runners[key]
        with torch.autocast(self.device.type, enabled=False):
            runner = self._make(*key, race)
        self.runners[key] = runner
        return runner

    def _make(self, entry, height, width, race=True):
        torch_run = getattr(self.source, entry)
        shape = (height, width)
        try:
            if self.onnx_file:
                return self._from_file(torch_run, shape, race)
            return self._from_export(entry, torch_run, shape, race)
        except (ExportError, RuntimeSetupError) as exc:
            return self._fall_back((entry, height, width), str(exc), torch_run)

    def _from_file(self, source_run, shape, race=True):
        """
        Run an onnx-backend model from its own file (other runtimes checked against it).

        Its other graph forms and their record go to the cache folder, named by the file's
        hash (its own folder may be read-only).
        """
        key = ('forward',) + shape
        if self._file_digest is None:  # once per model: a file may be hundreds of MB
            self._file_digest = sha256_of(self.onnx_file)
        digest = self._file_digest
        sample = onnx_export.sample_batch(self.preprocess, shape, self.device)
        stem, record_path = onnx_export.file_paths(self._folder(), self.name, digest)
        record = onnx_export.read_record(record_path)
        runner, form = self._faster_form(self.onnx_file, record, record_path, sample, key, race,
                                         stem)
        if self.runtime != 'onnxruntime' or form != graph.AS_EXPORTED:
            self._check(key, onnx_export.parity(source_run, runner, sample))
        if self.int8 is not None:
            return self._quantized(self.onnx_file, digest, key, runner)
        return runner

    def _from_export(self, entry, torch_run, shape, race=True):
        """Run a torch model's ONNX export: from the cache, or exported and checked now."""
        digest = onnx_export.weights_digest(self.source)
        key = onnx_export.export_key(digest, entry, shape)
        folder = self._folder()
        path, record_path = onnx_export.cache_paths(folder, self.name, entry, shape, key)
        self.records[(entry,) + shape] = record_path
        record = onnx_export.read_record(record_path)
        sample = onnx_export.sample_batch(self.preprocess, shape, self.device)
        if os.path.isfile(path):
            self.report.info(f'{self.runtime}: ONNX export from the cache: {path}')
        else:
            self.report.info(f'{self.runtime}: exporting {self.name}.{entry} at '
                             f'{shape[1]}x{shape[0]} to ONNX: {path}')
            onnx_export.export(self.source, entry, sample, path)
            record = {'key': key, 'entry': entry, 'input': list(shape), 'parity': {},
                      **onnx_export.library_versions()}
        runner, form = self._faster_form(path, record, record_path, sample, (entry,) + shape,
                                         race)
        tag = f'{self.runtime} {runner.version} {self.device.type} {self.precision}'
        if form != graph.AS_EXPORTED:
            tag += f' {form}'
        figures = record.get('parity', {}).get(tag)
        if figures is None:
            figures = onnx_export.parity(torch_run, runner, sample)
            if self.precision == 'bf16':
                figures['torch_bf16'] = onnx_export.parity(
                    torch_run, autocast_bf16(torch_run, self.device), sample)['agreement']
            record.setdefault('parity', {})[tag] = figures
            onnx_export.write_record(record_path, record)
        self._check((entry,) + shape, figures)
        if self.int8 is not None:
            return self._quantized(path, key, (entry,) + shape, runner)
        return runner

    def _faster_form(self, path, record, record_path, sample, key, race, stem=None):
        """
        Return (runner, form): the runner of the faster graph form of an export (CPU).

        Both forms are timed once per runtime, precision, input size and machine; the timings
        go into the export's record, and later starts build only the faster one. The other
        form's file is written beside ``stem`` (default: beside the export). int8 quantizes
        the export as it is; on CUDA a TensorRT engine build takes minutes, so only the CPU
        times both. Without ``race``, only timings already in the record choose.
        """
        self.forms[key] = (graph.AS_EXPORTED, {})
        if self.device.type != 'cpu' or self.int8 is not None:
            return self.make_runner(path), graph.AS_EXPORTED
        version = import_runtime(self.runtime).__version__
        where = f'{self.runtime} {self.precision} {key[2]}x{key[1]}; ' + onnx_export.machine_tag(
            self.threads, {self.runtime: version})
        timings = record.get('forms', {}).get(where)
        timed = isinstance(timings, dict) and set(timings) == set(graph.FORMS)
        if not (timed or race):  # mid-stream: no timing runs
            return self.make_runner(path), graph.AS_EXPORTED
        if timed and min(timings, key=timings.get) == graph.AS_EXPORTED:
            self.forms[key] = (graph.AS_EXPORTED, timings)
            return self.make_runner(path), graph.AS_EXPORTED
        runner = None if timed else self.make_runner(path)
        try:
            split_path = graph.write_form(path, graph.PRELU_SPLIT, stem)
            if split_path is None:
                return runner or self.make_runner(path), graph.AS_EXPORTED
            split = self.make_runner(split_path)
            if not timed:
                self.report.info(f'{self.runtime}: timing the graph {graph.AS_EXPORTED} and '
                                 f'with PReLU split ({os.path.basename(split_path)})')
                timings = onnx_export.race(
                    {graph.AS_EXPORTED: runner, graph.PRELU_SPLIT: split}, sample)
                record.setdefault('forms', {})[where] = timings
                onnx_export.write_record(record_path, record)
        except Exception as exc:  # noqa: B902 - onnx and the runtimes raise many types
            self.report.warning(f'{self.runtime}: the {graph.PRELU_SPLIT} form of {path} '
                                f'cannot run ({exc}); the export runs as it is')
            return runner or self.make_runner(path), graph.AS_EXPORTED
        form = min(timings, key=timings.get)
        self.forms[key] = (form, timings)
        return (runner if form == graph.AS_EXPORTED else split), form

    def form_text(self, key):
        """Return ', graph: <form> (<ms> vs <ms> as exported)' for a reason, or ''."""
        form, timings = self.forms.get(key, (graph.AS_EXPORTED, {}))
        if form == graph.AS_EXPORTED:
            return ''
        return (f', graph: {form} ({timings[form]:.1f} ms vs {timings[graph.AS_EXPORTED]:.1f} '
                f'ms {graph.AS_EXPORTED})')

    def _quantized(self, onnx_path, source_key, key, fp32_runner):
        """Return the int8 runner of a checked export, or the fp32 one where int8 is refused."""
        from semseg_ros.core.runtimes import int8
        try:
            path, figures = int8.quantized(onnx_path, source_key, self.int8, self._folder(),
                                           self.report)
        except int8.Int8Refused as exc:
            self.int8_results[key] = (False, str(exc))
            self.report.warning(f'precision int8: {self.name} at {key[2]}x{key[1]} runs in '
                                f'fp32 ({self.runtime}) instead: {exc}')
            return fp32_runner
        self.int8_results[key] = (True, figures)
        self.report.info(f'precision int8: {figures["reason"]}')
        return self.make_runner(path)

    def _check(self, key, figures):
        """Raise ExportError unless the runtime's labels match enough of torch's."""
        self.parity[key] = figures
        agreement = float(figures.get('agreement', 0.0))
        least = parity_min(figures)
        if agreement < least:
            why = figures.get('error') or (
                f'labels equal on {100.0 * agreement:.2f} % of a sample frame, below '
                f'{100.0 * least:.1f} %')
            raise ExportError(f'parity check failed: {why}')

    def make_runner(self, path):
        """Return the runner of this runtime for an ONNX file."""
        if self.runtime == 'openvino':
            from semseg_ros.core.runtimes.openvino_runtime import OpenVinoRunner
            return OpenVinoRunner(path, self.device, self.threads,
                                  cache=os.path.join(self._folder(), 'openvino'),
                                  bf16=self.precision == 'bf16')
        from semseg_ros.core.runtimes.onnx_runtime import OrtRunner
        return OrtRunner(path, self.device, self.threads, self.runtime, self.precision == 'fp16',
                         cache=os.path.join(self._folder(), 'tensorrt'),
                         report=self.report.info)

    def _folder(self):
        """Return the cache folder of exports, made on first use (a temporary one if unusable)."""
        if not self._folder_ok:
            try:
                os.makedirs(self.cache, exist_ok=True)
                usable = os.access(self.cache, os.W_OK)
            except (OSError, TypeError):
                usable = False
            if not usable:
                temp = tempfile.mkdtemp(prefix='semseg_ros_runtimes_')
                self.report.warning(f'cannot write the cache folder {self.cache}: ONNX exports '
                                    f'go to {temp} and are not kept')
                self.cache = temp
            self._folder_ok = True
        return self.cache

    def _fall_back(self, key, why, torch_run):
        """Run ``key`` with the source model itself; warn and note it in the choice."""
        entry, height, width = key
        self.fallbacks[key] = why
        source = 'the onnx backend (onnxruntime)' if self.onnx_file else 'torch'
        self.report.warning(f'model.runtime {self.runtime}: {self.name}.{entry} at '
                            f'{width}x{height} runs on {source} instead: {why}')
        if self.choice is not None:
            self.choice.note_fallback(f'{width}x{height}: {why}')
        return torch_run

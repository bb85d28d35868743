"""
Choose the runtime that executes a model (``model.runtime``) and wrap the model for it.

``auto`` on the CPU (fp32, no torch.compile): the runtimes of ``AUTO_CPU`` that are installed
and whose export passes the parity check race torch on a sample frame at the engine's input
size, and the fastest wins; the timings are kept in the export's record (per machine, thread
count and versions), so later starts do not race again. Without a fixed input size, the first
such runtime runs (exported per frame size on first use). On CUDA, torch (``tensorrt`` is asked
for by name: its engine builds take minutes). An ``onnx`` backend model runs on onnxruntime.
``precision: int8`` runs on OpenVINO on the CPU, at a fixed input size (core/runtimes/int8.py).
``precision: bf16`` on the CPU runs on OpenVINO where the CPU has bf16 units (at a fixed input
size), else on torch's autocast.
The choice and its reason are returned for the log and diagnostics.
"""


from semseg_ros.core.models.onnx import OnnxModel
from semseg_ros.core.runtimes import export as onnx_export
from semseg_ros.core.runtimes.base import available, import_runtime, Reporter, RUNTIMES
from semseg_ros.core.runtimes.base import RuntimeChoice, RuntimeSetupError, thread_budget
from semseg_ros.core.runtimes.model import RuntimeModel
from semseg_ros.core.runtimes.openvino_runtime import bf16_units
from semseg_ros.core.weights import export_cache_dir
import torch

# CPU runtimes `auto` tries beside torch (the first one when there is no input size to race
# at; see docs/PERFORMANCE.md, runtimes).
AUTO_CPU = ('onnxruntime', 'openvino')


def auto_runtime(model, device, precision='fp32', compiled=False):
    """Return (runtime, reason) that ``auto`` picks before any export is tried."""
    if isinstance(model, OnnxModel):
        return 'onnxruntime', 'auto: an ONNX model'
    if precision == 'int8':
        return 'openvino', 'auto: precision int8 runs on OpenVINO (NNCF quantization)'
    if device.type != 'cpu':
        return 'torch', (f'auto: {device.type.upper()} device runs torch (model.runtime '
                         'tensorrt asks for TensorRT)')
    if precision == 'bf16' and not compiled and bf16_units():
        return 'openvino', 'auto: precision bf16 runs on OpenVINO (this CPU has bf16 units)'
    if precision != 'fp32':
        return 'torch', f'auto: precision {precision} runs on torch (autocast)'
    if compiled:
        return 'torch', 'auto: compile asks for torch.compile'
    for name in AUTO_CPU:
        if available(name):
            return name, 'auto: CPU, ONNX export checked against torch'
    return 'torch', f'auto: {" or ".join(AUTO_CPU)} not installed'


def check_request(runtime, model, device, precision, compiled):
    """Raise RuntimeSetupError when ``runtime`` cannot run this model on this device."""
    if runtime not in RUNTIMES:
        raise RuntimeSetupError(f'model.runtime must be one of {", ".join(RUNTIMES)}, '
                                f'not {runtime!r}')
    if runtime == 'torch':
        if isinstance(model, OnnxModel):
            raise RuntimeSetupError(
                'model.runtime torch cannot run an ONNX model (backend onnx): set '
                'model.runtime to auto, onnxruntime, openvino or tensorrt')
        return
    if compiled:
        raise RuntimeSetupError(f'compile (torch.compile) needs model.runtime torch, not '
                                f'{runtime}')
    if precision == 'int8':
        if runtime != 'openvino' or device.type != 'cpu':
            raise RuntimeSetupError(
                f'precision int8 runs on OpenVINO on the CPU here (model.runtime auto or '
                f'openvino, device cpu), not on {runtime} on {device}')
        import_runtime(runtime)
        return
    if precision == 'bf16' and runtime == 'openvino':
        if isinstance(model, OnnxModel):
            raise RuntimeSetupError(
                'precision bf16 on OpenVINO is checked against the torch model under bf16 '
                'autocast; an onnx backend model has none: set precision to fp32')
        if not bf16_units():
            import_runtime(runtime)  # not installed: say so first
            raise RuntimeSetupError(
                'precision bf16 on OpenVINO needs a CPU with bf16 units (AVX512-BF16 or AMX); '
                'this one has none: set precision to fp32, or model.runtime to torch '
                '(autocast)')
    elif precision != 'fp32' and not (runtime == 'tensorrt' and precision == 'fp16'):
        raise RuntimeSetupError(
            f'precision {precision} with model.runtime {runtime}: {runtime} runs fp32 here '
            '(fp16 and bf16 run on torch autocast; fp16 also on tensorrt; bf16 also on '
            'openvino)')
    import_runtime(runtime)
    if runtime == 'openvino' and device.type != 'cpu':
        raise RuntimeSetupError(f'model.runtime openvino runs on the CPU here, not on '
                                f'{device}: set device to cpu or choose another runtime')
    if runtime in ('onnxruntime', 'tensorrt'):
        from semseg_ros.core.runtimes.onnx_runtime import providers_for
        providers_for(import_runtime(runtime), runtime, device)


def prepare(model, runtime='auto', device='cpu', input_size=None, upsample='logits',
            precision='fp32', compiled=False, cache=None, report=None, int8=None):
    """
    Return the RuntimeChoice for a model on a device; its ``model`` is what the engine runs.

    runtime: one of RUNTIMES, or None for the model as its backend built it.
    input_size (width, height), when known, is exported and checked now (so a fallback to
    torch shows at start-up); other sizes are exported on first use. cache: the folder of the
    exports (default $SEMSEG_ROS_EXPORT_CACHE, else <cache_dir()>/runtimes). A runtime that
    is missing or cannot run on the
    device raises RuntimeSetupError; an export that fails or does not match torch falls back
    to torch with a warning. int8: the int8.Int8Plan of precision int8 (needs input_size).
    """
    device = torch.device(device)
    report = report or Reporter()
    requested = runtime
    if runtime is None and precision == 'int8':
        runtime = requested = 'auto'  # int8 needs a runtime that runs the quantized model
    if runtime is None:  # the model as its backend built it (engine default)
        own = 'onnxruntime' if isinstance(model, OnnxModel) else 'torch'
        return RuntimeChoice(own, 'none', 'as built', model=model)
    if runtime == 'auto':
        runtime, reason = auto_runtime(model, device, precision, compiled)
        if isinstance(model, OnnxModel) and device.type != 'cpu':
            # The backend's own session picks the GPU providers this onnxruntime has.
            return RuntimeChoice('onnxruntime', requested, reason, model=model)
        if runtime != 'torch' and not input_size and not isinstance(model, OnnxModel) \
                and precision != 'int8':
            # Each new frame size would be exported (seconds) while frames wait: auto never
            # stalls the stream; an explicit runtime or a fixed input size exports up front.
            return RuntimeChoice(
                'torch', requested, 'auto: the model runs at the size of each frame (set '
                'model.input_width/height to export once and race the runtimes)', model=model)
    else:
        reason = 'requested'
    check_request(runtime, model, device, precision, compiled)
    if precision == 'int8':
        return prepare_int8(model, device, input_size, upsample, cache, report, int8,
                            requested, reason)
    if runtime == 'torch':
        return RuntimeChoice('torch', requested, reason, model=model)
    threads = thread_budget()
    folder = cache if cache is not None else export_cache_dir()
    onnx_file = model.path if isinstance(model, OnnxModel) else None
    if requested == 'auto' and input_size and not onnx_file and precision == 'fp32':
        return fastest(model, device, input_size, upsample, threads, folder, report)
    wrapped = RuntimeModel(model, runtime, device, threads, report, folder,
                           precision=precision, onnx_file=onnx_file)
    choice = RuntimeChoice(runtime, requested, reason, threads=threads, model=wrapped)
    wrapped.choice = choice
    if input_size:
        width, height = input_size
        key = (wrapped.entry(upsample), int(height), int(width))
        wrapped.prime(*key)
        if key in wrapped.fallbacks and not onnx_file:
            # The engine's only input size runs on torch: run the torch model itself.
            why = wrapped.fallbacks[key]
            return RuntimeChoice('torch', requested, f'{runtime} fell back: {why}', model=model)
        figures = wrapped.parity.get(key)
        if figures:
            choice.reason += f', labels {100.0 * figures["agreement"]:.2f} % equal'
            if 'torch_bf16' in figures:
                choice.reason += (f' to fp32 (torch bf16 autocast: '
                                  f'{100.0 * figures["torch_bf16"]:.2f} %)')
        choice.reason += wrapped.form_text(key)
    return choice


def prepare_int8(model, device, input_size, upsample, cache, report, plan, requested, reason):
    """Return the choice of precision int8: OpenVINO running the quantized export."""
    from semseg_ros.core.runtimes import int8
    if not input_size:
        raise RuntimeSetupError('precision int8 needs a fixed input size (the quantized model '
                                'is made for one): set model.input_width and input_height')
    if plan is None:
        raise RuntimeSetupError('precision int8 needs int8.calibration_folder (frames to '
                                'calibrate on)')
    int8.check_plan(plan)
    threads = thread_budget()
    folder = cache if cache is not None else export_cache_dir()
    onnx_file = model.path if isinstance(model, OnnxModel) else None
    wrapped = RuntimeModel(model, 'openvino', device, threads, report, folder,
                           onnx_file=onnx_file, int8=plan)
    choice = RuntimeChoice('openvino', requested, reason, threads=threads, model=wrapped)
    wrapped.choice = choice
    width, height = input_size
    key = (wrapped.entry(upsample), int(height), int(width))
    wrapped.prime(*key)
    if key in wrapped.fallbacks:
        why = wrapped.fallbacks[key]
        raise RuntimeSetupError(f'precision int8: the OpenVINO export cannot be used ({why}); '
                                'set precision to fp32')
    accepted, detail = wrapped.int8_results[key]
    if accepted:
        choice.reason += f', int8: {detail["reason"]}'
    else:
        choice.reason += f', fp32: {detail}'
    return choice


def fastest(model, device, input_size, upsample, threads, folder, report):
    """Return the choice of ``auto`` on the CPU: the fastest of torch and AUTO_CPU here."""
    width, height = input_size
    contenders, skipped = {}, []
    for name in AUTO_CPU:
        if not available(name):
            skipped.append(f'{name} not installed')
            continue
        wrapped = RuntimeModel(model, name, device, threads, report, folder)
        key = (wrapped.entry(upsample), int(height), int(width))
        wrapped.prime(*key)
        if key in wrapped.fallbacks:
            skipped.append(f'{name} fell back: {wrapped.fallbacks[key]}')
            continue
        contenders[name] = wrapped
    if not contenders:
        return RuntimeChoice('torch', 'auto', 'auto: ' + '; '.join(skipped), model=model)
    first = next(iter(contenders.values()))
    entry = first.entry(upsample)
    key = (entry, int(height), int(width))
    versions = {'torch': torch.__version__}
    versions.update({n: w.runners[key].version for n, w in contenders.items()})
    # Each contender's graph form: a race of other forms does not hold for it.
    versions.update({f'{n} graph': w.forms.get(key, ('',))[0] for n, w in contenders.items()})
    tag = onnx_export.machine_tag(threads, versions)
    record_path = first.records.get(key)
    record = onnx_export.read_record(record_path) if record_path else {}
    timings = record.get('auto', {}).get(tag)
    if timings is None or set(timings) != {'torch', *contenders}:
        functions = {'torch': getattr(model, entry)}
        functions.update({n: w.runners[key] for n, w in contenders.items()})
        sample = onnx_export.sample_batch(model.preprocess, (height, width), device)
        report.info(f'auto: timing torch and {", ".join(contenders)} at {width}x{height}')
        timings = race(functions, sample)
        if record_path:
            record = onnx_export.read_record(record_path) or record
            record.setdefault('auto', {})[tag] = timings
            onnx_export.write_record(record_path, record)
    best = min(timings, key=timings.get)
    reason = 'auto: fastest here (' + ', '.join(
        f'{n} {ms:.1f} ms' for n, ms in sorted(timings.items(), key=lambda kv: kv[1])) + ')'
    if skipped:
        reason += '; ' + '; '.join(skipped)
    if best == 'torch':
        return RuntimeChoice('torch', 'auto', reason, model=model)
    wrapped = contenders[best]
    figures = wrapped.parity.get(key)
    if figures:
        reason += f', labels {100.0 * figures["agreement"]:.2f} % equal'
    reason += wrapped.form_text(key)
    choice = RuntimeChoice(best, 'auto', reason, threads=threads, model=wrapped)
    wrapped.choice = choice
    return choice


def race(functions, sample):
    """Return {name: median ms} of the functions on the sample (export.race; tests patch it)."""
    return onnx_export.race(functions, sample)

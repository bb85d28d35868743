"""
Graph forms of an ONNX export: the graph as exported, and rewrites with the same results.

``prelu split``: every PRelu(x, slope) becomes Relu(x) + slope * Min(x, 0). In IEEE
arithmetic one of the two terms is zero, so the outputs are the same bits as PReLU's. Whether
a runtime runs it faster depends on the model: ESPNetv2 at 1024x512 on this CPU (2 threads)
took 117.8 instead of 199.5 ms on OpenVINO, but ESPNet at 480x360 on OpenVINO 18.5 instead of
17.9 ms. So RuntimeModel times both forms once per runtime and machine and keeps the faster
(docs/PERFORMANCE.md, graph forms).
"""

import os
import tempfile

AS_EXPORTED = 'as exported'
PRELU_SPLIT = 'prelu split'
FORMS = (AS_EXPORTED, PRELU_SPLIT)


def _value_types(model):
    """Return {value name: ONNX element type} of a model, from shape inference."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: B902 - onnx raises its own types; then nothing is known
        inferred = model
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.HasField('tensor_type'):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _fresh(taken, name):
    """Return ``name``, or it with a number added, so that it is not in ``taken``; take it."""
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f'{name}_{number}', number + 1
    taken.add(candidate)
    return candidate


def split_prelu(model):
    """
    Rewrite every PRelu of an onnx ModelProto's main graph in place; return how many.

    A PRelu whose input has no known floating-point type is left as it is.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(node.op_type == 'PRelu' for node in graph.node):
        return 0
    types = _value_types(model)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    taken = {name for node in graph.node for name in list(node.input) + list(node.output)}
    taken |= {node.name for node in graph.node} | {t.name for t in graph.initializer}
    zeros = {}  # element type -> name of its scalar zero
    nodes, count = [], 0
    for node in graph.node:
        kind = types.get(node.input[0]) if node.op_type == 'PRelu' else None
        if kind not in floats:
            nodes.append(node)
            continue
        if kind not in zeros:
            zeros[kind] = _fresh(taken, 'prelu_split_zero')
            dtype = helper.tensor_dtype_to_np_dtype(kind)
            graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype), zeros[kind]))
        x, slope = node.input
        base = node.name or node.output[0]
        relu, low, scaled = (_fresh(taken, f'{base}/{part}') for part in ('relu', 'min', 'mul'))
        nodes += [
            helper.make_node('Relu', [x], [relu], name=relu),
            helper.make_node('Min', [x, zeros[kind]], [low], name=low),
            helper.make_node('Mul', [low, slope], [scaled], name=scaled),
            helper.make_node('Add', [relu, scaled], [node.output[0]],
                             name=_fresh(taken, f'{base}/add')),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def form_path(path, form):
    """Return the file of ``form`` of the export at ``path`` (beside it)."""
    if form == AS_EXPORTED:
        return path
    stem = path[:-5] if path.endswith('.onnx') else path
    return f'{stem}.{form.replace(" ", "-")}.onnx'


def write_form(path, form, stem=None):
    """
    Return the file of ``form`` of the ONNX file at ``path``, written if absent.

    The file is form_path(stem or path, form): beside the file, or beside ``stem`` where the
    file's own folder is not ours. None when the form would not change the graph (e.g. no
    PRelu to split). Written to a temporary file first, so a reader never sees half a file.
    """
    if form == AS_EXPORTED:
        return path
    if form != PRELU_SPLIT:
        raise ValueError(f'unknown graph form {form!r}: one of {", ".join(FORMS)}')
    target = form_path(stem or path, form)
    if os.path.isfile(target):
        return target
    import onnx
    model = onnx.load(path, load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None  # weights in files beside it: kept as it is
    if not split_prelu(model):
        return None
    fd, tmp = tempfile.mkstemp(prefix='.form.', suffix='.onnx',
                               dir=os.path.dirname(os.path.abspath(target)))
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target

"""
Runtimes: what executes a model once its backend has built it (``model.runtime``).

torch runs the module itself; onnxruntime, OpenVINO and TensorRT (onnxruntime's TensorRT
provider) run its ONNX export, made once per weights and input size, kept in the cache folder
and checked against torch. Each runtime is a small adapter behind the call of a torch model,
so the engine around it does not change. ROS-free.
"""

from semseg_ros.core.runtimes.base import ExportError, Reporter, RuntimeChoice  # noqa: F401
from semseg_ros.core.runtimes.base import RUNTIMES, RuntimeSetupError  # noqa: F401
from semseg_ros.core.runtimes.choose import auto_runtime, prepare  # noqa: F401
from semseg_ros.core.runtimes.int8 import Int8Plan  # noqa: F401

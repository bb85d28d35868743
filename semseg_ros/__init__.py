"""semseg_ros: semantic segmentation of ROS 2 camera topics with PyTorch."""

import os
import sys

__version__ = '0.1.0'

# torch's OpenMP workers busy-wait after each parallel region: libgomp's default is 300000
# spins, milliseconds on a small CPU. Where onnxruntime or OpenVINO runs the network, the
# engine's torch pre- and postprocessing left them spinning on the cores the runtime's threads
# needed: OpenVINO ran ESPNet 15-25 % slower in the node than alone. 30000 spins still span the
# gaps between the ops of a torch forward (torch's own speed is unchanged; docs/PERFORMANCE.md).
# libgomp reads it when torch loads, so it is set here, before any module of ours imports
# torch; a value (or OMP_WAIT_POLICY) already in the environment wins.
SPIN_COUNT = '30000'
_USER_SET = any(name in os.environ for name in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY'))
# True when torch was loaded before this package with libgomp's default: the engine warns
# when it runs a model on onnxruntime or OpenVINO then (core/engine.py).
SPIN_LATE = 'torch' in sys.modules and not _USER_SET
if 'torch' not in sys.modules and not _USER_SET:
    os.environ['GOMP_SPINCOUNT'] = SPIN_COUNT

"""Helpers shared by the benchmark scripts: rclpy contexts, QoS, the machine's description."""

import os
from pathlib import Path
import platform
import sys

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts import semseg_ros from this checkout
    sys.path.insert(0, str(ROOT))
PARAMS = ROOT / 'config' / 'semseg.yaml'
SHM_PROFILE = ROOT / 'config' / 'fastdds_shm.xml'
ASSETS = ROOT.parent / 'shared' / 'assets'


def ros_start(domain, name):
    """Return (context, node, executor) of a fresh rclpy context in `domain`."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return context, node, executor


def ros_stop(context, node):
    """Destroy the node and shut its context down."""
    import rclpy
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def qos(reliable, depth):
    """Return a keep-last QoS profile."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=(ReliabilityPolicy.RELIABLE if reliable
                                   else ReliabilityPolicy.BEST_EFFORT))


def machine(device='cpu'):
    """Describe the machine, torch and the device in one line."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        pass
    text = (f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), device {device}')
    if device.startswith('cuda') or (device == 'auto' and torch.cuda.is_available()):
        text += f' ({torch.cuda.get_device_name(0)})'
    return text

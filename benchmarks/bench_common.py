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


def default_cache():
    """Return the weights folder: $SEMSEG_ROS_CACHE, else ../shared/assets/models, else ''."""
    return os.environ.get('SEMSEG_ROS_CACHE') or (
        str(ASSETS / 'models') if (ASSETS / 'models').is_dir() else '')


def write_section(path, name, text):
    """Replace what lies between the '<!-- name:begin -->' and '<!-- name:end -->' lines."""
    begin, end = f'<!-- {name}:begin -->', f'<!-- {name}:end -->'
    path = Path(path)
    doc = path.read_text()
    start, stop = doc.index(begin) + len(begin), doc.index(end)
    path.write_text(doc[:start] + '\n' + text + doc[stop:])


def add_cache_argument(parser):
    """Add --cache, the folder of the published weights, to an argument parser."""
    parser.add_argument('--cache', default=default_cache(),
                        help='folder with the published weights (default: $SEMSEG_ROS_CACHE, '
                             'else ../shared/assets/models; random weights when missing)')


def markdown_table(header, rows):
    """Return a markdown table of the column names in header and rows of cell strings."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)

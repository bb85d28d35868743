"""Shared test fixtures: paths to the shared assets, an isolated ROS domain per module."""

import os
from pathlib import Path
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / 'shared' / 'assets'
# Tests and the node processes they start use this source tree.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ['PYTHONPATH'] = os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
os.environ.setdefault('ROS_LOG_DIR', str(ROOT / 'build' / 'ros_log'))
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')


def assets_or_skip(*parts):
    """Return a path under ../shared/assets, or skip the test with the reason."""
    path = ASSETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'needs the shared test assets ({path} is absent: a user clone has no '
                    '../shared)')
    return path


@pytest.fixture
def espnet_weights():
    """Path of the published ESPNet CamVid weights in the shared assets."""
    return assets_or_skip('models', 'espnet_p_2_q_8_camvid.pth')


@pytest.fixture
def camvid_val():
    """Folder of the 101 labelled CamVid validation images."""
    return assets_or_skip('camvid_val')


@pytest.fixture
def espnetv2_weights():
    """Path of the published ESPNetv2 Cityscapes weights in the shared assets."""
    return assets_or_skip('models', 'espnetv2_s_2.0_city_1024x512.pth')

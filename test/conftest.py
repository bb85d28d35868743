"""Shared test fixtures: paths to the shared assets, a private ROS domain per test graph."""

import fcntl
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
# Runtime exports (ONNX files, timing records) of this run: never in a shared weights folder.
os.environ.setdefault('SEMSEG_ROS_EXPORT_CACHE', str(ROOT / 'build' / 'runtimes'))
# Test graphs discover on this host only: a run never sees another machine's nodes.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.pop('ROS_STATIC_PEERS', None)

# Domain ids 1..232 (Fast DDS's port range on Linux); each claim is held by a lock file until
# this process ends, so parallel runs on one host never share a domain.
_DOMAIN_LOCKS = Path(os.environ.get('TMPDIR', '/tmp')) / 'semseg_ros_test_domains'
_GIVEN_DOMAIN = os.environ.get('ROS_DOMAIN_ID', '').strip()
_held = []


def claim_domain():
    """Return a ROS domain id that no other test graph on this host uses now."""
    _DOMAIN_LOCKS.mkdir(parents=True, exist_ok=True)
    start = int(_GIVEN_DOMAIN) if _GIVEN_DOMAIN.isdigit() else 1 + (os.getpid() * 37) % 232
    for step in range(232):
        domain = 1 + (start - 1 + step) % 232
        if any(held_domain == domain for held_domain, _ in _held):
            continue
        handle = open(_DOMAIN_LOCKS / f'{domain}.lock', 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held.append((domain, handle))
        return domain
    raise RuntimeError('no free ROS domain id on this host (232 in use by test runs)')


def assets_or_skip(*parts):
    """Return a path under ../shared/assets, or skip the test with the reason."""
    path = ASSETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'needs the shared test assets ({path} is absent: a user clone has no '
                    '../shared)')
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Give each test its own cache; return the folder of its ONNX exports (<cache>/runtimes)."""
    monkeypatch.setenv('SEMSEG_ROS_CACHE', str(tmp_path))
    monkeypatch.delenv('SEMSEG_ROS_EXPORT_CACHE', raising=False)
    return tmp_path / 'runtimes'


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

"""ament_pep257 over the package and launch files."""

from pathlib import Path

from ament_pep257.main import main
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    paths = [str(ROOT / p) for p in ('semseg_ros', 'launch', 'setup.py')]
    rc = main(argv=paths)
    assert rc == 0, 'Found code style errors / warnings'

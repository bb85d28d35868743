"""ament_flake8 over the package, launch files, tools, tests and benchmarks."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
# In a fresh interpreter: flake8 forks its workers, and a fork of this test process after a
# runtime test has started OpenVINO's or onnxruntime's thread pools can hang.
SCRIPT = """
import sys
from ament_flake8.main import main_with_errors
rc, errors = main_with_errors(argv=sys.argv[1:])
print('\\n'.join(errors))
sys.exit(rc)
"""


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    paths = [str(ROOT / p) for p in ('semseg_ros', 'launch', 'test', 'benchmarks', 'setup.py')
             if (ROOT / p).exists()]
    done = subprocess.run([sys.executable, '-c', SCRIPT, *paths], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, 'code style errors / warnings:\n' + done.stdout[-6000:] + \
        done.stderr[-2000:]

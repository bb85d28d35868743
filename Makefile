# semseg_ros: set-up, demo and tests in one virtual environment (.venv).
#   make demo   - build .venv if needed, run the camera -> node -> overlay demo
#   make test   - build .venv if needed, run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
# Weights cache: the shared test assets when present, else the user cache (download on first use).
ifneq ($(wildcard $(SHARED)/assets/models/*.pth),)
export SEMSEG_ROS_CACHE ?= $(SHARED)/assets/models
endif
DEMO_SOURCE ?= $(firstword $(wildcard $(SHARED)/assets/camvid_val/images))
DEMO_ARGS ?=
PYTEST_ARGS ?=
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export ROS_LOG_DIR ?= $(abspath $(VENV))/ros_log
STAMP := $(VENV)/.semseg_ros_installed
SOURCES := $(wildcard $(shell git ls-files --cached --others --exclude-standard 2>/dev/null | grep -vE '^(test|docs|benchmarks)/'))

.PHONY: venv demo test lint bench-engine clean

venv: $(STAMP)

$(VENV)/.requirements: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

$(STAMP): $(VENV)/.requirements setup.py setup.cfg package.xml $(SOURCES)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation .
	$(PY) -m semseg_ros.tools.install_links
	touch $@

demo: $(STAMP)
	$(VENV)/bin/semseg-ros-demo $(if $(DEMO_SOURCE),--source $(DEMO_SOURCE)) $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest test $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m pytest test/test_flake8.py test/test_pep257.py

bench-engine: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/engine_bench.py --markdown docs/PERFORMANCE.md

clean:
	rm -rf $(VENV) build *.egg-info demo_output

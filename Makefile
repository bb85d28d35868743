# semseg_ros: set-up, demo and tests in one virtual environment (.venv).
#   make demo   - build .venv if needed, run the camera -> node -> overlay demo
#   make test   - build .venv if needed, run the whole test suite
# Python 3.11 or 3.12, whichever runs here (3.11 first: CI's); override with PYTHON=...
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python3.11 python3.12,\
	$(shell $(p) -c 'import sys' >/dev/null 2>&1 && echo $(p))))
endif
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
# Weights cache: the shared test assets when present, else the user cache (download on first use).
ifneq ($(wildcard $(SHARED)/assets/models/*.pth),)
export SEMSEG_ROS_CACHE ?= $(SHARED)/assets/models
# Runtime exports never go into the (read-only) shared folder.
export SEMSEG_ROS_EXPORT_CACHE ?= $(abspath build/runtimes)
endif
DEMO_SOURCE ?= $(firstword $(wildcard $(SHARED)/assets/camvid_val/images))
DEMO_ARGS ?=
PYTEST_ARGS ?=
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export ROS_LOG_DIR ?= $(abspath $(VENV))/ros_log
STAMP := $(VENV)/.semseg_ros_installed
# What the installed package is built from (not the tests, docs or outputs such as eval_output/).
SOURCES := $(wildcard setup.py setup.cfg package.xml $(shell git ls-files --cached --others \
	--exclude-standard -- semseg_ros config launch resource 2>/dev/null))

.PHONY: venv demo test lint bench-engine clean

venv: $(STAMP)

$(VENV)/.requirements: requirements.txt requirements-nodeps.txt
	@test -x $(PY) || test -n "$(PYTHON)" || { echo 'make: needs python3.11 or python3.12' \
	  '(or PYTHON=/path/to/python3.x)' >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check 'pip>=23.1'
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

$(STAMP): $(VENV)/.requirements $(SOURCES)
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
	rm -rf $(VENV) build *.egg-info demo_output eval_output

# Set-up, build and the two commands of the README: `make demo` and `make test`.
# Both create or refresh .venv/ (pinned requirements; torch==2.13.0, the CPU
# build) and build the native extension against that torch. A second run only
# redoes what changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.requirements-installed
BUILD_INFO := ssdh_port/_build_info.py
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: all demo test build bench proto cuda-check device-test clean browser

all: build

$(DEPS_STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/lib/python*/site-packages/ssdh_port_repo.pth
	# An editable install of the package (tools/ and experiments/ find
	# ssdh_port); the extension is built in place by the rule below.
	SSDH_NO_EXTENSION=1 $(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

# The native extension, built in place against the venv's torch (incremental).
$(BUILD_INFO): $(DEPS_STAMP) $(NATIVE_SOURCES) setup.py
	$(PY) setup.py --quiet build_ext --inplace

build: $(BUILD_INFO)

# Debian's chromium for the page test (tests/test_server.py drives it with
# playwright; nothing is downloaded from anywhere but the Debian archive).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get install -y -q chromium || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

browser: $(CHROMIUM)

test: build browser
	$(PY) -m ruff check .
	$(PY) scripts/check_cuda_compile.py
	SSDH_PROGRESS=0 $(PY) -m pytest -q tests

demo: build
	$(VENV)/bin/ssdh demo

bench: build
	$(PY) bench/bench_ops.py

# Regenerate ssdh_port/caffe/proto/caffe_pb2.py (committed) from caffe.proto with
# protoc from grpcio-tools, in a tool venv of its own.
proto:
	test -x .proto-venv/bin/python || $(PYTHON) -m venv .proto-venv
	.proto-venv/bin/python -m pip install --quiet grpcio-tools==1.85.1
	cd ssdh_port/caffe/proto && ../../../.proto-venv/bin/python -m grpc_tools.protoc -I. --python_out=. caffe.proto

cuda-check: $(DEPS_STAMP)
	$(PY) scripts/check_cuda_compile.py

# On a GPU machine whose python already has torch with CUDA (no venv, no network):
# build in place against that torch and run the whole suite, CUDA tests included.
device-test:
	$(PYTHON) setup.py --quiet build_ext --inplace
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf build ssdh_port/_C*.so $(BUILD_INFO)

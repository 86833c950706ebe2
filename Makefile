# The two commands of the README: `make demo` and `make test`. Both create .venv and install what is missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := device,train,compile,test
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?= -m "not slow and not gpu"
export MLFLOW_DISABLE_TELEMETRY := true
export OMP_WAIT_POLICY := PASSIVE
# The peer venv: the `fer` package (TensorFlow, facenet-pytorch) for the whole-frame comparison. Kept apart from
# .venv and from every install profile of ours; `make bench-peers` creates it (~7 GB, from pinned requirements).
VENV_PEERS := .venv-peers
PEERS_REQ := benchmarks/peers/requirements.txt benchmarks/peers/requirements-nodeps.txt
PEERS_STAMP := $(VENV_PEERS)/.installed-$(shell cat $(PEERS_REQ) | sha256sum | cut -c1-12)
DEMO_BENCH := --bundle demo-out/bundle --public-key demo-out/keys/signing.pub --checkpoint demo-out/runs/fit/extractor.pt
FRAMES_ARGS ?=

.PHONY: setup demo test test-all bench bench-peers frames-run peers-venv fuzz mosquitto browser clean help

help:
	@echo "make demo   - set up .venv (+ Mosquitto) and run the whole loop on embedded defaults"
	@echo "make test   - set up, then run the test suite (slow and GPU tests excluded)"
	@echo "make test-all - every test including slow ones"
	@echo "make bench  - benchmark the demo's bundle, whole frames and the online loop (after make demo)"
	@echo "make bench-peers - create .venv-peers (fer + TensorFlow + facenet-pytorch) and run whole frames vs fer"
	@echo "make fuzz   - 10,000 fuzzed inputs per parser (updates, samples, commands, manifests, configs, images)"

setup: $(STAMP) mosquitto

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" setuptools wheel
	# torch is pinned in setup.cfg; this machine's wheel store provides it (an unpinned torch pulls CUDA wheels).
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# Mosquitto from Debian is the broker for tests, CI and the demo.
mosquitto:
	@if ! command -v mosquitto >/dev/null && ! test -x /usr/sbin/mosquitto; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else echo "Mosquitto is missing: install the Debian package 'mosquitto' (MQTT tests will be skipped)"; fi; \
	fi
	@if [ "$${CI:-}" = true ] && ! command -v mosquitto >/dev/null && ! test -x /usr/sbin/mosquitto; then \
	  echo "CI=true: Mosquitto could not be installed; the MQTT suite must not be skipped in CI" >&2; exit 1; fi

# Debian's Chromium + its driver: the device page's end-to-end test drives it headless (Selenium).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "Chromium is missing: install the Debian packages 'chromium' and 'chromium-driver' (browser tests will be skipped)"; fi; \
	fi
	@if [ "$${CI:-}" = true ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then \
	  echo "CI=true: Chromium could not be installed; the browser test must not be skipped in CI" >&2; exit 1; fi

demo: setup
	$(PY) -m infantino.benchmarks.demo $(DEMO_ARGS)

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

# test-all includes the slow test of the real fer peer, which needs .venv-peers (under CI=true it must not skip).
test-all: setup browser peers-venv
	$(PY) -m pytest -m "not gpu"

# Every parser of outside input, 10,000 inputs each (make test runs 150 each); figures: docs/results/fuzz.json.
fuzz: setup
	INFANTINO_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-10000} INFANTINO_FUZZ_REPORT=docs/results/fuzz.json \
	  $(PY) -m pytest -q -p no:cacheprovider -W ignore::hypothesis.errors.HypothesisWarning tests/test_fuzz.py

# Benchmarks on the bundle `make demo` built (see docs/benchmarks.md for every option).
bench: setup
	@test -d demo-out/bundle || { echo "make bench measures demo-out/bundle: run 'make demo' first"; exit 2; }
	$(VENV)/bin/infantino-bench models $(DEMO_BENCH) \
	  --batch 1,8 --json demo-out/bench-models.json --csv demo-out/bench-models.csv
	@if test -x $(VENV_PEERS)/bin/python; then \
	  $(MAKE) --no-print-directory peers-venv frames-run; \
	else \
	  echo "Whole frames without the peer rows: .venv-peers is missing. 'make bench-peers' creates it (fer with Haar"; \
	  echo "and MTCNN, TensorFlow, facenet-pytorch; ~7 GB) and runs the comparison with them."; \
	  $(MAKE) --no-print-directory frames-run FRAMES_ARGS="--peers none $(FRAMES_ARGS)"; \
	fi
	$(VENV)/bin/infantino-bench online --broker local --json demo-out/bench-online.json

# Whole 640x480 frames: our pipelines (every backend x precision x detector, PyTorch from the demo's checkpoint)
# against the fer package with Haar and with MTCNN, run in .venv-peers. Batch 1; see docs/benchmarks.md.
bench-peers: setup peers-venv
	@$(MAKE) --no-print-directory frames-run

frames-run:
	@test -d demo-out/bundle || { echo "the whole-frame benchmark measures demo-out/bundle: run 'make demo' first"; exit 2; }
	$(VENV)/bin/infantino-bench frames $(DEMO_BENCH) --peer-python $(VENV_PEERS)/bin/python \
	  --json demo-out/bench-frames.json --csv demo-out/bench-frames.csv $(FRAMES_ARGS)

peers-venv: $(PEERS_STAMP)

$(PEERS_STAMP): $(PEERS_REQ)
	@test -x $(VENV_PEERS)/bin/python || $(PYTHON) -m venv $(VENV_PEERS)
	$(VENV_PEERS)/bin/python -m pip install -q --upgrade "pip>=24" wheel
	# what fer needs to run, pinned (torch/torchvision: the pair this machine's wheel store holds)
	$(VENV_PEERS)/bin/python -m pip install -q -r benchmarks/peers/requirements.txt
	# fer and facenet-pytorch by hash, without their metadata's pins (torch<2.3, numpy<2, opencv-contrib, moviepy...)
	$(VENV_PEERS)/bin/python -m pip install -q --no-deps --require-hashes -r benchmarks/peers/requirements-nodeps.txt
	@rm -f $(VENV_PEERS)/.installed-*
	@touch $@

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
	@test ! -d $(VENV_PEERS) || echo "kept $(VENV_PEERS) (the peer venv); remove it by hand if you want the space back"

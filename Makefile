# Two commands on a fresh machine:  `make demo` runs it, `make test` passes the tests.
# Both install what they need: Debian packages via apt-get when missing (as root), Python deps in .venv.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# podman, runc and mmdebstrap build and run the image (tests/image/): runc because crun refuses
# hybrid cgroups, mmdebstrap for the stand-in base where no registry is reachable. promtool (Debian's
# prometheus package) checks and unit-tests the chart's alerts (tests/test_prometheus_rules.py).
SYSTEM_BINARIES := redis-server sshd ssh rsync prometheus-alertmanager chromium podman runc mmdebstrap \
	promtool
SYSTEM_PACKAGES := redis-server openssh-server openssh-client rsync prometheus-alertmanager chromium \
	podman runc mmdebstrap prometheus
PYTEST_ARGS ?= --durations=15  # the slowest tests, in every log: the suite must stay well under 30 min
IMAGE_TEST := RUN_IMAGE=1 $(PY) -m pytest tests/image $(PYTEST_ARGS)

.PHONY: test demo dev lint format system venv clean image image-test

# The fuzz suite and the safety property test run once, in their long modes (15,000+ generated
# requests, about 3 min; 500+ generated sequences checked against issue 13's invariants, about 4 min;
# on 2 cores; docs/SAFETY.md), beside the main suite: they are CPU-bound and in-process, the main
# suite mostly waits on its servers (its CPU time is about a third of its wall time), and the two in
# a row took over 30 min. Their output follows the main suite's; either failing fails `make test`.
# The image is built first and its tests run last, in the image as the Helm chart runs it.
SLOW_LOG := build/slow-tests.log
test: system venv lint image
	@mkdir -p build
	@RUN_SLOW=1 $(PY) -m pytest tests/test_fuzz.py tests/test_properties.py --basetemp=build/slow-tmp $(PYTEST_ARGS) \
		>$(SLOW_LOG) 2>&1 & slow=$$!; \
	$(PY) -m pytest --ignore=tests/test_fuzz.py --ignore=tests/test_properties.py --ignore=tests/image \
		$(PYTEST_ARGS); main=$$?; \
	wait $$slow; slowrc=$$?; \
	echo "== RUN_SLOW=1 pytest tests/test_fuzz.py tests/test_properties.py (ran beside the main suite)"; \
	cat $(SLOW_LOG); \
	test $$main -eq 0 && test $$slowrc -eq 0
	$(IMAGE_TEST)

# ringrift-remediator:<version> from the Dockerfile, with podman (or a docker whose daemon answers).
image: system
	python3 tests/image/build.py

# The image's own tests: serve, worker (a real ladder over SSH and rsync) and rules check, inside it.
image-test: system venv image
	$(IMAGE_TEST)

demo: system venv
	$(VENV)/bin/remediator demo

dev: venv
	$(VENV)/bin/remediator dev

# mypy reads its settings (files, the strict modules) from pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# System binaries the real-component tests need. Missing ones are installed with apt-get; where that is
# impossible (not root) the target fails: the suite never skips a test for a missing binary.
system:
	@python3 -c 'import ensurepip' 2>/dev/null || { \
	  echo "python3 cannot create a venv -> apt-get install python3-venv"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv || exit 1; }
	@missing=""; for b in $(SYSTEM_BINARIES); do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "missing:$$missing -> apt-get install $(SYSTEM_PACKAGES)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or install them yourself)"; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    $(SYSTEM_PACKAGES) || exit 1; \
	fi; \
	for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || \
	  { echo "still missing: $$b"; exit 1; }; done

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

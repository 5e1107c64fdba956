# One entry point for everything: each target creates .venv and installs the four packages
# (editable, with test extras) the first time, so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= quick
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed
PACKAGES := packages/stpn-core packages/stpn-analysis packages/stpn-supervised packages/stpn-rl

.PHONY: venv test reproduce-ar reproduce-familiarity reproduce-maze bench lint clean

$(STAMP): Makefile constraints.txt $(foreach p,$(PACKAGES),$(p)/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt \
		$(foreach p,$(PACKAGES),-e "$(p)[test]")
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

reproduce-ar: $(STAMP)
	$(PY) -m stpn_supervised.reproduce_ar --profile $(PROFILE)

reproduce-familiarity: $(STAMP)
	$(PY) -m stpn_supervised.reproduce_familiarity --profile $(PROFILE)

# The maze comparison under the paper's algorithm (a2c-bptt): quick ~30 min on 2 cores.
reproduce-maze: $(STAMP)
	$(PY) -m stpn_rl.reproduce --task maze --profile $(PROFILE)

bench: $(STAMP)
	$(PY) benchmarks/stpn_speed.py
	$(PY) benchmarks/rl_speed.py

lint: $(STAMP)
	$(PY) -m ruff check packages tests benchmarks

clean:
	rm -rf $(VENV)

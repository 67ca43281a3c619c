# The two commands of the README: `make demo` and `make test`. Both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap demo test lint types unit stations deploytest soak linktest bench clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m scripts.demo

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: bootstrap
	$(VENV)/bin/mypy

# The real stations' relays, through the player and end to end (Icecast, HLS, bad input; about
# 3 minutes), run in their own tier, `make stations`, so that `make test` stays within 10 minutes
# on 2 cores.
STATIONS := tests/adapters/test_player_relay.py tests/e2e/test_relay_stations.py
# What is deployed beside the receiver, in its own tier too (`make deploytest`, about a minute;
# CI runs it after `make test`): scripts/install.sh into a temporary root (real venvs; the
# first run downloads a wheelhouse from PyPI), the boards' bundles built by scripts/bundle.sh,
# and the brokers' own configs (config/brokers/: bridged Mosquittos, a two-node ejabberd).
DEPLOYMENT := tests/test_install.py tests/test_bundle_build.py tests/brokers
# The tests mostly wait (on brokers, daemons, libVLC), not compute: four workers (pytest-xdist,
# a test file to a worker) take 2-3 minutes on 2 cores where one took 8-9. TEST_WORKERS=0 runs
# them in this process, one after another.
TEST_WORKERS ?= 4
unit: bootstrap
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(addprefix --ignore=,$(STATIONS) $(DEPLOYMENT))

stations: bootstrap
	$(PY) -m pytest $(STATIONS)

deploytest: bootstrap
	$(PY) -m pytest $(DEPLOYMENT)

test: lint types unit

# The receiver behind an emulated rural 4G link (network namespaces; root): tests/link/. A few
# minutes, so not in `make test`; CI runs it after.
linktest: bootstrap
	LOA_LINK_TIER=1 $(PY) -m pytest tests/link

# The slower tier, after `make test` in CI: the SIGKILL loop with many more kills (about 1.6 s
# each). It prints its seed; RESILIENCE_SEED=<seed> repeats the choices.
SOAK_KILLS ?= 120
soak: bootstrap
	RESILIENCE_KILLS=$(SOAK_KILLS) $(PY) -m pytest tests/e2e/test_resilience.py -k sigkill -q -s

bench: bootstrap
	$(PY) -m bench

# One .deb per board architecture with the Python wheels inside (dist/); see scripts/bundle.sh.
ARCH ?= arm64
.PHONY: bundle
bundle: bootstrap
	bash scripts/bundle.sh $(ARCH)

# The installed unit under a real systemd in a container (root; a Debian root made once and
# kept under /var/cache/loa-receiver-systemtest). See systemtest/conftest.py.
.PHONY: systemtest
systemtest: bootstrap
	bash scripts/systemtest.sh

# A board's bundle proved on its architecture under qemu-user-static (root): installed,
# upgraded, removed, check-config, one signed play into a WAV. `make systemtest` includes
# arm64; armhf here (.ci/run calls it after systemtest): its root and run take about 10 minutes
# on a clean machine, 5 once made.
.PHONY: bundletest
bundletest: bootstrap
	bash scripts/bundletest.sh $(ARCH)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# Install on this machine (Raspberry Pi OS / Debian 12, as root): Debian packages, the system user,
# the program in /opt/loa-receiver, the unit, and the example config if there is none yet.
# Options go through INSTALL_FLAGS, e.g. `sudo make install INSTALL_FLAGS=--upgrade`.
# `make uninstall` keeps /etc/loa-receiver and /var/lib/loa-receiver.
.PHONY: install uninstall
INSTALL_FLAGS ?=

install:
	bash scripts/install.sh $(INSTALL_FLAGS)

uninstall:
	bash scripts/install.sh --uninstall $(INSTALL_FLAGS)

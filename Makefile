# One task runner. Needs only Python 3.11+ and make: uv is installed into .tools/ on first
# use (unless already on PATH), dependencies come from uv.lock.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
# The interpreter itself, not a shim (pyenv): uv compares it with the one .venv was made from.
export UV_PYTHON := $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
SYNCED := .venv/.synced

.PHONY: serve worker test lint typecheck format bench migrate clean chromium

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

$(SYNCED): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --quiet
	@touch $@

serve: $(SYNCED)
	$(UV) run --frozen --no-sync vivix serve

worker: $(SYNCED)
	$(UV) run --frozen --no-sync vivix worker

migrate: $(SYNCED)
	$(UV) run --frozen --no-sync vivix migrate

# The whole suite: SQLite always; PostgreSQL + Redis too when VIVIX_TEST_POSTGRES_URL /
# VIVIX_TEST_REDIS_URL are set (CI=true sets them to the local services and requires them).
test: $(SYNCED) chromium
	$(UV) run --frozen --no-sync python -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

# Browser tests drive Debian's chromium (Playwright's own download is unreachable): install
# it when missing and we can (root, or passwordless sudo); otherwise those tests say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	    echo "chromium missing and no root: browser tests will skip (apt-get install chromium)"; exit 0; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "chromium could not be installed: browser tests will skip"; }

lint: $(SYNCED)
	$(UV) run --frozen --no-sync ruff check src tests bench clients
	$(UV) run --frozen --no-sync ruff format --check src tests bench clients
	$(UV) run --frozen --no-sync mypy

format: $(SYNCED)
	$(UV) run --frozen --no-sync ruff format src tests bench clients
	$(UV) run --frozen --no-sync ruff check --fix src tests bench clients

bench: $(SYNCED)
	$(UV) run --frozen --no-sync python -m bench

clean:
	rm -rf .venv .tools .vivix

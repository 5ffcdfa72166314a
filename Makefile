# confusion-exporter: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
APT_GET := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

.DEFAULT_GOAL := help
.PHONY: help install tools test soak lint format grafana alerting kubernetes demo bench study clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install the package with its test and dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

tools: ## install Debian's prometheus (promtool), prometheus-alertmanager (amtool), chromium (browser tests) and wrk (load tests) when missing
	@missing=""; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $$missing >/dev/null; \
	fi

test: install tools ## install what is needed and run every test (CI=true turns skips into failures)
	$(BIN)/python -m pytest

soak: install tools ## the fault tests, longer: 40 SIGKILLs mid-fold under write bursts (about 5 min)
	CE_SOAK_KILLS=40 $(BIN)/python -m pytest -q tests/test_faults.py

lint: install ## ruff, formatting, mypy, and the generated alerting files against their spec
	$(BIN)/ruff check exporter migrations tests benchmarks grafana deploy alertmanager
	$(BIN)/ruff format --check exporter migrations tests benchmarks grafana deploy alertmanager
	$(BIN)/mypy exporter/confusion_exporter
	$(BIN)/python alertmanager/generate.py --check

format: install ## apply ruff's formatting and autofixes
	$(BIN)/ruff format exporter migrations tests benchmarks grafana deploy alertmanager
	$(BIN)/ruff check --fix exporter migrations tests benchmarks grafana deploy alertmanager

grafana: install ## regenerate Grafana dashboards and alert rules from their sources
	$(BIN)/python grafana/generate.py

alerting: install ## regenerate alertmanager/alertmanager.yml, Grafana's policies, contact points, mute timings and the Kubernetes AlertmanagerConfig from alertmanager/routing.yml
	$(BIN)/python alertmanager/generate.py

kubernetes: install ## regenerate deploy/kubernetes/'s PrometheusRule and dashboard ConfigMaps from their sources
	$(BIN)/python deploy/kubernetes/generate.py

bench: install tools ## benchmarks that print figures (about 9 min; 10M rows and the false-pages study: docs/)
	$(BIN)/python benchmarks/scrape_benchmark.py
	$(BIN)/python benchmarks/live_rss.py
	$(BIN)/python benchmarks/scrape_load.py
	$(BIN)/python benchmarks/rollup_benchmark.py --rows 1000000 --repeat 3
	$(BIN)/python benchmarks/fleet_benchmark.py --refreshes 3
	$(BIN)/python benchmarks/exposition_benchmark.py

study: install ## issue 15's study: false pages and delays of the whole shift page (about 21 min on 2 idle cores, 67 min loaded; docs/statistics.md)
	$(BIN)/python benchmarks/false_pages.py --whole-page --months 4 --reps 12

demo: install ## run the product without Docker: embedded Postgres, simulator, exporter on :9745
	$(BIN)/confusion-exporter demo

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache *.egg-info

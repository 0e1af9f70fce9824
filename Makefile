# Entry points for people and CI; scripts/setup.sh does the installing.
PY := .venv/bin/python

.PHONY: setup test demo lint bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q tests/

demo: setup
	$(PY) tools/demo.py

# Lint assumes .venv (`make setup` once); it installs nothing, so it runs in seconds.
lint:
	@test -x $(PY) || { echo "lint: no $(PY); run make setup first" >&2; exit 1; }
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: setup
	$(PY) tools/bench/run.py --results docs/benchmarks.json

# Back to a fresh checkout (the next target run rebuilds .venv).
clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Entry points for people and CI; scripts/setup.sh does the installing.
PY := .venv/bin/python

.PHONY: setup test demo lint bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q tests/

demo: setup
	$(PY) tools/demo.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: setup
	$(PY) tools/bench/run.py --results docs/benchmarks.json

# Back to a fresh checkout (the next target run rebuilds .venv).
clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

#!/usr/bin/env bash
# Run once by the lead after the last branch of the issue-11 round is merged (see `make lint`).
cd "$(dirname "${BASH_SOURCE[0]}")/.." && .venv/bin/python -m ruff format .

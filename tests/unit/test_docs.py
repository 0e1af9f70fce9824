"""docs/architecture.md names only files that exist, and draws the floors test_layering checks."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.test_layering import FLOORS

REPO = Path(__file__).resolve().parents[2]
ARCH = (REPO / "docs" / "architecture.md").read_text()
SOURCE = REPO / "r8imfs"


def test_every_file_named_in_the_architecture_exists() -> None:
    names = set(re.findall(r"`([\w./-]+\.(?:py|sql|md))`", ARCH))
    assert "table.py" in names  # the pattern sees the file names
    known = {p.name for p in REPO.rglob("*") if ".venv" not in p.parts} | {
        str(p.relative_to(REPO)) for p in REPO.rglob("*") if ".venv" not in p.parts
    }
    missing = sorted(n for n in names if n not in known and Path(n).name not in known)
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def _drawn(unit: str) -> str:
    """How the drawing names a unit: ``engine/`` for a package, ``errors.py`` for a module."""
    return f"{unit}/" if (SOURCE / unit).is_dir() else f"{unit}.py"


def test_the_drawing_lists_the_floors_in_order() -> None:
    drawing = ARCH.split("```")[1]
    starts = []
    for floor in FLOORS:
        for unit in floor:
            assert _drawn(unit) in drawing, f"{_drawn(unit)} is missing from the drawing"
        starts.append(min(drawing.index(_drawn(u)) for u in floor))
    assert starts == sorted(starts), "the drawing's floors are not in test_layering's order"

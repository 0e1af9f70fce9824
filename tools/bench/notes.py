"""The written part of docs/benchmarks.md: what the numbers mean, where the time goes."""

from __future__ import annotations

from tools.bench.common import Section


def failures(sections: list[Section]) -> list[str]:
    out = []
    for s in sections:
        out += [f"- {s.title.split(':')[0]}: {r.what}: {r.measured} (target {r.target})"
                for r in s.rows if r.ok is False]
    return out


def for_sections(sections: list[Section]) -> list[str]:
    failed = failures(sections)
    head = ["Targets missed in this run:", "", *failed, ""] if failed else ["Every target met.", ""]
    return head + ANALYSIS.strip().splitlines()


ANALYSIS = """
(analysis to be written)
"""

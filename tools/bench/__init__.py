"""The benchmark: one run against a registry it starts itself, results in docs/benchmarks.md.

    .venv/bin/python tools/bench/run.py [--only extract,mount,mutate,engine]
        [--size-scale 1.0] [--repeat 3] [--out docs/benchmarks.md]

Modules, one per area: ``extract`` (issue 3, against skopeo + tar),
``engine`` (issue 3, random reads and index size), ``mount`` (issue 4,
against skopeo + tar and curl), ``mutate`` (issue 6: affix, remix, zstd),
``tables`` (the experiments behind docs/engine-measurements.md). Around
them: ``image`` (the benchmark image, built and pushed with r8imfs's own
client) and ``data`` (its synthetic content), ``context`` (what every area
shares, the peers' runs measured once), ``common`` (children timed with
their peak RSS, medians, result rows), ``report`` (machine facts, Markdown)
and ``notes`` (the written analysis at the end of the document).

Benchmarks are not tests: nothing here asserts; it measures and reports,
pass or fail, and says why where it can.
"""

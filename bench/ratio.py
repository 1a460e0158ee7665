"""Lookups over a grown log beside a small one (issue 18 item 7): ``make bench-growth``
runs ``bench.run`` over each and then this, which reads the two results files and prints
lookups/s and p99 with sealing on (and off), the grown log's as a ratio of the small's.

    .venv/bin/python -m bench.ratio var/bench/results-history-20000.md \\
        var/bench/results-history-2000000.md
"""

import sys
from pathlib import Path

from bench.report import SEALING_OFF, SEALING_ON

# The budget: lookups/s and p99 with sealing on within 10 % of the small log's.
BUDGET = 0.10


def rows(path: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(scenario, connections) -> (req/s, p99 ms) from the PostgreSQL table of a results
    file (bench/report.py's columns: scenario, conns, req/s, p50, p95, p99, ...)."""
    found: dict[tuple[str, int], tuple[float, float]] = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0] in (SEALING_ON, SEALING_OFF) and cells[1].isdigit():
            found.setdefault((cells[0], int(cells[1])), (float(cells[2]), float(cells[5])))
    return found


def main() -> int:
    small, grown = (Path(argument) for argument in sys.argv[1:3])
    before, after = rows(small), rows(grown)
    print(f"\n## Lookups: {grown.name} beside {small.name}\n")
    print(
        "| scenario | conns | req/s small | req/s grown | ratio | p99 small | p99 grown | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    within = True
    for key in sorted(before.keys() & after.keys()):
        (rate_a, p99_a), (rate_b, p99_b) = before[key], after[key]
        print(
            f"| {key[0]} | {key[1]} | {rate_a:.0f} | {rate_b:.0f} | {rate_b / rate_a:.2f}x "
            f"| {p99_a:.1f} | {p99_b:.1f} | {p99_b / p99_a:.2f}x |"
        )
        if key[0] == SEALING_ON:
            within &= rate_b >= (1 - BUDGET) * rate_a and p99_b <= (1 + BUDGET) * p99_a
    if not before.keys() & after.keys():
        print("no lookup runs in common: nothing compared")
        return 1
    print(f"\nSealing on within {BUDGET:.0%} of the small log: {'yes' if within else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

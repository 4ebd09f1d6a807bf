"""Pool the 2D runs of several self_config.py tables by data set and factor (issue 17).

One 75 s run varies by up to ±0.05 in mean F1, so the factor rule is judged on every run with
the planned margin (d/3), pooled over the data seeds of the tables given. Runs named "margin …"
(another margin) and "old defaults" are left out. The factor the plan used in the last table
given is marked.

    python benchmarks/self_config_pool.py benchmarks/self_config_rerun.md benchmarks/self_config_seeds.md \\
        benchmarks/self_config_final.md benchmarks/self_config_12.md benchmarks/self_config_paced.md
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

import numpy as np


def read_runs(path: str):
    """(data, seed, run name, factor, F1@0.9, mean F1) of every 2D row of a self_config.py table
    (tables without a seed column are seed 100, the first rerun)."""
    for line in open(path, encoding="utf-8"):
        if not line.startswith("| 2D"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11:
            cells.insert(1, "100")
        if len(cells) != 12 or not re.fullmatch(r"\d+,\d+", cells[3]):
            continue
        yield cells[0], cells[1], cells[2].replace(" **best**", ""), cells[3], float(cells[-2]), float(cells[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tables", nargs="+", help="self_config.py Markdown tables")
    args = p.parse_args(argv)
    runs = collections.defaultdict(list)
    planned = {}
    for path in args.tables:
        for data, seed, name, factor, f1_09, mean in read_runs(path):
            if name.startswith("margin") or name.startswith("old"):
                continue
            runs[(data, factor)].append((mean, f1_09))
            if name == "plan":
                planned[data] = factor  # the last table's plan wins
    print("| 2D data | factor | runs | mean F1 0.5-0.9 (± s.e.) | F1@0.9 | |")
    print("|---|---|---:|---:|---:|---|")
    for (data, factor), rs in sorted(runs.items(), key=lambda kv: (int(kv[0][0].split("=")[1]), kv[0][1])):
        m = np.array([r[0] for r in rs])
        f9 = np.array([r[1] for r in rs])
        se = f" ± {m.std(ddof=1) / np.sqrt(len(m)):.3f}" if len(m) > 1 else ""
        mark = "the plan" if planned.get(data) == factor else ""
        print(f"| {data} | {factor} | {len(m)} | {m.mean():.3f}{se} | {f9.mean():.3f} | {mark} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

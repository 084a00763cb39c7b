"""Redraw ``results/compare_<task>.png`` and ``results/compare.md`` from the cached JSON (no compute).

    python benchmarks/plot_compare.py [--out results]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402

if __name__ == "__main__":
    compare.main(["--report-only", *sys.argv[1:]])

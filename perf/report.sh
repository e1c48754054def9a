#!/usr/bin/env bash
# perf/REPORT.md and perf/plots/*.png from perf/figures.csv (matplotlib from
# PyPI in a private venv). Add a run's figures to figures.csv (with date and
# machine), then run this.
set -euo pipefail
cd "$(dirname "$0")"
venv="${PLOT_VENV:-/var/tmp/sluice-plot-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import matplotlib" 2>/dev/null || "$venv/bin/pip" install --quiet matplotlib
"$venv/bin/python" report.py

#!/usr/bin/env bash
# Build the BENCHMARKS.md FPE section from a run_all.sh folder: intro + analysis (written by
# hand after reading the numbers) + tables (copied from the reports by make_section.py).
# Usage: benchmarks/fpe/compose.sh OUT   (then python benchmarks/report.py puts it into BENCHMARKS.md)
set -euo pipefail
D=$(dirname "$0")
T=$(mktemp)
.venv/bin/python "$D/make_section.py" "$1" > "$T"
{ cat "$D/intro.md"; echo; echo "### DNF: what we chose and what we see"; echo; cat "$D/analysis_dnf.md"; echo
  sed '/^### Real data: digits/,$d' "$T"; echo; echo "### Real data: what we see"; echo
  cat "$D/analysis_real.md"; echo; sed -n '/^### Real data: digits/,$p' "$T"; } > "$D/report.md"
rm -f "$T"

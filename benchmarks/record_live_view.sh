#!/bin/bash
# Records what a terminal shows while `celltune demo` runs its search: the trials table redrawn in place.
# tmux renders the ANSI redraws; `capture-pane` every few seconds saves the screen as text, one frame per
# capture that changed. Usage: bash benchmarks/record_live_view.sh [OUT] (default
# benchmarks/recordings/demo_live_view.txt); needs tmux and an installed .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/recordings/demo_live_view.txt}
CELLTUNE=$(pwd)/.venv/bin/celltune
WORK=$(mktemp -d)
SESSION=celltune-live-view-$$
tmux new-session -d -s "$SESSION" -x 150 -y 45 "cd $WORK && $CELLTUNE demo --workdir demo; echo EXIT=\$?; sleep 600"
trap 'tmux kill-session -t "$SESSION" 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
: > "$OUT.tmp"
previous=""
start=$(date +%s)
while true; do
  sleep 3
  screen=$(tmux capture-pane -p -t "$SESSION")
  if [ "$screen" != "$previous" ]; then
    printf '=== %s s ===\n%s\n' "$(( $(date +%s) - start ))" "$screen" >> "$OUT.tmp"
    previous=$screen
  fi
  if grep -q "^EXIT=" <<< "$screen"; then break; fi
  if [ $(( $(date +%s) - start )) -gt 900 ]; then echo "demo did not finish in 15 minutes" >&2; exit 1; fi
done
mv "$OUT.tmp" "$OUT"
echo "recorded $(grep -c '^=== ' "$OUT") screens in $OUT"

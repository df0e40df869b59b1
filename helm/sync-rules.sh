#!/usr/bin/env bash
# Copies the Prometheus rule files of monitoring/rules/ into the chart, which renders
# them as a PrometheusRule (Helm cannot read files outside the chart directory).
# helm/tests checks that the two stay identical.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/monitoring/rules"
dst="$repo/helm/kefu/files/rules"
shopt -s nullglob
rules=("$src"/*.yml)
if [ "${#rules[@]}" -eq 0 ]; then
  echo "no rule files in $src" >&2
  exit 1
fi
mkdir -p "$dst"
rm -f "$dst"/*.yml
cp "${rules[@]}" "$dst"/
echo "copied ${#rules[@]} rule file(s) to $dst"

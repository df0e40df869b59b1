#!/usr/bin/env bash
# Validates monitoring/prometheus.yml (and, through rule_files, monitoring/rules/*.yml)
# with `promtool check config`.
#
# Debian's prometheus/promtool is built without Kubernetes service discovery, so it rejects
# `kubernetes_sd_configs` as an unknown field. With such a promtool the file is checked a
# second time from a temporary copy in which only the discovery block of the Kubernetes
# job is swapped for a static target: everything else (relabelling, the other jobs, the
# rule files) is still validated by promtool. With an upstream promtool the file is
# checked as it is.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
promtool="${PROMTOOL:-promtool}"
config="$here/prometheus.yml"

if out="$("$promtool" check config "$config" 2>&1)"; then
  printf '%s\n' "$out"
  exit 0
fi
if ! grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
  printf '%s\n' "$out" >&2
  exit 1
fi

echo "note: this promtool has no Kubernetes discovery; checking a copy whose kubernetes_sd_configs block is a static target"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
ln -s "$here/rules" "$tmp/rules"
awk '
  /^    kubernetes_sd_configs:$/ { print "    static_configs:"; print "      - targets: [\"kubernetes-pod.invalid:9100\"]"; skip = 1; next }
  skip && /^      / { next }
  { skip = 0; print }
' "$config" > "$tmp/prometheus.yml"
if cmp -s "$config" "$tmp/prometheus.yml"; then
  echo "error: found no kubernetes_sd_configs block to replace in $config" >&2
  exit 1
fi
"$promtool" check config "$tmp/prometheus.yml"

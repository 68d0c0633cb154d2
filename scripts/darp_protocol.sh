#!/usr/bin/env bash
# The DARP / ABC / USB protocol on CIFAR-10 alone: labeled N1=1500 head images (gamma_l=100), unlabeled
# M1=3000 (gamma_u=100), disjoint. Supervised only -> pseudo-labels -> FixMatch (+DA, +LA).
#
#   bash scripts/darp_protocol.sh DATA_ROOT OUT [extra train options]
set -euo pipefail
DATA=${1:?data root}; OUT=${2:?output folder}; shift 2
longtail train cifar10-semi-darp-supervised --data-root "$DATA" --out "$OUT/supervised" "$@"
longtail pseudo-label "$OUT/supervised" --pool darp --out "$OUT/pseudo-labels" --data-root "$DATA"
longtail train cifar10-semi-darp-pseudo --data-root "$DATA" --out "$OUT/pseudo" \
  --set data.pseudo_labels="$OUT/pseudo-labels" "$@"
for v in fixmatch fixmatch-da fixmatch-la; do
  longtail train cifar10-semi-darp-$v --data-root "$DATA" --out "$OUT/$v" "$@"
done
longtail compare "$OUT/supervised" "$OUT/pseudo" "$OUT/fixmatch" "$OUT/fixmatch-da" "$OUT/fixmatch-la" \
  --out "$OUT/comparison"

#!/usr/bin/env bash
# Unlabeled data helps (Yang & Xu 2020): supervised base -> pseudo-label an unlabeled pool -> retrain.
#
#   bash scripts/semi_pseudo.sh DATA_ROOT OUT [extra train options, e.g. --epochs 20 --device cpu]
#
# Stage 1 trains CE on labeled CIFAR-10-LT (rho=50, n_max 750); stage 2 labels a pool of 5x the labeled
# size with imbalance rho_U=100, drawn from the CIFAR-10 training images the labeled set did not use
# (true labels hidden; used only for the precision/recall report); stage 3 trains the same loss on
# labeled + pseudo-labeled images (batch 256). POOL can be changed, e.g. POOL="folder:/my/images".
set -euo pipefail
DATA=${1:?data root}; OUT=${2:?output folder}; shift 2
POOL=${POOL:-unused:rho_u=100,factor=5}
longtail train cifar10-semi-base --data-root "$DATA" --out "$OUT/base" "$@"
longtail pseudo-label "$OUT/base" --pool "$POOL" --out "$OUT/pseudo-labels" --data-root "$DATA"
longtail train cifar10-semi-pseudo --data-root "$DATA" --out "$OUT/semi" \
  --set data.pseudo_labels="$OUT/pseudo-labels" "$@"
longtail compare "$OUT/base" "$OUT/semi" --names supervised pseudo-labels --out "$OUT/comparison"

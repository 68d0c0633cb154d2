#!/usr/bin/env bash
# Issue 4 at CPU scale: rotation pre-training on real CIFAR-10-LT rho=100 (ResNet-8, 20 epochs), then CE
# fine-tuning with the same short schedule as benchmarks/cpu_remedies.sh's CE row (from scratch).
# Appends the fine-tuning row to benchmarks/RESULTS.md; the pre-training report (rotation accuracy,
# kNN and linear probe) is printed and kept in $OUT/pretrain/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}; OUT=${OUT:-/tmp/longtail-ssl-bench}
python -m longtail pretrain cifar10-lt-rotation-ssp --data-root "$DATA" --device cpu --epochs 20 \
  --set model.arch=resnet8 --out "$OUT/pretrain" --restart --quiet
python benchmarks/run_recipe.py cifar10-lt-ce-rotation-ssp --data-root "$DATA" --device cpu --epochs 20 \
  --set model.arch=resnet8 --set train.init_from="$OUT/pretrain" --seeds 0

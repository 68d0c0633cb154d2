#!/usr/bin/env bash
# Issue 3 at CPU scale: CE against LDAM-DRW, balanced softmax and the logit-adjusted loss on real
# CIFAR-10-LT rho=100 with one short schedule (ResNet-8, 20 epochs, the reference schedule scaled:
# warm-up 1 epoch, lr x0.01 after epoch 16, x0.0001 after 18, DRW from epoch 16). Appends rows to
# benchmarks/RESULTS.md. About 5 minutes per method on 2 quiet CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
for r in ce ldam-drw balanced-softmax logit-adjust; do
  python benchmarks/run_recipe.py cifar10-lt-$r --data-root "$DATA" --device cpu --epochs 20 \
    --set model.arch=resnet8 --seeds 0
done

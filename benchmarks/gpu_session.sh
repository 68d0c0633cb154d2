#!/usr/bin/env bash
# Issue 7 on a lent GPU machine, in stages that each fit one call of the device tool (10 minutes).
#
#   here:     ../shared/tools/device-pack --lt-ratio 100 --out .device/c10-lt100
#   device:   bash benchmarks/gpu_session.sh check      # CUDA-graph test + 10 epochs eager vs graph
#             bash benchmarks/gpu_session.sh single     # the 200-epoch cifar10-lt-ce recipe, graph engine
#             bash benchmarks/gpu_session.sh compile    # the same with torch.compile inside the graph
#             bash benchmarks/gpu_session.sh seeds      # 3 seeds one after another (accuracy vs REFERENCE.md)
#             bash benchmarks/gpu_session.sh stack      # 5 seeds at once (the 90 s target)
#             bash benchmarks/gpu_session.sh ldam       # the LDAM-DRW recipe, graph engine
#             bash benchmarks/gpu_session.sh fast       # issue 15's CPU recipes on the GPU: cifar10-lt-fast-la,
#                                                       # -5min, -10min, 3 seeds each (minutes on 2 CPU cores)
#             bash benchmarks/gpu_session.sh probe      # issue 14: 10 epochs of cifar10-lt-vs-adrw-tla (SAM) and
#                                                       # cifar10-lt-glmc, graph engine: seconds per epoch
#             bash benchmarks/gpu_session.sh vs         # issue 14: cifar10-lt-vs-adrw-tla, 400 epochs (LONG_SEEDS,
#             bash benchmarks/gpu_session.sh glmc       # default 0), cifar10-lt-glmc, 200 epochs; checkpoints every
#                                                       # 20 epochs into $OUT/gpu-runs: a run cut by its limit
#                                                       # resumes when that folder is carried back (RESUME_FROM=
#                                                       # .device/gpu-runs; it is copied into $OUT/gpu-runs first)
#             bash benchmarks/gpu_session.sh best       # issue 14's candidate: rotation SSP, then cifar10-lt-best
#                                                       # (vs, best: LONG_SEEDS="0 1 2" LONG_STACK=1 trains the
#                                                       # seeds at once as one stacked network, SAM included)
#             bash benchmarks/gpu_session.sh acr        # issue 14: ACR on the DARP protocol (ACR_SETTING=reversed
#                                                       # for the reversed pool), from .device/c10-darp (carry it
#                                                       # instead of c10-lt100: benchmarks/darp_pack.py makes it)
#             bash benchmarks/gpu_session.sh all        # STAGES (default: check, probe, vs, glmc, then issue 7's
#                                                       # single, stack, fast, ldam, seeds, compile) in one call,
#                                                       # each stage cut at its own limit and at BUDGET seconds in
#                                                       # all (what a stage leaves unused goes on)
#   (carry .device/c10-lt100.xz and .device/c10-lt100.json with each call)
#
# Rows go to $OUT/RESULTS.md on the device machine (it keeps nothing else); append them to
# benchmarks/RESULTS.md here. A dry run on the CPU: EPOCHS=1 DEVICE=cpu ARCH=resnet8 bash ... check
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}  # the GPU machine has no install: run from the source tree
PACK=${PACK:-.device/c10-lt100}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}  # the GPU machine has python3 (with PyTorch) and maybe no `python`
RESULTS=${OUT:+$OUT/RESULTS.md}
RESULTS=${RESULTS:-benchmarks/RESULTS.md}
EXTRA=()
[[ -n "${EPOCHS:-}" ]] && EXTRA+=(--epochs "$EPOCHS")
[[ -n "${ARCH:-}" ]] && EXTRA+=(--set "model.arch=$ARCH")

run() {  # run_recipe.py RECIPE [args...]
  "$PY" benchmarks/run_recipe.py "$@" --pack "$PACK" --device "$DEVICE" --results "$RESULTS" "${EXTRA[@]}"
}

stack_flag() {  # --stack for LONG_STACK=1 with two or more LONG_SEEDS (stacking one seed is refused)
  [[ -n "${LONG_STACK:-}" && $(wc -w <<< "${LONG_SEEDS:-0}") -gt 1 ]] && echo --stack || true
}

runs_folder() {  # RUNS: $OUT/gpu-runs, which comes back; RESUME_FROM (a carried earlier gpu-runs) is copied in first
  RUNS=${OUT:-runs}/gpu-runs
  if [[ -n "${RESUME_FROM:-}" && ! -e "$RUNS" ]]; then mkdir -p "$(dirname "$RUNS")"; cp -r "$RESUME_FROM" "$RUNS"; fi
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

case "${1:-check}" in
  check)
    if [[ "$DEVICE" == cuda* ]]; then  # every test that runs only where CUDA is
      "$PY" -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_losses.py tests/test_metrics_report.py \
        tests/test_mfw.py tests/test_samplers_weights.py -k "cuda or replayed" -rs || echo "== the CUDA tests FAILED (the stage goes on)"
      "$PY" benchmarks/graph_drift.py  # the engines' weight difference after 1-5 epochs (what the test bounds)
    fi
    E=${EPOCHS:-10}
    "$PY" benchmarks/run_recipe.py cifar10-lt-ce --pack "$PACK" --device "$DEVICE" --results "$RESULTS" \
      --epochs "$E" ${ARCH:+--set model.arch=$ARCH} --set train.engine=eager
    "$PY" benchmarks/run_recipe.py cifar10-lt-ce --pack "$PACK" --device "$DEVICE" --results "$RESULTS" \
      --epochs "$E" ${ARCH:+--set model.arch=$ARCH} --set train.engine=graph
    ;;
  single)  run cifar10-lt-ce --set train.engine=graph ;;
  compile) run cifar10-lt-ce --set train.engine=graph --set train.compile=max-autotune-no-cudagraphs ;;
  # the graph engine, asked for by name: with train.engine=eager the default then, 2026-11-30's stack and seeds stages
  # ran eager and ran out of time (5 stacked seeds 31,616 img/s eager against 80,272 with graphs on 2026-11-29)
  seeds)   run cifar10-lt-ce --seeds ${SEEDS:-0 1 2} --set train.engine=graph ;;
  stack)   run cifar10-lt-ce --seeds 0 1 2 3 4 --stack --set train.engine=graph ;;
  ldam)    run cifar10-lt-ldam-drw --set train.engine=graph ;;
  fast)    run cifar10-lt-fast-la --seeds 0 1 2 && run cifar10-lt-fast-la-5min --seeds 0 1 2 &&
           run cifar10-lt-fast-la-10min --seeds 0 1 2 ;;
  # issue 14: SAM (two passes) and GLMC are graphed since 2026-12-01 (equal to eager steps on the CPU; the check
  # stage's replayed-graph test has a SAM case); AutoAugment + Cutout are drawn once per epoch on the device
  probe)   for r in cifar10-lt-vs-adrw-tla cifar10-lt-glmc; do  # run's EXTRA repeats --epochs only when EPOCHS is set
             run "$r" --epochs "${EPOCHS:-10}" --set train.engine=graph || echo "== $r FAILED (the stage goes on)"
           done
           # the same SAM recipe, 3 seeds at once (stacked SAM: a gradient norm per seed, since 2026-12-01)
           run cifar10-lt-vs-adrw-tla --seeds 0 1 2 --stack --epochs "${EPOCHS:-10}" --set train.engine=graph \
             --out "${OUT:-runs}/probe-stacked-vs" || echo "== stacked vs-adrw-tla FAILED (the stage goes on)" ;;
  vs|glmc)
    runs_folder
    recipe=$([[ $1 == vs ]] && echo cifar10-lt-vs-adrw-tla || echo cifar10-lt-glmc)
    [[ $1 == glmc && -n "${LONG_STACK:-}" ]] && { echo "GLMC cannot be stacked: LONG_STACK ignored"; LONG_STACK=; }
    run "$recipe" --seeds ${LONG_SEEDS:-0} $(stack_flag) --set train.engine=graph \
      --set train.checkpoint_every=20 --out "$RUNS/$recipe" ;;
  best)  # issue 14's candidate (docs/PROTOCOLS.md): rotation SSP (resumed or kept in $RUNS), then cifar10-lt-best from it
    runs_folder
    "$PY" -m longtail pretrain cifar10-lt-rotation-ssp --set data.pack="$PACK" --device "$DEVICE" --quiet \
      --set train.checkpoint_every=20 ${EPOCHS:+--epochs $EPOCHS} ${ARCH:+--set model.arch=$ARCH} --out "$RUNS/cifar10-lt-rotation-ssp"
    run cifar10-lt-best --seeds ${LONG_SEEDS:-0} $(stack_flag) --set train.engine=graph \
      --set train.checkpoint_every=20 \
      --set train.init_from="$RUNS/cifar10-lt-rotation-ssp" --out "$RUNS/cifar10-lt-best" ;;
  acr)  # issue 14: ACR on the DARP protocol (250,000 WRN-28-2 steps, eager: ACR's estimate is not graphable), from a
        # pack of the protocol's images (here: python benchmarks/darp_pack.py --out .device/c10-darp); checkpoints
        # every 10 epochs into $RUNS, so a run cut by its limit resumes next session (RESUME_FROM)
    runs_folder
    PACK=${DARP_PACK:-.device/c10-darp}
    recipe=cifar10-semi-darp-acr${ACR_SETTING:+-$ACR_SETTING}  # ACR_SETTING: empty (consistent) or reversed
    run "$recipe" --seeds ${LONG_SEEDS:-0} --out "$RUNS/$recipe" \
      ${ACR_STEPS:+--set semi.acr_steps_per_epoch=$ACR_STEPS} ;;
  all)  # one device call: each stage in its own process, cut at its limit; a failed stage does not stop the rest
    start=$(date +%s); budget=${BUDGET:-540}
    for stage_limit in ${STAGES:-check:120 probe:150 vs:300 glmc:250 single:150 stack:200 fast:120 ldam:100 seeds:200 compile:150}; do
      stage=${stage_limit%%:*}; limit=${stage_limit##*:}
      left=$(( budget - ($(date +%s) - start) ))
      (( left < 30 )) && { echo "== $stage skipped: ${left}s of the budget left"; continue; }
      (( limit > left )) && limit=$left
      echo "== $stage (limit ${limit}s) $(date +%T)"
      t0=$(date +%s)
      rc=0; SEEDS="1 2" NO_TAIL=1 timeout --kill-after=5 "$limit" bash "$0" "$stage" || rc=$?  # seed 0 ran in single
      echo "== $stage rc=$rc wall $(( $(date +%s) - t0 ))s"
    done
    ;;
  *) echo "unknown stage ${1}: check | single | compile | seeds | stack | ldam | fast | probe | vs | glmc | best | acr | all" >&2
     exit 2 ;;
esac
echo "rows written to $RESULTS"
[[ -n "${NO_TAIL:-}" ]] || tail -n 12 "$RESULTS"

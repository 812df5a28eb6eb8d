#!/usr/bin/env bash
# One arm of a recipe screen on FSDD (docs/screens-fsdd.md): fsdd-8k's recipe from random
# weights on one thread, for MINUTES of wall time; run again with the same NAME to resume it.
#
#   FSDD=path/to/fsdd/recordings RUNS=runs/screens bash tools/screen_arm.sh NAME MINUTES [vqaudio train options]
#   bash tools/screen_arm.sh plain-s0 90 --seed 0
#   bash tools/screen_arm.sh lpc10-s0 90 --seed 0 --condition-layers 2 --mel-loss-weight 1 --lpc-order 10
#
# Two arms run side by side, one thread each (start both, then wait); each is scored with
#   vqaudio evaluate "$FSDD" --checkpoint "$RUNS/NAME" --out "$RUNS/eval-NAME" --baselines original \
#       --skip pesq,visqol,mcd,plots --threads 1
# The cosine schedule runs over 4,500 steps (1.4e8 samples), so the rate has fallen to about
# 3e-4 after 1.5 CPU hours at 22,000 samples/s (fp32, one thread, AVX2); fp32 keeps every arm's
# arithmetic the same on machines with and without native bf16.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
name=$1; minutes=$2; shift 2
FSDD=${FSDD:-../shared/data/fsdd/recordings}
RUNS=${RUNS:-runs/screens}
VQAUDIO=${VQAUDIO:-vqaudio}
if [ ! -d "$FSDD" ]; then
  echo "screen_arm.sh: FSDD=$FSDD: no such folder (set FSDD to the FSDD recordings folder)" >&2
  exit 2
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
resume=()
[ -f "$RUNS/$name/train_config.json" ] && resume=(--resume)
mkdir -p "$RUNS"
exec nice -n 10 $VQAUDIO train "$FSDD" --out "$RUNS/$name" "${resume[@]}" \
  --sample-rate 8000 --residual-channels 32 --gate-channels 64 --skip-channels 32 \
  --batch-size 8 --segment-seconds 0.5 --learning-rate 1e-3 --lr-schedule cosine --max-steps 4500 \
  --mixed-precision no --checkpoint-every 500 --valid-every 1000 --log-every 100 --keep-last 2 \
  --max-minutes "$minutes" --no-progress "$@"

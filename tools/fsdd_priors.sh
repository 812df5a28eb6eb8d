#!/usr/bin/env bash
# The bundled priors of fsdd-8k, made again: both priors fitted to the bundled fsdd-8k's codes of
# the FSDD training takes (5-49), then shipped beside it. Run it whenever fsdd-8k's weights change
# (the priors are tied to the checkpoint_id of the VQ-VAE that made their tokens; a test checks).
#
#   bash tools/fsdd_priors.sh [AR_STEPS [DIFFUSION_STEPS]]   # default 3000 6000; about 30 minutes on 2 cores
#
# 1. tokens: runs/tokens-fsdd-8k (`vqaudio tokenize` of takes 5-49 with --checkpoint fsdd-8k)
# 2. runs/prior-ar (autoregressive) and runs/prior-diffusion (VQ-Diffusion), the recipe's CPU
#    size (d_model 128, 4 layers, 4 heads, 0.9 M parameters), windows of 128 codes, batch 16,
#    lr 1e-3 with cosine decay, one thread each, side by side (the autoregressive prior's validation
#    is lowest near 2,500-3,000 steps and rises after: 140k training codes for 0.9 M parameters)
# 3. each run's config.json, model.safetensors, speakers.json, metrics.json and train_config.json
#    copied into vqaudio/pretrained/fsdd-8k-prior and fsdd-8k-diffusion (their README.md cards are
#    hand-written: update their figures from the evaluation printed last)
set -euo pipefail
cd "$(dirname "$0")/.."
ar_steps=${1:-3000}
diffusion_steps=${2:-6000}
FSDD=${FSDD:-../shared/data/fsdd/recordings}
mkdir -p runs
ls "$FSDD" | awk -F_ '{split($3, a, "."); if (a[1] >= 5) print}' | sed "s|^|$FSDD/|" > runs/fsdd-train-files.txt
rm -rf runs/tokens-fsdd-8k runs/prior-ar runs/prior-diffusion
OMP_NUM_THREADS=2 vqaudio tokenize @runs/fsdd-train-files.txt --checkpoint fsdd-8k --out runs/tokens-fsdd-8k \
  --num-processes 1 --no-progress
common=(--d-model 128 --layers 4 --heads 4 --window 128 --learning-rate 1e-3
        --valid-every 500 --checkpoint-every 500 --no-progress)
OMP_NUM_THREADS=1 vqaudio train-prior runs/tokens-fsdd-8k --out runs/prior-ar --max-len 256 --max-steps "$ar_steps" \
  "${common[@]}" > runs/prior-ar.log 2>&1 &
OMP_NUM_THREADS=1 vqaudio train-prior runs/tokens-fsdd-8k --out runs/prior-diffusion --type diffusion --max-len 512 \
  --max-steps "$diffusion_steps" "${common[@]}" > runs/prior-diffusion.log 2>&1 &
wait
tail -n 1 runs/prior-ar.log runs/prior-diffusion.log
for pair in "prior-ar fsdd-8k-prior" "prior-diffusion fsdd-8k-diffusion"; do
  set -- $pair
  mkdir -p "vqaudio/pretrained/$2"
  cp "runs/$1"/{config.json,model.safetensors,speakers.json,metrics.json,train_config.json} "vqaudio/pretrained/$2/"
done
echo "shipped; now score them side by side:"
echo "  vqaudio evaluate $FSDD --checkpoint fsdd-8k --prior fsdd-8k-prior fsdd-8k-diffusion --generate-per-speaker 20 --out runs/eval-priors --plot-clips 6"

#!/usr/bin/env bash
# The bundled priors of a bundled VQ-VAE (fsdd-8k, vcc2016-16k), made again: both priors fitted
# to the bundled model's codes of its training utterances, then shipped beside it as MODEL-prior
# and MODEL-diffusion. Run it whenever the model's weights change (the priors are tied to the
# checkpoint_id of the VQ-VAE that made their tokens; a test checks fsdd-8k's).
#
#   bash tools/bundled_priors.sh [MODEL [AR_STEPS [DIFFUSION_STEPS]]]
#   # default fsdd-8k 3000 6000: about 30 minutes on 2 cores
#   ONE_CORE=1 bash tools/bundled_priors.sh vcc2016-16k 5000 4500
#   # the two priors one after the other on one core, leaving the other to a training run
#
# 1. tokens: runs/tokens-MODEL (`vqaudio tokenize` of the training utterances with --checkpoint
#    MODEL: FSDD takes 5-49; VCC 2016 sentences 100001-100150 of every speaker)
# 2. runs/prior-ar (autoregressive) and runs/prior-diffusion (VQ-Diffusion), the recipe's CPU
#    size (d_model 128, 4 layers, 4 heads, 0.9 M parameters), windows of 128 codes, batch 16,
#    lr 1e-3 with cosine decay, one thread each, side by side (with ONE_CORE=1, one after the
#    other; on fsdd-8k the autoregressive prior's validation is lowest near 2,500-3,000 steps
#    and rises after: 140k training codes for 0.9 M parameters)
# 3. each run's config.json, model.safetensors, speakers.json, metrics.json and train_config.json
#    copied into vqaudio/pretrained/MODEL-prior and MODEL-diffusion (their README.md cards are
#    hand-written: update their figures from the evaluation printed last)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-fsdd-8k}
ar_steps=${2:-3000}
diffusion_steps=${3:-6000}
FSDD=${FSDD:-../shared/data/fsdd/recordings}
VCC=${VCC:-../shared/data/vcc2016/train}
mkdir -p runs
case "$model" in
fsdd-8k)
  data=$FSDD
  ls "$FSDD" | awk -F_ '{split($3, a, "."); if (a[1] >= 5) print}' | sed "s|^|$FSDD/|" > runs/$model-train-files.txt ;;
vcc2016-16k)  # a speaker-folder tree of links to the training sentences: a list of files has no speakers
  data=$VCC
  rm -rf "runs/$model-train" && mkdir -p "runs/$model-train"
  for f in $(cd "$VCC" && ls -d */*.flac | awk -F'[/.]' '$2 <= 100150'); do
    mkdir -p "runs/$model-train/$(dirname "$f")" && ln -s "$(realpath "$VCC/$f")" "runs/$model-train/$f"
  done
  find "runs/$model-train" -name '*.flac' > "runs/$model-train-files.txt" ;;
*)
  echo "usage: bundled_priors.sh [fsdd-8k|vcc2016-16k [AR_STEPS [DIFFUSION_STEPS]]]" >&2; exit 2 ;;
esac
rm -rf "runs/tokens-$model" runs/prior-ar runs/prior-diffusion
inputs=("@runs/$model-train-files.txt")
if [ "$model" = vcc2016-16k ]; then inputs=("runs/$model-train"); fi
one_core=${ONE_CORE:-0}
OMP_NUM_THREADS=$((2 - one_core)) vqaudio tokenize "${inputs[@]}" --checkpoint "$model" --out "runs/tokens-$model" \
  --num-processes 1 --no-progress
common=(--d-model 128 --layers 4 --heads 4 --window 128 --learning-rate 1e-3
        --valid-every 500 --checkpoint-every 500 --no-progress)
ar=(vqaudio train-prior "runs/tokens-$model" --out runs/prior-ar --max-len 256 --max-steps "$ar_steps" "${common[@]}")
diffusion=(vqaudio train-prior "runs/tokens-$model" --out runs/prior-diffusion --type diffusion --max-len 512
           --max-steps "$diffusion_steps" "${common[@]}")
if [ "$one_core" = 1 ]; then  # one after the other, leaving the other core to a training run
  OMP_NUM_THREADS=1 "${ar[@]}" > runs/prior-ar.log 2>&1
  OMP_NUM_THREADS=1 "${diffusion[@]}" > runs/prior-diffusion.log 2>&1
else
  OMP_NUM_THREADS=1 "${ar[@]}" > runs/prior-ar.log 2>&1 &
  OMP_NUM_THREADS=1 "${diffusion[@]}" > runs/prior-diffusion.log 2>&1 &
  wait
fi
tail -n 1 runs/prior-ar.log runs/prior-diffusion.log
for pair in "prior-ar $model-prior" "prior-diffusion $model-diffusion"; do
  set -- $pair
  mkdir -p "vqaudio/pretrained/$2"
  cp "runs/$1"/{config.json,model.safetensors,speakers.json,metrics.json,train_config.json} "vqaudio/pretrained/$2/"
done
echo "shipped; now score them side by side:"
held=""
if [ "$model" = vcc2016-16k ]; then held=" --num-held-out 12"; fi
echo "  vqaudio evaluate $data --checkpoint $model$held --prior $model-prior $model-diffusion --generate-per-speaker 20 --out runs/eval-priors --plot-clips 6"

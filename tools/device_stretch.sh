#!/usr/bin/env bash
# One stretch of reference-model training (fsdd-8k or vcc2016-16k) on a lent GPU machine,
# prepared and dry-run here first.
#
# The GPU machine (the `device` tool) has torch, accelerate, numba and safetensors but not
# soundfile/soxr (nor cffi), cannot download, runs Python 3.12, returns at most 8 files from
# $OUT, and one call carries at most 64 MiB (the repository itself is about 20). So:
#
#   bash tools/device_stretch.sh prepare [MODEL]        # here, once: wheels into .whl/, data into .data/
#   OUT=/tmp/out bash tools/device_stretch.sh train [MODEL] 0.5 --device cpu   # here: the dry run
#
# fsdd-8k (the default MODEL): FSDD (27 MB) travels in one call:
#   # device run, carry [".whl", ".data/fsdd"], timeout_s 600:
#   #   bash tools/device_stretch.sh train 8
#
# vcc2016-16k: VCC 2016 (99 MB of FLAC) is packed at 13 bits (the FLAC encoder drops the 3
# zero bits: 66 MB; the quantisation step, 2**-12 of full scale, is below the finest step of
# the model's 8-bit mu-law) into two halves of five speakers that travel in two calls on
# the same warm machine (it stays warm for 30 s after a call): the first only unpacks its
# half and the wheels into /tmp, the second brings the other half and trains.
#   #   1. carry [".whl", ".data/vcc2016-1"]:  bash tools/device_stretch.sh stage vcc2016-16k
#   #   2. carry [".whl", ".data/vcc2016-2"]:  bash tools/device_stretch.sh train vcc2016-16k 9
#
# Then, here: tar xzf FILES_AT/run.tgz -C runs/ && python tools/ship_checkpoint.py runs/MODEL-gpu ...
#
# `bench-priors [bench options]` times the bundled priors of both models on the GPU (issue 15's
# sampling-speed target: tools/bench_prior_sampling.py, --device cuda, fastest of 3, both samplers) into
# $OUT/bench-priors-MODEL.json; it needs only the wheels (carry [".whl"]), takes under a minute,
# and can go first in a training call: `bash tools/device_stretch.sh bench-priors && bash ...train 8`.
# Dry run here: OUT=/tmp/out bash tools/device_stretch.sh bench-priors --device cpu --repeat 1
#
# `train [MODEL] MINUTES [extra vqaudio train options]` starts a new run from the bundled MODEL
# (--init-from, Adam warm-up), trains for MINUTES (--max-minutes: it stops at a step's end with
# a checkpoint), and packs the run's model, logs and configs into $OUT/run.tgz (one file: the run
# folder holds more than the 8 files a call brings back), also after a failure. GPU settings:
# batch 64 x 0.5 s, bf16 (auto), checkpoints every 500 steps; fsdd-8k lr 1e-3, vcc2016-16k lr
# 5e-4 (64 x 8,000 samples a step: fsdd-8k's steady batch-128 setting); later options win.
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${FSDD:-../shared/data/fsdd/recordings}
VCC=${VCC:-../shared/data/vcc2016/train}
VCC_STAGE=/tmp/vcc2016/train

model=fsdd-8k
verb=${1:-}
[ $# -gt 0 ] && shift
case "${1:-}" in fsdd-8k|vcc2016-16k) model=$1; shift ;; esac

install_wheels() {
  if ! python3 -c "import soundfile, soxr" 2>/dev/null; then
    if ! python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import soundfile, soxr" 2>/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH=/tmp/site
  fi
}

stage_vcc() {  # copy the halves carried in this call into $VCC_STAGE; true when all 10 speakers are there
  mkdir -p "$VCC_STAGE"
  for part in .data/vcc2016-*; do
    [ -d "$part" ] && cp -r "$part"/. "$VCC_STAGE"/
  done
  local n
  n=$(find "$VCC_STAGE" -name '*.flac' | wc -l)
  echo "staged in $VCC_STAGE: $n files of 1620"
  [ "$n" -eq 1620 ]
}

case "$verb" in
prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.data/' .git/info/exclude 2>/dev/null || echo '/.data/' >> .git/info/exclude
  mkdir -p .whl .data
  # soundfile (and its cffi, pycparser) and soxr, for the device's CPython 3.12 on x86-64
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl soundfile==0.14.0 soxr==1.1.0 cffi pycparser
  if [ "$model" = fsdd-8k ]; then
    mkdir -p .data/fsdd && rm -rf .data/fsdd/recordings && cp -r "$FSDD" .data/fsdd/recordings
  else
    rm -rf .data/vcc2016-1 .data/vcc2016-2
    python3 - "$VCC" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

src = Path(sys.argv[1])
speakers = sorted(p.name for p in src.iterdir() if p.is_dir())
if len(speakers) != 10:
    sys.exit(f"{src}: expected the 10 VCC 2016 speaker folders, found {len(speakers)}")
for k, speaker in enumerate(speakers):
    out = Path(".data") / f"vcc2016-{1 + k // 5}" / speaker
    out.mkdir(parents=True)
    for f in sorted((src / speaker).glob("*.flac")):
        x, sr = sf.read(f, dtype="int16")
        y = ((x.astype(np.int32) >> 3) << 3).astype(np.int16)  # 13 bits; FLAC stores the zeros in no space
        sf.write(out / f.name, y, sr, format="FLAC", subtype="PCM_16")
EOF
  fi
  du -sh .whl .data/*
  ;;
stage)
  install_wheels
  [ "$model" = vcc2016-16k ] || { echo "stage is for vcc2016-16k (fsdd-8k travels in one call)"; exit 2; }
  stage_vcc || echo "now carry the other half in a call of train vcc2016-16k"
  ;;
train)
  minutes=${1:?usage: device_stretch.sh train [MODEL] MINUTES [options]}
  shift
  install_wheels
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  out=${OUT:?set OUT to the folder that comes back}
  if [ "$model" = fsdd-8k ]; then
    data=.data/fsdd/recordings
    settings=(--learning-rate 1e-3 --warmup-steps 200 --example-seconds 1)
  else
    if ! stage_vcc; then
      echo "error: $VCC_STAGE lacks part of VCC 2016: run 'stage vcc2016-16k' with the other half first, on the same warm machine"
      exit 2
    fi
    data=$VCC_STAGE
    settings=(--learning-rate 5e-4 --warmup-steps 100 --num-valid-per-speaker 12 --example-seconds 2)
  fi
  run=/tmp/$model-gpu
  rm -rf "$run"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  rc=0
  python3 -m vqaudio.cli train "$data" --out "$run" --init-from "$model" \
    --batch-size 64 --segment-seconds 0.5 "${settings[@]}" \
    --max-minutes "$minutes" --checkpoint-every 500 --valid-every 500 --log-every 50 \
    --no-progress "$@" || rc=$?
  # pack whatever the run wrote, also after a failure (its last checkpoint is still worth having)
  mkdir -p "$out"
  r=$(basename "$run")
  (cd /tmp && tar czf "$out/run.tgz" --ignore-failed-read "$r/model" "$r/metrics.jsonl" \
    "$r/sessions.jsonl" "$r/init_from.json" "$r/train_config.json" \
    "$r/model_config.json" "$r/speakers.json" "$r/data.json") || true
  ls -la "$out"
  exit "$rc"
  ;;
bench-priors)
  install_wheels
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  out=${OUT:?set OUT to the folder that comes back}
  mkdir -p "$out"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  # 500 codes: 4 s of fsdd-8k (issue 15's measure), 2 s of vcc2016-16k (its diffusion prior's max_len is 512)
  for m in fsdd-8k vcc2016-16k; do
    python3 tools/bench_prior_sampling.py --prior "$m-prior" --diffusion-prior "$m-diffusion" --codes 500 \
      --batch 1 10 --steps 4 10 25 100 --repeat 3 --device cuda --json "$out/bench-priors-$m.json" "$@"
  done
  ;;
*)
  sed -n '2,38p' "$0"
  exit 2
  ;;
esac

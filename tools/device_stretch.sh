#!/usr/bin/env bash
# One stretch of fsdd-8k training on a lent GPU machine, prepared and dry-run here first.
#
# The GPU machine (the `device` tool) has torch, accelerate, numba and safetensors but not
# soundfile/soxr (nor cffi), cannot download, runs Python 3.12, and returns at most 8 files
# from $OUT. So:
#
#   bash tools/device_stretch.sh prepare          # here, once: wheels into .whl/, FSDD into .data/
#   OUT=/tmp/out bash tools/device_stretch.sh train 0.5 --cpu   # here: the dry run (30 s, CPU)
#   # device run, carry [".whl", ".data"], timeout_s 600:
#   #   bash tools/device_stretch.sh train 8
#   tar xzf FILES_AT/run.tgz -C runs/ && python tools/ship_checkpoint.py runs/fsdd-8k-gpu --name fsdd-8k ...
#
# `train MINUTES [extra vqaudio train options]` starts a new run from the bundled fsdd-8k
# (--init-from, Adam warm-up), trains for MINUTES (--max-minutes: it stops at a step's end
# with a checkpoint), and packs the run's model, logs and configs into $OUT/run.tgz (one file:
# the run folder holds more than the 8 files a call brings back). GPU settings: batch 64 x
# 0.5 s (8x the CPU recipe's samples per step), bf16 (auto), checkpoints every 500 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${FSDD:-../shared/data/fsdd/recordings}

case "${1:-}" in
prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.data/' .git/info/exclude 2>/dev/null || echo '/.data/' >> .git/info/exclude
  mkdir -p .whl .data/fsdd
  # soundfile (and its cffi, pycparser) and soxr, for the device's CPython 3.12 on x86-64
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl soundfile==0.14.0 soxr==1.1.0 cffi pycparser
  rm -rf .data/fsdd/recordings && cp -r "$FSDD" .data/fsdd/recordings
  du -sh .whl .data
  ;;
train)
  minutes=${2:?usage: device_stretch.sh train MINUTES [options]}
  shift 2
  if ! python3 -c "import soundfile, soxr" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  out=${OUT:?set OUT to the folder that comes back}
  run=/tmp/fsdd-8k-gpu
  rm -rf "$run"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  rc=0
  python3 -m vqaudio.cli train .data/fsdd/recordings --out "$run" --init-from fsdd-8k \
    --batch-size 64 --segment-seconds 0.5 --learning-rate 1e-3 --warmup-steps 200 \
    --max-minutes "$minutes" --checkpoint-every 500 --valid-every 500 --log-every 50 \
    --example-seconds 1 --no-progress "$@" || rc=$?
  # pack whatever the run wrote, also after a failure (its last checkpoint is still worth having)
  mkdir -p "$out"
  (cd /tmp && tar czf "$out/run.tgz" --ignore-failed-read fsdd-8k-gpu/model fsdd-8k-gpu/metrics.jsonl \
    fsdd-8k-gpu/sessions.jsonl fsdd-8k-gpu/init_from.json fsdd-8k-gpu/train_config.json \
    fsdd-8k-gpu/model_config.json fsdd-8k-gpu/speakers.json fsdd-8k-gpu/data.json) || true
  ls -la "$out"
  exit "$rc"
  ;;
*)
  sed -n '2,20p' "$0"
  exit 2
  ;;
esac

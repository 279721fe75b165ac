#!/usr/bin/env bash
# sha256 of quantized archives made from fixed inputs, to show that a change of code (a refactoring) leaves the
# bytes alone: run it before and after, and compare. The real stories260K (RTN, GPTQ, GPTQ act-order at 2 threads,
# AWQ, TEQ, W8A8) when ../shared/data is there, and always the synthetic test model (RTN).
# The inputs are made in OUT_DIR/inputs by this checkout's exporter and fixture (their model.pt files name the
# Python module that defined the model, so compare runs made from the same inputs: keep OUT_DIR/inputs, or copy it).
# Usage: scripts/archive_hashes.sh OUT_DIR   (uses $LWQ_BUILD_DIR/bin/lwq, default build/bin/lwq)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/archive_hashes.sh OUT_DIR}
lwq=${LWQ_BUILD_DIR:-build}/bin/lwq
python=/usr/bin/python3
data=../shared/data
mkdir -p "$out/inputs"
q() { "$lwq" quantize --quiet "$@"; }

# TorchScript archives written by Python depend on its string hashing: fixed, so the inputs are the same each time.
export PYTHONHASHSEED=0
m="$out/inputs/synthetic"
[ -d "$m" ] || "$python" tests/python/fixtures/make_test_models.py --out "$m" --seed 7 > /dev/null
q --model "$m/scripted.pt" --weights "$m/scripted.safetensors" --algo rtn --group-size 16 --out "$out/synthetic_rtn.pt"

if [ -f "$data/stories260K.bin" ] && [ -f "$data/tok512.bin" ] && [ -f "$data/tinystories_val.txt" ]; then
  s="$out/inputs/s260"
  [ -d "$s" ] || PYTHONPATH=python "$python" -m lwq.export --llama2c "$data/stories260K.bin" --out "$s" --quiet
  head -c 200000 "$data/tinystories_val.txt" > "$out/inputs/calib.txt"
  base=(--model "$s/model.pt" --weights "$s/model.safetensors")
  calib=(--calib "$out/inputs/calib.txt" --tokenizer "$data/tok512.bin" --seq-len 128)
  q "${base[@]}" --algo rtn --dtype int4 --group-size 32 --threads 1 --out "$out/s260_rtn.pt"
  q "${base[@]}" --algo gptq --dtype int4 --group-size 32 "${calib[@]}" --nsamples 16 --threads 1 \
    --out "$out/s260_gptq.pt"
  q "${base[@]}" --algo gptq --act-order --dtype int4 --group-size 32 "${calib[@]}" --nsamples 16 --threads 2 \
    --out "$out/s260_gptq_act.pt"
  for a in awq teq; do
    q "${base[@]}" --algo $a --dtype int4 --group-size 32 "${calib[@]}" --nsamples 8 --threads 1 --out "$out/s260_$a.pt"
  done
  q "${base[@]}" --algo w8a8 "${calib[@]}" --nsamples 8 --threads 1 --out "$out/s260_w8a8.pt"
else
  echo "archive_hashes: $data absent: the synthetic model only" >&2
fi
(cd "$out" && sha256sum ./*.pt)

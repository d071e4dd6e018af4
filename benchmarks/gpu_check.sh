#!/usr/bin/env bash
# One-shot GPU check of the pre-training step at paper size (recipes/base.toml: ViT-B/16 at 288 px,
# RoBERTa-base, 6 fusion layers, every objective), batch 32 on one GPU, bf16. Fits a 15-minute
# device budget (about 6 minutes on an H100, most of it torch.compile):
#
#   bash benchmarks/gpu_check.sh            # figures land in $OUT (default ./gpu-check)
#
# Prints one JSON object: eager and compiled samples/s, step time, peak memory, GFLOP/sample,
# MFU (against 790 TFLOP/s, the H100's measured bf16 peak), whether the step syncs the host, and
# the activation-checkpointing variant at batch 64. The targets: 250 samples/s, <= 25 GB, >= 40% MFU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PAPER=(recipes/base.toml --set model.init=random --set topology.devices_per_node=1 --set topology.device=cuda
       --set topology.precision=bf16)

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
run() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$PY" -m scl_cli.cli bench pretrain "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1 \
    || echo "{\"error\": \"exit $?\", \"log\": \"$name.log\"}" > "$OUT/$name.json"
}
run eager 240 "${PAPER[@]}" --batch 32 --steps 10 --warmup 3 --profile "$OUT/profile-eager"
run compiled 420 "${PAPER[@]}" --batch 32 --steps 10 --warmup 4 --compile
run checkpointed-b64 180 "${PAPER[@]}" --batch 64 --steps 5 --warmup 2 --set topology.activation_checkpointing=true
timeout 120 "$PY" benchmarks/sync_check.py > "$OUT/syncs.json" 2> "$OUT/syncs.log" \
  || echo '{"error": "see syncs.log"}' > "$OUT/syncs.json"

"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
summary = {"gpu": (out / "gpu.txt").read_text().strip()}
for name in ("eager", "compiled", "checkpointed-b64", "syncs"):
    try:
        summary[name] = json.loads((out / f"{name}.json").read_text())
    except Exception as err:  # noqa: BLE001
        summary[name] = {"error": repr(err)}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY

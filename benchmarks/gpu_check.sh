#!/usr/bin/env bash
# One-shot GPU check of the pre-training step at paper size (recipes/base.toml: ViT-B/16 at 288 px,
# RoBERTa-base, 6 fusion layers, every objective), batch 32 on one GPU, bf16:
#
#   bash benchmarks/gpu_check.sh                 # figures land in $OUT (default ./gpu-check)
#   bash benchmarks/gpu_check.sh --rehearse      # the same stages on CPU with the tiny model (< 1 min)
#   SCL_REFERENCE=/path/to/IIGROUP-SCL bash benchmarks/gpu_check.sh   # + the paper code's step
#
# Stages, in the order of what is worth most if the device time runs out, with the time each took
# on an H200 on 2026-11-29 (limit in brackets; a stage that fails or runs out writes its error, and
# the next one runs). Python and torch start-up included:
#   env         versions, GPU                                        8 s     [30 s]
#   eager       batch 32: 10 timed steps, then 3 profiled ones        62 s    [110 s]
#   syncs       one step under torch.cuda.set_sync_debug_mode(error)  24 s    [60 s]
#   ckpt-b64    activation checkpointing at batch 64                  31 s    [80 s]
#   compiled    torch.compile per transformer layer, batch 32         121 s   [150 s]
#   reference   the paper's own step (only with SCL_REFERENCE; see    -       [100 s]
#               benchmarks/reference_step.py), batch 32, bf16
# About 4 minutes in all, 7 at the limits. Results: benchmarks/RESULTS.md.
# Whatever happens, the last thing printed is one JSON object (also $OUT/summary.json): eager and
# compiled samples/s, step time, peak memory, GFLOP/sample, MFU (against 790 TFLOP/s, the measured
# bf16 peak of an H100/H200), host syncs, the checkpointed variant and, with SCL_REFERENCE, the
# paper's step and `vs_reference` (eager samples/s and peak memory over the paper code's). Only
# three files are left in $OUT (summary.json, profile.txt, logs.tar.gz) so that the device tool
# brings all of them back.
# The targets: >= 250 samples/s, <= 25 GB, >= 40% MFU.
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=0
[ "${1:-}" = "--rehearse" ] && REHEARSE=1
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
WORK=$(mktemp -d)
# $PYTHON if given, else the project's .venv, else python3 (the GPU machine's image has no .venv)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if [ $REHEARSE = 1 ]; then
  # The tiny model on CPU through the same commands: catches a broken script, option or import.
  RECIPE=(recipes/tiny.toml --set model.text.vocab_size=1000 --set topology.device=cpu --set topology.precision=bf16)
  B=4; B2=8; STEPS=(--steps 2 --warmup 1); STEPS2=(--steps 1 --warmup 1)
  COMPILE=(--compile --set topology.compile_backend=aot_eager)
  T_EAGER=60; T_SYNC=60; T_CKPT=60; T_COMPILED=120; T_REF=60
  REF=(--tiny --device cpu --steps 1 --warmup 1)
else
  RECIPE=(recipes/base.toml --set model.init=random --set topology.devices_per_node=1
          --set topology.device=cuda --set topology.precision=bf16)
  B=32; B2=64; STEPS=(--steps 10 --warmup 3); STEPS2=(--steps 5 --warmup 2)
  COMPILE=(--compile)
  T_EAGER=110; T_SYNC=60; T_CKPT=80; T_COMPILED=150; T_REF=100
  REF=(--device cuda --precision bf16)
fi

stage() {  # name, limit, command...: runs it, times it, and leaves $WORK/name.json in any case
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "$((SECONDS - start))" > "$WORK/$name.seconds"
  if [ $rc -ne 0 ] || [ ! -s "$WORK/$name.json" ]; then
    [ $rc -eq 124 ] && echo "timed out after ${limit}s" >> "$WORK/$name.log"
    echo "{\"error\": \"exit $rc\"}" > "$WORK/$name.json"
  fi
  tail -n 3 "$WORK/$name.log"
}
bench() {  # name, limit, bench-args...
  local name=$1 limit=$2; shift 2
  stage "$name" "$limit" "$PY" -m scl_cli.cli bench pretrain "${RECIPE[@]}" "$@" --json "$WORK/$name.json"
}

summarize() {  # after every stage: a run cut short still leaves its summary in $OUT
  "$PY" - "$WORK" "$OUT" $STAGES > "$WORK/summary.print" <<'PY'
import json, pathlib, shutil, sys
work, out, stages = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
summary = {}
for name in stages:
    try:
        summary[name] = json.loads((work / f"{name}.json").read_text())
    except Exception as err:  # noqa: BLE001
        summary[name] = {"error": repr(err)}
    seconds = work / f"{name}.seconds"
    if seconds.exists() and isinstance(summary[name], dict):
        summary[name]["stage_seconds"] = int(seconds.read_text())
    if isinstance(summary[name], dict) and "error" in summary[name]:
        log = work / f"{name}.log"
        summary[name]["log_tail"] = log.read_text()[-1500:] if log.exists() else ""
eager, compiled = summary.get("eager", {}), summary.get("compiled", {})
if "samples_per_s" in eager and "samples_per_s" in compiled:
    summary["compiled_speedup"] = round(compiled["samples_per_s"] / eager["samples_per_s"], 3)
reference = summary.get("reference", {})
if eager.get("samples_per_s") and reference.get("samples_per_s"):
    summary["vs_reference"] = {
        "samples_per_s": round(eager["samples_per_s"] / reference["samples_per_s"], 3),
        "peak_memory": round(eager["peak_memory_gb"] / reference["peak_memory_gb"], 3),
    }
out.mkdir(parents=True, exist_ok=True)
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
profile = work / "profile-eager" / "profile.txt"
if profile.exists():
    shutil.copy(profile, out / "profile.txt")
print(json.dumps(summary, indent=2))
PY
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude=profile.json --exclude=summary.print . 2>/dev/null
}
STAGES=""
run_stage() {  # stage-or-bench name limit args...: run it, then refresh the summary
  local kind=$1 name=$2; shift 1
  STAGES="$STAGES $name"
  "$kind" "$@"
  summarize
}

run_stage stage env 30 "$PY" -c "
import json, platform, sys, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
info = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
        'gpu': gpu, 'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported()}
if gpu:
    info['memory_gb'] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
json.dump(info, open(sys.argv[1], 'w'))
" "$WORK/env.json"
run_stage bench eager "$T_EAGER" --batch $B "${STEPS[@]}" --profile "$WORK/profile-eager"
run_stage stage syncs "$T_SYNC" bash -c '"$0" benchmarks/sync_check.py "${@:2}" > "$1"' "$PY" "$WORK/syncs.json" "${RECIPE[@]}"
run_stage bench ckpt-b$B2 "$T_CKPT" --batch $B2 "${STEPS2[@]}" --set topology.activation_checkpointing=true
run_stage bench compiled "$T_COMPILED" --batch $B "${STEPS[@]}" "${COMPILE[@]}"
if [ -n "${SCL_REFERENCE:-}" ]; then
  run_stage stage reference "$T_REF" "$PY" benchmarks/reference_step.py "$SCL_REFERENCE" --batch $B "${REF[@]}" --json "$WORK/reference.json"
fi
cat "$WORK/summary.print"
rm -rf "$WORK"

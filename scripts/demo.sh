#!/usr/bin/env bash
# `make demo`: the main job on the embedded default, on CPU, in minutes.
# Prepares the synthetic shapes data, pre-trains recipes/tiny.toml (evaluating as it goes), shows
# what the model learnt (curves, the shapes probe, zero-shot retrieval, an attention map) and
# searches the test images.
set -euo pipefail
OUT=${1:-demo-run}
SCL=${SCL:-.venv/bin/scl}
PY=${PY:-.venv/bin/python}

if [ -f "$OUT/data/shapes/manifest.json" ]; then
  echo "== shapes data already in $OUT/data/shapes (delete it to regenerate)"
else
  echo "== scl prepare shapes --out $OUT/data"
  $SCL prepare shapes --out "$OUT/data"
fi

rm -rf "$OUT/tiny"   # the demo's own run folder: always a fresh run
echo "== scl pretrain recipes/tiny.toml (zero-shot retrieval and ITM on held-out images every [eval] steps)"
$SCL pretrain recipes/tiny.toml --set data.root="$OUT/data" --set output.dir="$OUT/tiny"

echo "== scl plot $OUT/tiny: losses and the in-training evaluation (picture: $OUT/curves.png)"
$SCL plot "$OUT/tiny" --metrics loss,itc,itm,eval/ir_r1,eval/tr_r1,eval/itm_acc --out "$OUT/curves.png"

echo "== what the model learnt: fresh renders, held-out ITM, one axis at a time (benchmarks/probe_shapes.py)"
$PY benchmarks/probe_shapes.py --ckpt "$OUT/tiny" --data "$OUT/data/shapes" --json "$OUT/probe.json"

echo "== scl eval retrieval (zero-shot ITC, shapes test split: 1000 images, 5000 captions)"
$SCL eval retrieval --ckpt "$OUT/tiny" --data "$OUT/data/shapes" --split test --rerank 0 \
  --out "$OUT/eval-retrieval.json"

echo "== scl visualize: where the fusion looks for each word (heat map: $OUT/attention.png)"
$PY - "$OUT/example.png" <<'PY'
import sys

from scl_cli.data.shapes import Scene, ShapeObject, render_scene

objects = (ShapeObject("circle", "red", "large", 0, 0), ShapeObject("triangle", "blue", "large", 1, 1))
render_scene(Scene(objects, (238, 238, 238), ((0.0, 0.0), (0.0, 0.0))), 128).save(sys.argv[1])
PY
$SCL visualize --ckpt "$OUT/tiny" --image "$OUT/example.png" --text "a red circle above a blue triangle" \
  --out "$OUT/attention.png"

echo "== scl index: the shapes test images, embedded with the model's ITC projection"
$SCL index --ckpt "$OUT/tiny" --data "$OUT/data/shapes" --split test

echo "== scl retrieve --query \"a red circle\" (contact sheet: $OUT/retrieve.png)"
$SCL retrieve --ckpt "$OUT/tiny" --query "a red circle" --top-k 8 --grid "$OUT/retrieve.png"

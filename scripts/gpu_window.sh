#!/usr/bin/env bash
# One time-boxed window of a recipe's training on a lent GPU machine (issue 17), in one call.
#
# Usage, from the repository root on the device machine (the `run` tool of the developers'
# library; $OUT is the folder that comes back):
#
#   bash scripts/gpu_window.sh RECIPE MINUTES [--resume] [--bench] [RECIPE OPTIONS...]
#
# RECIPE OPTIONS go to `python -m napari_cryoden.recipes` as they are, e.g. the GPU-scale run
# `--realistic low-dose --patch 64 --batch-size 16 --steps 40000` (give the same in every window).
#
# It needs, carried with the working tree (all git-ignored):
#   .whl/            the wheels the GPU's Python lacks (mrcfile, platformdirs, the teamtomo
#                    packages; see the developers' guide for the `pip download` line);
#   .gpu/maps_10A/   a copy of ../shared/data/maps_10A (3D recipes), or .gpu/maps_5A/ (n2n-unet-2d);
#   .gpu/work-RECIPE/  with --resume: the checkpoint a previous window brought back.
#
# It trains RECIPE for MINUTES on cuda (3D recipes with --data device: batches simulated on the
# GPU), then copies the checkpoint (and, after the last window, the model and its card) to
# $OUT/work-RECIPE/ and $OUT/models/. Copy $OUT/work-RECIPE/ back to .gpu/work-RECIPE/ here to
# continue with --resume in the next window. --bench first prints benchmarks/training.py on cuda
# (data alone, step alone, both; 32^3 and 64^3, batch 16), about two minutes.
# A dry run on this machine: DEVICE=cpu PY=.venv/bin/python OUT=/tmp/o bash scripts/gpu_window.sh unet48-ae 0.2
set -euo pipefail
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
name=${1:?recipe name}; minutes=${2:?minutes}; shift 2
resume=""; bench=0; options=()
for a in "$@"; do
  case $a in --resume) resume=--resume ;; --bench) bench=1 ;; *) options+=("$a") ;; esac
done
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the folder that comes back}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
if [ "$name" = n2n-unet-2d ]; then maps=.gpu/maps_5A; extra=(--skip-bm3d); else maps=.gpu/maps_10A; extra=(--data device); fi
if [ $bench = 1 ]; then
  timeout 240 $PY benchmarks/training.py --maps .gpu/maps_10A --devices "$DEVICE" --sources serial workers device \
      --patches 32 64 --batch 16 --steps 20 --data-steps 8 --workers 8 --json "$OUT/training_bench.json" \
      2>&1 | tee "$OUT/training_bench.txt" || true
fi
work=.gpu/work-$name
mkdir -p "$OUT/work-$name" "$OUT/models"
status=0
$PY -m napari_cryoden.recipes "$name" --maps "$maps" --out "$OUT/models" --device "$DEVICE" "${extra[@]}" \
    --minutes "$minutes" --workdir "$work" $resume ${options[@]+"${options[@]}"} 2>&1 | tee "$OUT/train-$name.log" || status=$?
cp "$work"/checkpoint.* "$OUT/work-$name/" 2>/dev/null || true
ls -la "$OUT/work-$name" "$OUT/models"
exit $status

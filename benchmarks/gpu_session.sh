#!/bin/bash
# The GPU checks of a session that is lent a CUDA machine (the `device` tool): one call, in this order,
# each with its own time limit, everything logged to $OUT/run.log:
#   1. tests/test_gpu.py (+ tests/test_device.py): CUDA against the CPU;
#   2. benchmarks/bench_inference.py --gpu (the 2048 px plane, the current slice on the GPU);
#   3. benchmarks/bench_finetune.py --device cuda on C2C12 (fine-tuning steps/s and AP, not written);
#   4. a leg of the built-in model's training until BUDGET seconds from the start (checkpoint in
#      $OUT/nuclei_gpu2, resumed from training/nuclei_gpu2 when it holds one; then copy it back there).
#      training/nuclei_gpu holds the finished first run (6000 x 32 patches, below v3: training/LOG.md);
#      nuclei_gpu2 is the same network trained five times longer, which only a GPU makes affordable.
#
# Prepare once in the checkout (these paths are ignored by git, and travel with the call):
#   mkdir -p shared/data && cp -r ../shared/data/{dsb2018,nuclei3d_synthetic,c2c12_timelapse,isbi2012} shared/data/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform any -d .whl monai==1.6.1 platformdirs   # not on the machine's image
# then: run(command="BUDGET=540 bash benchmarks/gpu_session.sh", carry=[".whl", "shared"], timeout_s=580)
T0=$(date +%s); END=$((T0 + ${BUDGET:-450}))
left() { echo $((END - $(date +%s))); }
export PYTHONUNBUFFERED=1 NAPARI_UNET_DATA=$PWD/shared/data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site
mkdir -p /work/shared 2>/dev/null; [ -e /work/shared/data ] || ln -s "$PWD/shared/data" /work/shared/data
LOG=$OUT/run.log
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep "Model name"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >> "$LOG" 2>&1
echo "== tests (left $(left) s)" >> "$LOG"
timeout 150 python3 -m pytest -p no:cacheprovider -q -rs tests/test_gpu.py tests/test_device.py >> "$LOG" 2>&1
echo "pytest rc $?" >> "$LOG"
echo "== bench_inference --gpu (left $(left) s)" >> "$LOG"
timeout 120 python3 benchmarks/bench_inference.py --gpu --stack "" --repeats 2 \
    --json "$OUT/bench_inference_gpu.json" >> "$LOG" 2>&1
echo "bench_inference rc $?" >> "$LOG"
echo "== bench_finetune --device cuda (left $(left) s)" >> "$LOG"
timeout 120 python3 benchmarks/bench_finetune.py --device cuda --datasets c2c12_timelapse --models nuclei \
    --no-write >> "$LOG" 2>&1  # (one model: the three at their time budget each outlast the 120 s)
echo "bench_finetune rc $?" >> "$LOG"
LEG=$(( $(left) - 60 ))
echo "== training leg of $LEG s (left $(left) s)" >> "$LOG"
if [ "$LEG" -gt 60 ]; then
  MINUTES=$(python3 -c "print($LEG / 60)")
  if [ -f training/nuclei_gpu2/checkpoint.pt ]; then
    mkdir -p "$OUT/nuclei_gpu2" && cp training/nuclei_gpu2/checkpoint.pt "$OUT/nuclei_gpu2/"
    ARGS=(--resume)
  else  # the first run's recipe (training/LOG.md, 2026-12-04), 30,000 steps instead of 6,000
    ARGS=(--steps 30000 --patch-size 128 --batch-size 32 --lr 0.003 --seed 0 --diameter 17 --precision bf16
          --base-width 16 --depth 4 --repeat-kind color=3 --augment-texture 0.5 --texture-contrast 0.5 2)
  fi
  timeout $((LEG + 50)) python3 scripts/train_default_model.py --model nuclei --data shared/data/dsb2018 \
      --device cuda "${ARGS[@]}" --leg-minutes "$MINUTES" --checkpoint-every 60 \
      --checkpoint-dir "$OUT/nuclei_gpu2" --out "$OUT/nuclei_gpu2/nuclei.pt" >> "$LOG" 2>&1
  echo "train rc $?" >> "$LOG"
fi
echo "== done, left $(left) s" >> "$LOG"

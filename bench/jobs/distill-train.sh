#!/usr/bin/env bash
# The SVAMP convergence cells of docs/DISTILL.md (bench/distill_convergence.py run): seed 0 and 1 of
# standard and step-by-step with PaLM's rationales, and with the 1.5B teacher's once its store is whole.
# Each finished cell's predictions and record are copied to bench/data/distill/conv-svamp and committed;
# cells found there are skipped. Run it from a worktree that nobody edits while it runs.
#   JOBS=/work/jobs bash bench/jobs/distill-train.sh       (TRAIN_THREADS=1 by default)
# SEEDS (default "0 1") and ARMS (default "palm qwen") pick the cells, so that two instances at one
# thread each can share a 2-core host: ARMS=palm SEEDS=0 … & ARMS=qwen SEEDS=0 … &
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REPO=${REPO:-$ROOT}                     # where records are committed (the main checkout)
PY=${PY:-$ROOT/.venv/bin/python}
JOBS=${JOBS:-/work/jobs}
D=$JOBS/distill
OUT=$D/conv-svamp
REC=$REPO/bench/data/distill/conv-svamp
mkdir -p $OUT $REC
cd $ROOT
for c in $REC/*/; do [ -f "$c/test.pred.jsonl" ] && mkdir -p "$OUT/$(basename $c)" && cp -n "$c"/* "$OUT/$(basename $c)/"; done
ARMS=${ARMS:-palm qwen}
[[ " $ARMS " != *" palm "* ]] || [ -f $D/svamp-train-palm.jsonl ] || $PY -m slm.distill rationales --task svamp --teacher recorded --out $D/svamp-train-palm.jsonl
TRAIN="--steps 3000 --val-size 80 --eval-every 50 --patience 4 --save-every 50 --batch-size 8 --lr 1e-4 --warmup-steps 20 --mixed-precision bf16 --threads ${TRAIN_THREADS:-1}"
sync_cells() {
  for c in $OUT/*/; do n=$(basename $c); [ -f "$c/test.pred.jsonl" ] || continue; [ -f "$REC/$n/test.pred.jsonl" ] && continue
    mkdir -p $REC/$n; cp $c/test.pred.jsonl $REC/$n/; [ -f $c/training_record.json ] && cp $c/training_record.json $REC/$n/
    for try in 1 2 3 4 5; do   # another instance (or a person) may hold the index lock for a moment
      (cd $REPO && git add bench/data/distill/conv-svamp/$n && git commit -q -m "bench/data/distill: SVAMP cell $n (test predictions, training record)" -- bench/data/distill/conv-svamp/$n) && break
      echo "commit of $n failed (try $try)"; sleep 20
    done
  done
}
QWEN=$D/svamp-train-qwen2.5-coder-1.5b.jsonl
[ -f $QWEN ] || cp $REPO/bench/data/distill/svamp-train-qwen2.5-coder-1.5b.jsonl $QWEN 2>/dev/null
for seed in ${SEEDS:-0 1}; do
  if [[ " $ARMS " == *" palm "* ]]; then
    nice -n 5 $PY bench/distill_convergence.py run --task svamp --out $OUT --seeds $seed --store palm=$D/svamp-train-palm.jsonl -- $TRAIN || exit 1
    sync_cells
  fi
  if [[ " $ARMS " == *" qwen "* ]] && [ "$(wc -l < $QWEN 2>/dev/null || echo 0)" -ge 800 ]; then
    nice -n 5 $PY bench/distill_convergence.py run --task svamp --out $OUT --seeds $seed --store qwen=$QWEN -- $TRAIN || exit 1
    sync_cells
  fi
done
echo "== $(date) train done"

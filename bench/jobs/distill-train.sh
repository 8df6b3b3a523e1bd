#!/usr/bin/env bash
# The convergence cells of docs/DISTILL.md (bench/distill_convergence.py run) for TASK=svamp (default) or cqa:
# seed 0 and 1 of standard and of step-by-step with PaLM's recorded rationales and with the 1.5B teacher's
# (once its store is whole). CQA trains on the first 1,500 train inputs (those the teacher's store covers) and
# scores the first 600 test inputs (those the teacher answered). Each finished cell's predictions and record are
# copied to bench/data/distill/conv-$TASK and committed; cells found there are skipped. Run it from a worktree
# that nobody edits while it runs:
#   REPO=/work/main JOBS=/work/jobs bash bench/jobs/distill-train.sh       (TRAIN_THREADS=1 by default)
# SEEDS (default "0 1") and ARMS (default "standard palm qwen") pick the cells, so that two instances at one
# thread each can share a 2-core host: ARMS=palm SEEDS=0 … & ARMS="standard qwen" SEEDS=0 … &
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REPO=${REPO:-$ROOT}                     # where records are committed (the main checkout)
PY=${PY:-$ROOT/.venv/bin/python}
JOBS=${JOBS:-/work/jobs}
TASK=${TASK:-svamp}
D=$JOBS/distill
OUT=$D/conv-$TASK
REC=$REPO/bench/data/distill/conv-$TASK
case $TASK in
  svamp) DATA=(); LIMIT=(); TEST=(); NEED=800 ;;
  cqa) DATA=(--data $REPO/../shared/data/cqa-dss); LIMIT=(--limit 1500); TEST=(--test-limit 600); NEED=1500 ;;
  *) echo "TASK=$TASK: accepted svamp, cqa"; exit 2 ;;
esac
mkdir -p $OUT $REC
cd $ROOT
for c in $REC/*/; do [ -f "$c/test.pred.jsonl" ] && mkdir -p "$OUT/$(basename $c)" && cp -n "$c"/* "$OUT/$(basename $c)/"; done
ARMS=${ARMS:-standard palm qwen}
PALM=$D/$TASK-train-palm.jsonl
QWEN=$D/$TASK-train-qwen2.5-coder-1.5b.jsonl
[[ " $ARMS " != *" palm "* ]] || [ -f $PALM ] || $PY -m slm.distill rationales --task $TASK "${DATA[@]}" --split train "${LIMIT[@]}" --teacher recorded --out $PALM
[ -f $QWEN ] || cp $REPO/bench/data/distill/$(basename $QWEN) $QWEN 2>/dev/null
TRAIN="--steps 3000 --val-size 80 --eval-every 50 --patience 4 --save-every 50 --batch-size 8 --lr 1e-4 --warmup-steps 20 --mixed-precision bf16 --threads ${TRAIN_THREADS:-1}"
[ $TASK = cqa ] && TRAIN="$TRAIN --train-limit 1500"
sync_cells() {
  for c in $OUT/*/; do n=$(basename $c); [ -f "$c/test.pred.jsonl" ] || continue; [ -f "$REC/$n/test.pred.jsonl" ] && continue
    mkdir -p $REC/$n; cp $c/test.pred.jsonl $REC/$n/; [ -f $c/training_record.json ] && cp $c/training_record.json $REC/$n/
    for try in 1 2 3 4 5; do   # another instance (or a person) may hold the index lock for a moment
      (cd $REPO && git add bench/data/distill/conv-$TASK/$n && git commit -q -m "bench/data/distill: $TASK cell $n (test predictions, training record)" -- bench/data/distill/conv-$TASK/$n) && break
      echo "commit of $n failed (try $try)"; sleep 20
    done
  done
}
cell() { nice -n 5 $PY bench/distill_convergence.py run --task $TASK "${DATA[@]}" "${TEST[@]}" --out $OUT --seeds $1 "${@:2}" -- $TRAIN || exit 1; sync_cells; }
for seed in ${SEEDS:-0 1}; do
  [[ " $ARMS " == *" standard "* ]] && cell $seed
  [[ " $ARMS " == *" palm "* ]] && cell $seed --no-standard --store palm=$PALM
  if [[ " $ARMS " == *" qwen "* ]]; then
    if [ "$(wc -l < $QWEN 2>/dev/null || echo 0)" -ge $NEED ]; then cell $seed --no-standard --store qwen=$QWEN
    else echo "== $QWEN has fewer than $NEED records: the qwen-s$seed cell waits for the teacher"; fi
  fi
done
echo "== $(date) train done"

#!/usr/bin/env bash
# The 1.5B teacher behind `slm serve`, writing the rationale stores of docs/DISTILL.md (issue 16):
# SVAMP train, SVAMP test, CQA test (first 600), CQA train (first 1,500), each resumable: run it again
# after any kill. Stores live in $JOBS/distill and are seeded from bench/data/distill (what git keeps).
#   JOBS=/work/jobs bash bench/jobs/distill-teacher.sh      (TEACHER_THREADS=1 TEACHER_SLOTS=1 by default)
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
JOBS=${JOBS:-/work/jobs}
PKG=${PKG:-$HOME/.cache/slm/packages/qwen2.5-coder-1.5b-teacher}   # slm export qwen2.5-coder-1.5b-instruct-q4_k_m.gguf PKG
D=$JOBS/distill
mkdir -p $D
for f in $ROOT/bench/data/distill/*.jsonl; do [ -f "$f" ] && [ ! -f "$D/$(basename $f)" ] && cp "$f" "$D/"; done
nice -n 5 $PY -m slm.cli serve --model $PKG --port 8716 --served-model-name qwen2.5-coder-1.5b \
    --threads ${TEACHER_THREADS:-1} --max-concurrent ${TEACHER_SLOTS:-1} > $JOBS/distill-serve.log 2>&1 &
echo $! > $JOBS/distill-serve.pid
for i in $(seq 1 120); do curl -s http://127.0.0.1:8716/v1/models >/dev/null && break; sleep 5; done
T="--teacher openai --endpoint chat --base-url http://127.0.0.1:8716/v1 --model qwen2.5-coder-1.5b --concurrency 2 --max-new-tokens 200 --timeout 600"
run() { echo "== $(date) $*"; nice -n 5 $PY -m slm.distill rationales "$@" $T || { echo "FAILED $*"; kill $(cat $JOBS/distill-serve.pid); exit 1; }; }
run --task svamp --split train --out $D/svamp-train-qwen2.5-coder-1.5b.jsonl
run --task svamp --split test --out $D/svamp-test-qwen2.5-coder-1.5b.jsonl
run --task cqa --data $ROOT/../shared/data/cqa-dss --split test --limit 600 --out $D/cqa-test-qwen2.5-coder-1.5b.jsonl
run --task cqa --data $ROOT/../shared/data/cqa-dss --split train --limit 1500 --out $D/cqa-train-qwen2.5-coder-1.5b.jsonl
echo "== $(date) all done"
kill $(cat $JOBS/distill-serve.pid)

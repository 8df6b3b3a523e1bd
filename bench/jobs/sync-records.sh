#!/usr/bin/env bash
# Every 15 minutes: copy the teacher's stores (whole lines only) into bench/data/distill and commit
# them, so a fresh machine resumes them.   JOBS=/work/jobs bash bench/jobs/sync-records.sh &
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
JOBS=${JOBS:-/work/jobs}
REC=$ROOT/bench/data/distill
mkdir -p $REC
while true; do
  for f in $JOBS/distill/*-qwen2.5-coder-1.5b.jsonl; do
    [ -f "$f" ] || continue
    python3 -c "
import sys; b = open(sys.argv[1], 'rb').read(); b = b[:b.rfind(b'\n') + 1]
open(sys.argv[2], 'wb').write(b)" "$f" "$REC/$(basename $f)"
  done
  (cd $ROOT && git add bench/data/distill/*.jsonl && git commit -q -m "bench/data/distill: the 1.5B teacher's rationale stores so far" -- bench/data/distill/*.jsonl) >/dev/null 2>&1
  sleep ${EVERY:-900}
done

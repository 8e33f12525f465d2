#!/usr/bin/env bash
# Issue 19, the fully held-out multi-class run: the pool's first shards, then training
# (resumed when the run folder holds latest.pt; otherwise FROM SCRATCH: every earlier
# checkpoint was trained on images painted from the shared CT's label map, so starting
# from one would leak the held-out anatomy). One process at a time, one core: the
# trainer itself grows the pool (--grow_every). See training/checkpoints/README.md.
#
#   nohup nice -n 15 bash training/run_neighbours.sh >> $RUN/stdout.log 2>&1 &
set -euo pipefail
RUN=${RUN:-training/checkpoints/neighbours_heldout_sp6_w025_64}
POOL=${POOL:-runs/pool_neighbours_heldout_sp6}
PY=${PY:-.venv/bin/python}
INITIAL=${INITIAL:-300}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$RUN"
echo "$(date -u +%FT%TZ) run_neighbours: pool $POOL (first $INITIAL samples), run $RUN"
# Deterministic; existing shards are skipped (an interrupted pool resumes).
$PY -m training.synth --out_dir "$POOL" --start 0 --count "$INITIAL" --shard 100 \
  --spacing_mm 6 6 6 --mixture neighbours_heldout
COMMON=(--pool_dir "$POOL" --save_dir "$RUN" --lr 2e-3 --iters 40000 --max_minutes 2400
  --val_every 250 --ckpt_minutes 10 --reload_every 100 --grow_every 200 --grow_max 5000
  --threads 1 --seed 19)
if [ -f "$RUN/latest.pt" ]; then
  exec $PY -m training.demo_train "${COMMON[@]}" --resume
else
  exec $PY -m training.demo_train "${COMMON[@]}"
fi

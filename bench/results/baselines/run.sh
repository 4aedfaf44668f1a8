#!/bin/bash
# the issues-47/48 comparison: every design at equal counted training FLOPs; seed 0 at every budget first, then
# more seeds at the largest budget, then at the others (bash bench/results/baselines/run.sh; ~5 min a point on 2 cores)
cd "$(dirname "$0")/../../.."
source .venv/bin/activate
D=ar,full,block1,mdlm,bd3lm4,bd3lm16,ssdlm
run() { python bench/scaling.py run --design $D --flops $1 --seed $2 --out bench/results/baselines --samples 200 \
          --runs runs/baselines metrics.second_judge=gemma3-270m; echo "flops $1 seed $2 rc=$?"; }
run 1.25e13,2.5e13,5e13 0
run 5e13 1,2
run 1.25e13,2.5e13 1,2

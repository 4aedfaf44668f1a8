#!/bin/bash
# the issues-47/48 comparison: every design at equal counted training FLOPs; seed 0 at every budget first, then
# more seeds at the largest budget (SSD-LM, 3-5x slower a point, after the others), then at the others
# (bash bench/results/baselines/run.sh; a point already written is skipped; ~5-10 min a point on 2 cores, SSD-LM ~25)
cd "$(dirname "$0")/../../.."
source .venv/bin/activate
FAST=ar,full,block1,mdlm,bd3lm4,bd3lm16
run() { python bench/scaling.py run --design $1 --flops $2 --seed $3 --out bench/results/baselines --samples 200 \
          --runs runs/baselines metrics.second_judge=gemma3-270m; echo "$1 flops $2 seed $3 rc=$?"; }
run $FAST,ssdlm 1.25e13,2.5e13,5e13 0
run $FAST 5e13 1,2
run ssdlm 5e13 1,2
run $FAST,ssdlm 1.25e13,2.5e13 1,2

#!/bin/bash
# run.sh TAG SRC : 4 demo configs with fixed step counts, src tree SRC
TAG=$1; SRC=$2
COMMON="threads=1 vae_train.steps=40 dit_train.steps=40 ar_train.steps=40 vae_train.max_minutes=null dit_train.max_minutes=null eval.val_batches=2 eval.rouge_samples=8 eval.num_prompts=4 sample.length=8"
declare -A CFG
CFG[block]=""
CFG[window]="dit.block_size=0 vae.encoder_block_size=0"
CFG[wsc]="dit.block_size=0 vae.encoder_block_size=0 dit.self_condition_prob=0.5 dit.context_cache=true dit.infill_prob=0.3 sample.cfg_min_t=0.2"
CFG[bnull]="dit.block_size=2 vae.encoder_block_size=2 dit.block_uncond=null_latent dit.block_t=shared"
for name in block window wsc bnull; do
  out=${EQ_OUT:-/tmp/eq}/${TAG}_$name
  rm -rf $out
  PYTHONPATH=$SRC/src /work/main/.venv/bin/python -m textldm demo --quiet out_dir=$out $COMMON ${CFG[$name]} > $out.log 2>&1
  echo "$name rc=$?"
done

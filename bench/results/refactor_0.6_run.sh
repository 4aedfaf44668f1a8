#!/bin/bash
# refactor_0.6_run.sh TAG SRC: the 0.4 refactor's 4 demo configs + context-lm with its sampler (0.5's DiT keys, which
# both trees read), fixed steps, one thread, the tree at SRC; outputs in ${EQ_OUT:-/tmp/eq}/TAG_<config>
TAG=$1; SRC=$2
COMMON="threads=1 vae_train.steps=40 dit_train.steps=40 ar_train.steps=40 eval.val_batches=2 eval.rouge_samples=8 eval.num_prompts=4 sample.length=8"
declare -A CFG
CFG[block]="--config demo"
CFG[window]="--config demo dit.block_size=0 vae.encoder_block_size=0"
CFG[wsc]="--config demo dit.block_size=0 vae.encoder_block_size=0 dit.self_condition_prob=0.5 dit.context_cache=true dit.infill_prob=0.3 sample.cfg_min_t=0.2"
CFG[bnull]="--config demo dit.block_size=2 vae.encoder_block_size=2 dit.block_uncond=null_latent dit.block_t=shared"
CFG[ctxlm]="--config context-lm dit.context_windows=64"
for name in ${NAMES:-block window wsc bnull ctxlm}; do
  out=${EQ_OUT:-/tmp/eq}/${TAG}_$name
  rm -rf $out
  TEXTLDM_CACHE=${EQ_OUT:-/tmp/eq}/cache_$TAG PYTHONPATH=$SRC/src /work/main/.venv/bin/python -m textldm demo --quiet out_dir=$out ${CFG[$name]} $COMMON > $out.log 2>&1
  echo "$name rc=$?"
done

#!/usr/bin/env bash
# Issue 30's latent-to-token interface study, one lever at a time, every arm at the same fixed step counts
# (no wall-clock budget), the context-encoder mode (SmolLM2-135M's last-layer states as the prefix) as the
# instrument. Each arm: train-vae (or reuse the baseline VAE) -> train-dit -> bench/next_token.py.
#   bash bench/interface_study.sh [OUT=runs/interface] [VAE_STEPS=400] [DIT_STEPS=300] [PROMPTS=128]
# Results: bench/results/interface/<arm>.json (bench/next_token.py's rows) and each stage's log beside it.
# Cost: a VAE arm is ~15-45 min on 2 cores (400 steps), a DiT arm ~7-20 min (300 steps); not yet run in full.
set -euo pipefail
OUT=${OUT:-runs/interface}; VAE_STEPS=${VAE_STEPS:-400}; DIT_STEPS=${DIT_STEPS:-300}; PROMPTS=${PROMPTS:-128}
RES=bench/results/interface; mkdir -p "$OUT" "$RES"
T=.venv/bin/textldm; PY=.venv/bin/python
LM="dit.context_encoder=smollm2-135m dit.context_layer=-1 dit.context_features=auto dit.context_windows=1500"
STEPS="vae_train.steps=$VAE_STEPS vae_train.max_minutes=null dit_train.steps=$DIT_STEPS dit_train.max_minutes=null"

vae() {  # vae ARM OVERRIDES...
  local arm=$1; shift
  [ -d "$OUT/$arm/vae" ] || \
    $T train-vae --quiet out_dir="$OUT/$arm" $STEPS "$@" > "$RES/$arm.vae.log" 2>&1
}
dit() {  # dit ARM VAE_ARM OVERRIDES...
  local arm=$1 vae_arm=$2; shift 2
  [ -d "$OUT/$arm/model" ] || \
    $T train-dit --quiet --vae "$OUT/$vae_arm/vae" out_dir="$OUT/$arm" $STEPS $LM "$@" > "$RES/$arm.dit.log" 2>&1
  [ -f "$RES/$arm.json" ] || \
    $PY bench/next_token.py --model "$OUT/$arm/model" --prompts "$PROMPTS" --out "$RES/$arm.json" > "$RES/$arm.next.log" 2>&1
  echo "$(date +%T) $arm done"
}
ARMS=${ARMS:-"base selfcond decnoise kl1e-2"}
for arm in $ARMS; do
  case $arm in
    base)     vae base; dit base base ;;
    selfcond) dit selfcond base dit.self_condition_prob=0.5 ;;
    decnoise) vae decnoise vae.decoder_noise=0.5; dit decnoise decnoise ;;
    kl1e-2)   vae kl1e-2 vae.kl_weight=1e-2; dit kl1e-2 kl1e-2 ;;
    width32)  vae width32 vae.latent_channels=32; dit width32 width32 ;;
    norepa)   vae norepa vae.repa_weight=0; dit norepa norepa ;;
    *) echo "unknown arm $arm"; exit 2 ;;
  esac
done

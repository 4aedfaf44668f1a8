#!/usr/bin/env bash
# Issue 30's latent-to-token interface study, one lever at a time, every arm at the same fixed step counts
# (no wall-clock budget), the context-encoder mode (SmolLM2-135M's last-layer states as the prefix) as the
# instrument. Each arm: train-vae (or reuse the baseline VAE) -> train-dit -> bench/next_token.py.
#   [OUT=runs/interface] [VAE_STEPS=400] [DIT_STEPS=300] [PROMPTS=1024] [ARMS="base ..."] bash bench/interface_study.sh
# Arms on the base VAE: base (B = 1; its features were the LM's raw last block output, before 0.4.0's final norm),
# normed (base on the final-normed state), pred (normed + the LM's prediction, dit.context_lm.prediction=32), pred2x
# (pred at 2x the steps over 2x the precomputed windows), b4pred (B = 4 with the prediction), dit4x (4x the DiT steps), dit4xlive / dit2xlive (4x / 2x, the LM live on streamed windows), small (a 2-block DiT), live (the LM run at every
# step on streamed windows), ft1 (live, and the LM's last block trained: dit.context_lm.train_layers=1), selfcond
# (self-conditioning, dit.self_condition_prob=0.5), b4 / b16 (block sizes), scratch (no context encoder: the
# from-scratch block-1 DiT), scratchsc (scratch with self-conditioning: a lever re-measured from scratch), ar (the AR
# baseline at the base DiT's counted FLOPs); arms with their own VAE: decnoise, kl1e-2, width32, norepa; `table`
# scores TABLE_ARMS beside the backbone sampling itself (textldm eval, both judges), at the demo's sampler and a
# colder one (noise 0.5; the backbone at temperature 0.7).
# Results: bench/results/interface/<arm>.json (bench/next_token.py's rows: every sampler setting for base, the
# table's three for the others) and each stage's log beside it.
# Cost: a VAE arm is ~15-45 min on 2 cores (400 steps), a DiT arm ~7-20 min (300 steps); not yet run in full.
set -uo pipefail  # an arm that fails is reported and the next one runs
OUT=${OUT:-runs/interface}; VAE_STEPS=${VAE_STEPS:-400}; DIT_STEPS=${DIT_STEPS:-300}; PROMPTS=${PROMPTS:-1024}
RES=bench/results/interface; mkdir -p "$OUT" "$RES"
T=.venv/bin/textldm; PY=.venv/bin/python
LM="dit.mode=context_lm dit.context_lm.encoder=smollm2-135m dit.context_lm.layer=-1 dit.context_lm.features=auto dit.context_lm.windows=1500"
STEPS="vae_train.steps=$VAE_STEPS vae_train.guard_minutes=null dit_train.steps=$DIT_STEPS dit_train.guard_minutes=null"

vae() {  # vae ARM OVERRIDES...
  local arm=$1; shift
  [ -d "$OUT/$arm/vae" ] || \
    $T train-vae --quiet out_dir="$OUT/$arm" $STEPS "$@" > "$RES/$arm.vae.log" 2>&1 || \
    echo "$(date +%T) $arm VAE failed: $(tail -1 "$RES/$arm.vae.log")"
}
report() {  # report MODEL_DIR OUT.json: the training report saved in the model's config (steps, seconds, held-out)
  $PY -c "import json, sys; json.dump(json.load(open(sys.argv[1] + '/config.json'))['report'], open(sys.argv[2], 'w'), \
indent=1)" "$1" "$2"
}
dit() {  # dit ARM VAE_ARM OVERRIDES...
  local arm=$1 vae_arm=$2; shift 2
  [ -d "$OUT/$vae_arm/vae" ] || { echo "$(date +%T) $arm skipped: no VAE $vae_arm"; return; }
  [ -d "$OUT/$arm/model" ] || \
    $T train-dit --quiet --vae "$OUT/$vae_arm/vae" out_dir="$OUT/$arm" $STEPS $LM "$@" > "$RES/$arm.dit.log" 2>&1 || \
    { echo "$(date +%T) $arm failed: $(tail -1 "$RES/$arm.dit.log")"; return; }
  report "$OUT/$arm/model" "$RES/$arm.train.json"
  local settings=1,3,5; [ "$arm" = base ] && settings=
  [ -f "$RES/$arm.json" ] || $PY bench/next_token.py --model "$OUT/$arm/model" --prompts "$PROMPTS" \
    --settings "$settings" --out "$RES/$arm.json" > "$RES/$arm.next.log" 2>&1
  echo "$(date +%T) $arm done"
}
ar() {  # the AR baseline at the base arm's counted DiT FLOPs (its step count fit to them, so its schedule ends there)
  [ -d "$OUT/ar/ar" ] && return
  local steps; steps=$($PY - "$OUT/base/model/config.json" <<'PY'
import json, sys
from textldm import load_config
from textldm.models.ar import CausalLM
from textldm.runtime.perf import TRAIN_FACTOR, ar_flops_per_sequence
cfg = load_config("demo", [])
flops = json.load(open(sys.argv[1]))["report"]["dit_train"]["flops"]
per_step = TRAIN_FACTOR * cfg.ar_train.batch_size * ar_flops_per_sequence(CausalLM(cfg.ar, 49152), cfg.ar_seq_len)
print(max(1, round(flops / per_step)))
PY
)
  $T train-ar --quiet out_dir="$OUT/ar" ar_train.steps="$steps" ar_train.max_minutes=null > "$RES/ar.log" 2>&1
  report "$OUT/ar/ar" "$RES/ar.train.json"
  echo "$(date +%T) ar done ($steps steps)"
}
table() {  # the side-by-side tables: the trained models and the backbone sampling itself, on the embedded benchmark
  local models=(--model hf:smollm2-135m)
  for arm in $TABLE_ARMS; do [ -d "$OUT/$arm/model" ] && models+=(--model "$arm=$OUT/$arm/model"); done
  [ -d "$OUT/ar/ar" ] && models+=(--model "ar=$OUT/ar/ar")
  local scoring="metrics.samples=$EVAL_SAMPLES metrics.mauve_buckets=$((EVAL_SAMPLES / 10)) metrics.second_judge=gemma3-270m"
  [ -f "$RES/eval/results.json" ] || \
    $T eval --quiet "${models[@]}" --out "$RES/eval" $scoring > "$RES/eval.log" 2>&1
  echo "$(date +%T) table done"
  # the colder sampler (next_token.py's best-but-deterministic is x0 = 0; 0.5 keeps some diversity), the backbone
  # at temperature 0.7 beside it
  models=(--model hf:smollm2-135m)
  for arm in $TABLE_ARMS; do [ -d "$OUT/$arm/model" ] && models+=(--model "$arm=$OUT/$arm/model"); done
  [ -f "$RES/eval_cold/results.json" ] || \
    $T eval --quiet "${models[@]}" --out "$RES/eval_cold" $scoring sample.noise_scale=0.5 sample.temperature=0.7 \
      > "$RES/eval_cold.log" 2>&1
  echo "$(date +%T) cold table done"
}
EVAL_SAMPLES=${EVAL_SAMPLES:-40}  # the judges read long prompts: ~4 min a model at 40 items on 2 cores
TABLE_ARMS=${TABLE_ARMS:-"base ft1 scratch"}  # the trained arms in the side-by-side tables (each ~4 min at 40 items)
ARMS=${ARMS:-"base decnoise b4 scratch ar table b16 kl1e-2 width32 norepa selfcond"}
for arm in $ARMS; do
  case $arm in
    base)     vae base; dit base base ;;
    selfcond) dit selfcond base dit.self_condition_prob=0.5 ;;
    decnoise) vae decnoise vae.decoder_noise=0.5; dit decnoise decnoise ;;
    kl1e-2)   vae kl1e-2 vae.kl_weight=1e-2; dit kl1e-2 kl1e-2 ;;
    width32)  vae width32 vae.latent_channels=32; dit width32 width32 ;;
    norepa)   vae norepa vae.repa_weight=0; dit norepa norepa ;;
    b4)       dit b4 base dit.blocks.size=4 ;;
    b16)      dit b16 base dit.blocks.size=16 ;;
    small)    dit small base dit.depth=2 ;;  # denoiser size: 2 of the demo DiT's 6 blocks
    dit4x)    dit dit4x base dit_train.steps=$((4 * DIT_STEPS)) ;;  # the interface at 4x the DiT's training
    dit4xlive) dit dit4xlive base dit_train.steps=$((4 * DIT_STEPS)) dit.context_lm.features= dit.context_lm.windows=0 ;;
    dit2xlive) dit dit2xlive base dit_train.steps=$((2 * DIT_STEPS)) dit.context_lm.features= dit.context_lm.windows=0 ;;
    scratch)  dit scratch base dit.mode=blocks dit.context_lm.features= dit.context_lm.windows=0 ;;  # from scratch
    scratchsc) dit scratchsc base dit.mode=blocks dit.context_lm.features= dit.context_lm.windows=0 \
                 dit.self_condition_prob=0.5 ;;
    live)     dit live base dit.context_lm.features= dit.context_lm.windows=0 ;;  # the LM at every step, streamed windows
    normed)   dit normed base ;;  # the LM's final-normed last state (base read the raw last block output, before the fix)
    pred)     dit pred base dit.context_lm.prediction=32 ;;  # + the LM's prediction: its top-32 expected output embedding
    pred2x)   dit pred2x base dit.context_lm.prediction=32 dit_train.steps=$((2 * DIT_STEPS)) dit.context_lm.windows=3000 ;;
    b4pred)   dit b4pred base dit.blocks.size=4 dit.context_lm.prediction=32 ;;  # block size 4 with the LM's prediction
    ft1)      dit ft1 base dit.context_lm.features= dit.context_lm.windows=0 dit.context_lm.train_layers=1 ;;  # + its last block
    ar)       ar ;;
    table)    table ;;
    *) echo "unknown arm $arm"; exit 2 ;;
  esac
done

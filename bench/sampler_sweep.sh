#!/bin/bash
# The context-LM demo's sampler settings side by side on the embedded benchmark (both judges, MAUVE on ITEMS / 10
# buckets): CFG scale x noise scale, and the backbone sampling itself beside them.
#   bash bench/sampler_sweep.sh [MODEL]             40 items, every setting (~2 min each on 2 quiet cores)
#   ITEMS=100 bash bench/sampler_sweep.sh [MODEL]   100 items: CFG 2 and 4, colder starts, the backbone (~4 min each)
# 250 items, the preset's sampler and the backbone only (~15 min each), as run 2026-12-05:
#   textldm eval --quiet --model m=runs/demo/model --out bench/results/interface/sampler/n250/c2n1p1 \
#     metrics.samples=250 metrics.mauve_buckets=25 metrics.second_judge=gemma3-270m sample.cfg_scale=2 \
#     sample.noise_scale=1 sample.lm_prior=1        (lm1: --model m=hf:smollm2-135m sample.temperature=1)
# MODEL: default runs/demo/model (a `make demo` model). Writes bench/results/interface/sampler/nITEMS/TAG/
# {results.json,generations/}; then per-position binding:
#   python bench/binding_profile.py bench/results/interface/sampler/n40/*/generations/embedded/m.jsonl
set -u
cd "$(dirname "$0")/.."
MODEL=${1:-runs/demo/model}
ITEMS=${ITEMS:-40}
OUT=bench/results/interface/sampler/n$ITEMS
T=".venv/bin/textldm"
settings=(
  "c2n05 $MODEL sample.cfg_scale=2 sample.noise_scale=0.5"
  "c4n05 $MODEL sample.cfg_scale=4 sample.noise_scale=0.5"  # the preset's sampler since 2026-12-05
)
if [ "$ITEMS" = 40 ]; then
  settings+=(
    "c6n05 $MODEL sample.cfg_scale=6 sample.noise_scale=0.5"
    "c4n07 $MODEL sample.cfg_scale=4 sample.noise_scale=0.7"
    "c4n1 $MODEL sample.cfg_scale=4 sample.noise_scale=1"
    "lm0.7 hf:smollm2-135m sample.temperature=0.7")  # the backbone sampling itself
else
  settings+=(
    "c4n05s1 $MODEL sample.cfg_scale=4 sample.noise_scale=0.5 sample.seed=1"  # another draw: the metrics' spread
    "c4n025 $MODEL sample.cfg_scale=4 sample.noise_scale=0.25"
    "c4n0 $MODEL sample.cfg_scale=4 sample.noise_scale=0"  # from x0 = 0: deterministic
    "c4n05h512 $MODEL sample.cfg_scale=4 sample.noise_scale=0.5 sample.lm_history=512"  # the LM reads whole prompts
    # the LM's next-token log-probabilities added to the decoder's at decoding (sample.lm_prior)
    "c4n05p05 $MODEL sample.cfg_scale=4 sample.noise_scale=0.5 sample.lm_prior=0.5"
    "c4n05p1 $MODEL sample.cfg_scale=4 sample.noise_scale=0.5 sample.lm_prior=1"
    "c4n1p05 $MODEL sample.cfg_scale=4 sample.noise_scale=1 sample.lm_prior=0.5"
    "c4n1p1 $MODEL sample.cfg_scale=4 sample.noise_scale=1 sample.lm_prior=1"
    "c4n1p1s1 $MODEL sample.cfg_scale=4 sample.noise_scale=1 sample.lm_prior=1 sample.seed=1"
    "c4n1p05s1 $MODEL sample.cfg_scale=4 sample.noise_scale=1 sample.lm_prior=0.5 sample.seed=1"
    "c2n1p1 $MODEL sample.cfg_scale=2 sample.noise_scale=1 sample.lm_prior=1"
    "c2n1p1s1 $MODEL sample.cfg_scale=2 sample.noise_scale=1 sample.lm_prior=1 sample.seed=1"
    "lm1 hf:smollm2-135m sample.temperature=1" "lm0.7 hf:smollm2-135m sample.temperature=0.7")
fi
for line in "${settings[@]}"; do
  read -r tag model overrides <<< "$line"
  [ -f "$OUT/$tag/results.json" ] && continue
  # shellcheck disable=SC2086
  $T eval --quiet --model "m=$model" --out "$OUT/$tag" metrics.samples=$ITEMS metrics.mauve_buckets=$((ITEMS / 10)) \
    metrics.second_judge=gemma3-270m $overrides > "$OUT/$tag.log" 2>&1 || echo "$tag failed: $(tail -1 "$OUT/$tag.log")"
  rm -f "$OUT/$tag.log"
done

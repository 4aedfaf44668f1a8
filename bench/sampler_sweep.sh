#!/bin/bash
# The context-LM demo's sampler settings side by side on the embedded benchmark (40 items, both judges, MAUVE on 4
# buckets): CFG scale x noise scale, and the backbone sampling itself at temperature 0.7 beside them.
#   bash bench/sampler_sweep.sh [MODEL]    (default runs/demo/model: a `make demo` model)
# Writes bench/results/interface/sampler/TAG/{results.json,generations/}; then
#   python bench/binding_profile.py bench/results/interface/sampler/*/generations/embedded/m.jsonl
# ~2 min per setting on 2 quiet cores.
set -u
cd "$(dirname "$0")/.."
MODEL=${1:-runs/demo/model}
OUT=bench/results/interface/sampler
T=".venv/bin/textldm"
settings=(
  "c2n05 $MODEL sample.cfg_scale=2 sample.noise_scale=0.5"  # the preset's sampler
  "c4n05 $MODEL sample.cfg_scale=4 sample.noise_scale=0.5"
  "c6n05 $MODEL sample.cfg_scale=6 sample.noise_scale=0.5"
  "c4n07 $MODEL sample.cfg_scale=4 sample.noise_scale=0.7"
  "c4n1 $MODEL sample.cfg_scale=4 sample.noise_scale=1"
  "lm07 hf:smollm2-135m sample.temperature=0.7"  # the backbone sampling itself
)
for line in "${settings[@]}"; do
  read -r tag model overrides <<< "$line"
  [ -f "$OUT/$tag/results.json" ] && continue
  # shellcheck disable=SC2086
  $T eval --quiet --model "m=$model" --out "$OUT/$tag" metrics.samples=40 metrics.mauve_buckets=4 \
    metrics.second_judge=gemma3-270m $overrides > "$OUT/$tag.log" 2>&1 || echo "$tag failed: $(tail -1 "$OUT/$tag.log")"
  rm -f "$OUT/$tag.log"
done

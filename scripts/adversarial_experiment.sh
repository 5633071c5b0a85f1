#!/usr/bin/env bash
# The adversarial experiment of docs/adversarial.md: on the shipped pairs task, each default recipe's
# finetuned model against adv-train with every method, clean BLEU and BLEU under character noise 0.1
# and word drop 0.1, with intervals. Trains what is missing (finetune models come from
# `textgen compare --recipe sora.yaml --recipe chatgpt.yaml`, i.e. `make demo`).
# Usage: [METHODS='none fgm r3f'] bash scripts/adversarial_experiment.sh [extra key=value overrides for adv-train]
# METHODS: the methods to run (default all five; `none` is the control and should stay)
set -euo pipefail
cd "$(dirname "$0")/.."
TEXTGEN=${TEXTGEN:-.venv/bin/textgen}
PERTURB='eval.perturb=[char:0.1,word_drop:0.1]'
for recipe in sora chatgpt; do
  # the stages the recipe lists (finetune only, from scratch, for the shipped recipes)
  [ -d "runs/$recipe/finetune/final" ] || "$TEXTGEN" finetune --recipe "$recipe.yaml"
  runs=("runs/$recipe/finetune")
  for method in ${METHODS:-none fgm pgd freelb r3f}; do  # none: the same extra steps without adversary (the control)
    if [ ! -f "runs/$recipe-$method/adv-train/summary.json" ]; then
      "$TEXTGEN" adv-train --recipe "$recipe.yaml" run.name="$recipe-$method" model.init_from="runs/$recipe/finetune/final" \
        adv_train.method="$method" eval.after_finetune=false "$@"
    fi
    runs+=("runs/$recipe-$method/adv-train")
  done
  "$TEXTGEN" compare "${runs[@]}" "$PERTURB" --name "adversarial-$recipe"
done

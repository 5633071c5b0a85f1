"""BLEU during training: a learning curve of what the model writes, not only of its loss.

With `train.eval_generate: N` (N > 0), every validation pass of `finetune` and `adv-train`
greedy-decodes the first N validation examples with the model being trained and logs their corpus
BLEU (sacreBLEU, the shipped `bleu` metric's defaults) as `val_bleu` in metrics.jsonl, beside
`val_loss`. `textgen compare` plots it against training tokens for every model. Decoding is greedy
and in eval mode, so it draws no random numbers: the training run is the same with or without it.
One process only (with several, the other processes would wait at the next collective).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from textgen_cli.core.progress import log
from textgen_cli.core.stages import STAGE_TABLE

_EXAMPLES: dict[tuple[str, int], list] = {}
_WARNED: set[str] = set()


def validation_examples(loaded, n: int) -> list:
    from textgen_cli.data.readers import examples_from, read_finetune_examples

    finetune = loaded.recipe.data.finetune
    key = (str(finetune.validation), n)
    if key not in _EXAMPLES:
        _EXAMPLES[key] = examples_from(read_finetune_examples(finetune, "validation", n), finetune.task)[:n]
    return _EXAMPLES[key]


def validation_generation(loaded, stage: str, model, tokenizer, world: int = 1) -> dict[str, Any]:
    """{"val_bleu": ..., "val_bleu_examples": n} for a validation pass, or {} when off."""
    n = loaded.recipe.train.eval_generate
    if n <= 0 or not STAGE_TABLE[stage].evaluated:
        return {}
    if world > 1:
        if stage not in _WARNED:
            log(f"{stage}: train.eval_generate is skipped with {world} processes (one process only)")
            _WARNED.add(stage)
        return {}
    import sacrebleu

    from textgen_cli.generation.generate import Generator
    from textgen_cli.models import role_of_model

    r = loaded.recipe
    examples = validation_examples(loaded, n)
    if not examples:
        return {}
    role = role_of_model(model)
    role.configure_generation(model, tokenizer, r.model.context)
    settings = dataclasses.replace(r.generate, do_sample=False, num_beams=1)
    generator = Generator.from_recipe(
        model, tokenizer, r, family=role.name, stage=stage, path=Path("."), settings=settings
    )
    was_training = model.training
    model.eval()
    try:
        outputs = [result.output for result in generator.batch([e.prompt for e in examples])]
    finally:
        model.train(was_training)
    return {
        "val_bleu": sacrebleu.corpus_bleu(outputs, [[e.reference for e in examples]]).score,
        "val_bleu_examples": len(examples),
    }

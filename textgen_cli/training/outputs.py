"""What a finished stage leaves: final/ (the model, LoRA merged, and its tokenizer), summary.json, the
model card, and the disk-space check before any of it is written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core.files import FINAL_DIR, SUMMARY_FILE
from textgen_cli.core.progress import log
from textgen_cli.core.results import RunSummary
from textgen_cli.core.stages import section_of
from textgen_cli.models import role_of_model
from textgen_cli.models.flops import Lengths, flops_model
from textgen_cli.models.lora import merged_for_saving
from textgen_cli.training.model_card import write_model_card
from textgen_cli.training.run_dir import RunDir, peak_memory_mb, versions
from textgen_cli.training.state import Loop

if TYPE_CHECKING:
    pass


def finish(loop: Loop, *, notes: dict[str, Any], resumed: bool) -> RunSummary:
    """final/ (the trained model with any LoRA adapters merged, its generation settings, the
    tokenizer), summary.json and the model card."""
    ranks = loop.ranks
    final_dir = loop.run.work / FINAL_DIR
    model, weight_hashes = final_model(loop)
    model = merged_for_saving(model, final_dir, save=ranks.main)  # LoRA: the adapters merged into the weights
    role_of_model(model).configure_generation(model, loop.tokenizer, loop.loaded.recipe.model.context)
    if ranks.main:
        save_final(model, loop.tokenizer, final_dir, loop.run)
    summary = run_summary(loop, model, weight_hashes=weight_hashes, notes=notes, resumed=resumed)
    if ranks.main:
        loop.run.write_json(SUMMARY_FILE, summary.to_dict())
        write_model_card(loop.run.work, summary)  # final/README.md; rewritten with the scores if the stage is evaluated
    return summary


def final_model(loop: Loop) -> tuple[Any, list[str]]:
    """The trained model as a plain one (on rank 0 under FSDP), and the fingerprint of every
    process's weights."""
    from textgen_cli.training import fsdp

    ranks = loop.ranks
    model = loop.accelerator.unwrap_model(loop.model)
    if ranks.sharded:
        # gather the shards (every rank takes part) into a plain model on rank 0: that is what is saved
        weights = fsdp.full_model_state(model)
        if ranks.main:
            model = unsharded_copy(loop.plain_class, model.config, weights)
        return model, [weights_fingerprint(model)] if ranks.main else []
    # every process must end with the same weights; record each one's fingerprint to show it
    return model, ranks.gather(weights_fingerprint(model))


def run_summary(loop: Loop, model, *, weight_hashes: list[str], notes: dict[str, Any], resumed: bool) -> RunSummary:
    loaded, state, section, ranks = loop.loaded, loop.state, loop.section, loop.ranks
    recipe = loaded.recipe
    return RunSummary(
        stage=loop.stage,
        recipe=str(loaded.path),
        recipe_name=loaded.name,
        settings_hash=loaded.settings_hash(),
        stage_hash=loaded.stage_hash(loop.stage),
        family=recipe.model.family,
        parameters=loop.n_params,
        steps=loop.steps,
        batch_size=section.batch_size,
        grad_accum=section.grad_accum,
        train_examples=len(loop.train_set),
        tokens=state.tokens_seen,
        encoder_tokens=state.encoder_tokens,
        decoder_tokens=state.decoder_tokens,
        flops=flops_model(model).flops(Lengths(state.encoder_tokens, state.decoder_tokens, **state.attention)),
        wall_time_s=state.elapsed,
        train_time_s=state.train_time,
        tokens_per_s=state.tokens_seen / max(state.train_time, 1e-9),
        final_train_loss=state.last_loss,
        initial_val_loss=state.first_val["val_loss"],
        final_val_loss=state.last_val["val_loss"],
        final_val_ppl=state.last_val["val_ppl"],
        skipped_steps=state.skipped,
        resumed=resumed,
        peak_memory_mb=peak_memory_mb(loop.device.type),
        device=str(loop.device),
        processes=ranks.world,
        rank_weight_hashes=weight_hashes,
        strategy=recipe.distributed.strategy if ranks.world > 1 else "single",
        global_batch=section.batch_size * section.grad_accum * ranks.world,
        seed=section.seed,
        versions=versions(),
        run_dir=str(loop.run.path),
        final_dir=str(loop.run.path / FINAL_DIR),
        notes=notes,
    )


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def tokenizer_bytes(tokenizer) -> int:
    """About what tokenizer.json takes on the disk (a slow tokenizer has no JSON: 1 MB is plenty)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return len(backend.to_str().encode()) if backend is not None else 2**20


def check_disk_space(run: RunDir, model, tokenizer, recipe, stage: str) -> None:
    """Pre-flight: refuse (exit 2) a stage whose checkpoints and final/ cannot fit on the disk, warn
    when they barely do (docs/reliability.md, "Disk space")."""
    from textgen_cli.core import diskspace
    from textgen_cli.training import checkpoint

    estimate = diskspace.estimate_run(
        parameter_bytes(model),
        tokenizer_bytes(tokenizer),
        getattr(recipe, section_of(stage)).steps,
        recipe.checkpoint.every,
        recipe.checkpoint.keep_last,
        # a resumed run's checkpoints are on the disk already (set-aside damaged ones stay, so they do not count)
        present=sum(diskspace.tree_bytes(p) for p in (run.work / checkpoint.CHECKPOINTS).glob(f"{checkpoint.PREFIX}*")),
    )
    diskspace.check_room(estimate, run.work, log)


def save_final(model, tokenizer, folder: Path, run: RunDir) -> None:
    """final/: the model and its tokenizer. On a full disk the partial folder is removed at once (it
    would keep the disk full) and the error names the checkpoint --resume continues from."""
    from textgen_cli.core import diskspace

    needed = parameter_bytes(model) + tokenizer_bytes(tokenizer)
    with diskspace.writing("the final model", folder, needed, run.resume_hint, partial=folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def unsharded_copy(model_class, config, weights: dict[str, Any]):
    """A plain (unsharded) model of `model_class` holding the gathered `weights`."""
    from textgen_cli.training import fsdp

    model = model_class(config).to(next(iter(weights.values())).dtype)
    fsdp.load_model_state(model, weights)
    return model


def weights_fingerprint(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

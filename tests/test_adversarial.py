"""Adversarial training (`adv-train`): the embedding-space objectives of adversarial.py, the seeded text
perturbations of perturb.py, augmentation, and the stage end to end through the installed entry point.

The in-process tests use a tiny model of each family finetuned in-process for a few dozen steps
(`tiny`, once per family per module), evaluated in eval mode so that dropout does not blur exact
gradient comparisons. The command-line tests start `textgen adv-train` from that finetune output.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from harness import FAMILIES, textgen
from textgen_cli.data.perturb import CHAR_KINDS, KINDS, parse_spec, perturb
from textgen_cli.objectives import IGNORE_INDEX, token_loss_sum
from textgen_cli.training import adversarial
from textgen_cli.training.adversarial import (
    DEFAULTS,
    METHODS,
    AdversarialStep,
    AdvSettings,
    initial_delta,
    normalized_step,
    perturbation_mask,
    project,
    settings_from,
)

NORMS = ("l2", "inf")
STEPS = 30  # finetune steps of the tiny models


# ---------------------------------------------------------------- helpers


def settings(method: str, **changes: Any) -> AdvSettings:
    values = {**DEFAULTS[method], "norm": "l2", "weight": 1.0, "positions": "context"}
    values.update(changes)
    return AdvSettings(method=method, **values)


def example_norms(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per example, over its (positions x hidden) slice; written here independently of adversarial.py."""
    flat = x.reshape(x.size(0), -1)
    return flat.abs().max(dim=1).values if norm == "inf" else torch.linalg.vector_norm(flat, dim=1)


def within(values: torch.Tensor, bound: float) -> bool:
    return bool((values <= bound * (1 + 1e-5) + 1e-7).all())


def random_mask(batch: int = 4, length: int = 9, seed: int = 0) -> torch.Tensor:
    """(batch, length, 1): right padding of different lengths, plus a few holes (like assistant positions)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, 1)
    for row in range(batch):
        mask[row, : length - row] = 1
    holes = torch.rand(batch, length, 1, generator=generator) < 0.2
    mask[holes] = 0
    mask[:, 0] = 1  # every example keeps at least one position
    return mask


def param_grads(model) -> dict[str, torch.Tensor]:
    return {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
    }


def assert_same_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == expected.keys()
    assert any(float(g.abs().sum()) > 0 for g in expected.values()), f"{what}: the reference gradients are all zero"
    for name in expected:
        torch.testing.assert_close(
            got[name], expected[name], rtol=1e-4, atol=1e-8, msg=lambda m, name=name: f"{what}: {name}: {m}"
        )


def grads_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-8) for name in a)


# Hand-written references (they do not call adversarial.py), used to check the step functions.


def ref_loss_sum(model, batch, causal: bool, embeds: torch.Tensor) -> torch.Tensor:
    kwargs = {key: value for key, value in batch.items() if key not in ("input_ids", "labels")}
    logits = model(inputs_embeds=embeds, **kwargs).logits
    labels = batch["labels"]
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def ref_mask(batch, causal: bool, positions: str) -> torch.Tensor:
    keep = batch["attention_mask"] == 1
    if causal and positions == "context":
        keep = keep & (batch["labels"] == IGNORE_INDEX)
    return keep[..., None].float()


def ref_unit(grad, mask, norm):
    grad = grad * mask
    if norm == "inf":
        return torch.sign(grad)
    return grad / torch.linalg.vector_norm(grad.flatten(1), dim=1).view(-1, 1, 1)


def ref_project(delta, mask, eps, norm):
    delta = delta * mask
    if norm == "inf":
        return delta.clamp(-eps, eps)
    n = torch.linalg.vector_norm(delta.flatten(1), dim=1).view(-1, 1, 1)
    return delta * torch.clamp(eps / n, max=1.0)


def ref_init(shape, mask, init_mag, norm):
    u = (torch.rand(shape) * 2 - 1) * mask
    if norm == "inf":
        return u * init_mag
    count = mask.flatten(1).sum(dim=1) * shape[-1]
    return u * (init_mag / count.sqrt()).view(-1, 1, 1)


# ---------------------------------------------------------------- a tiny finetuned model per family


@dataclass
class Tiny:
    family: str
    causal: bool
    root: Path  # run.root of the in-process runs
    final: Path  # runs/<name>/finetune/final
    batch: dict[str, torch.Tensor]
    n_train_records: int

    loaded: Any = None  # the finetuned model, loaded once; each test gets a copy

    def model(self):
        import copy

        from textgen_cli.models import load_checkpoint

        if self.loaded is None:
            self.loaded = load_checkpoint(self.final, self.family)
        model = copy.deepcopy(self.loaded)
        model.eval()  # no dropout: exact comparisons between code paths
        return model

    @property
    def scale(self) -> float:
        labels = self.batch["labels"]
        if self.causal:
            labels = labels[:, 1:]
        return 1.0 / int((labels != IGNORE_INDEX).sum())


_TINY: dict[str, Tiny] = {}


def make_tiny(workspace: Path, tokenizer, family: str) -> Tiny:
    """A tiny model of `family` from random weights, finetuned 30 steps in-process by run_finetune into
    <root>/adv-<family>/finetune/final (the place `textgen adv-train` starts from)."""
    if family not in _TINY:
        from textgen_cli.models import role_for
        from textgen_cli.recipe import load_recipe
        from textgen_cli.training.finetune import build_examples, prepare, run_finetune

        root = workspace / "adv-runs"
        init = workspace / f"adv-init-{family}"
        overrides = [
            f"run.root={root}",
            f"run.name=adv-{family}",
            f"model.init_from={init}",
            f"finetune.steps={STEPS}",
            "train.log_every=10",
            "train.eval_every=100",
        ]
        loaded = load_recipe(str(workspace / "recipe" / f"tiny-{family}.yaml"), overrides)
        torch.manual_seed(0)
        role_for(family).build(loaded.recipe.model, tokenizer).save_pretrained(init)
        tokenizer.save_pretrained(init)
        run_finetune(loaded)
        final = root / f"adv-{family}" / "finetune" / "final"
        setup = prepare(loaded, final, "adv-train")
        train_set, _, _ = build_examples(loaded, setup, "adv-train")
        batch = train_set.collate(list(range(8)), 0)
        assert (batch["attention_mask"] == 0).any(), "the test batch should have padding"
        _TINY[family] = Tiny(family, setup.role.shifted_labels, root, final, batch, len(setup.train_dialogues))
    return _TINY[family]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, workspace, tokenizer) -> Tiny:
    return make_tiny(workspace, tokenizer, request.param)


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture
def recorded(monkeypatch) -> list[torch.Tensor | None]:
    """Every inputs_embeds the step functions pass to token_loss_sum (None: the plain input ids)."""
    calls: list[torch.Tensor | None] = []
    real = adversarial.token_loss_sum

    def spy(model, batch, causal, inputs_embeds=None):
        calls.append(None if inputs_embeds is None else inputs_embeds.detach().clone())
        return real(model, batch, causal, inputs_embeds)

    monkeypatch.setattr(adversarial, "token_loss_sum", spy)
    return calls


# ---------------------------------------------------------------- helpers of adversarial.py


def test_settings_from_uses_the_literature_defaults_for_null_keys():
    from textgen_cli.core.schema import AdvTrainSection

    for method in METHODS:
        got = settings_from(AdvTrainSection(method=method))
        assert (got.epsilon, got.step_size, got.ascent_steps, got.init_mag) == tuple(
            DEFAULTS[method][k] for k in ("epsilon", "step_size", "ascent_steps", "init_mag")
        )
    assert (
        DEFAULTS["fgm"]["epsilon"] == 1.0
        and DEFAULTS["pgd"]["ascent_steps"] == 3
        and DEFAULTS["freelb"]["epsilon"] == 0.3
        and DEFAULTS["r3f"]["epsilon"] == 1e-5
    )
    got = settings_from(
        AdvTrainSection(
            method="pgd",
            epsilon=0.5,
            step_size=0.05,
            ascent_steps=7,
            init_mag=0.0,
            norm="inf",
            weight=0.3,
            positions="all",
        )
    )
    assert (got.epsilon, got.step_size, got.ascent_steps, got.init_mag, got.norm, got.weight, got.positions) == (
        0.5,
        0.05,
        7,
        0.0,
        "inf",
        0.3,
        "all",
    )


@pytest.mark.parametrize("norm", NORMS)
def test_project_keeps_delta_in_the_ball_and_off_padding(norm):
    torch.manual_seed(1)
    mask = random_mask()
    big = torch.randn(4, 9, 6) * 10
    out = project(big, mask, 0.5, norm)
    assert within(example_norms(out, norm), 0.5)
    assert torch.all(out[mask.expand_as(out) == 0] == 0)
    if norm == "l2":  # a point outside the ball lands on its surface, in the same direction
        torch.testing.assert_close(example_norms(out, "l2"), torch.full((4,), 0.5))
        cosine = F.cosine_similarity((big * mask).flatten(1), out.flatten(1), dim=1)
        torch.testing.assert_close(cosine, torch.ones(4))
    else:
        assert (out.abs().amax() - 0.5).abs() < 1e-7
    small = torch.randn(4, 9, 6) * 1e-3 * mask
    torch.testing.assert_close(project(small, mask, 0.5, norm), small)  # inside the ball: unchanged
    torch.testing.assert_close(project(big, mask, 0.0, norm), big * mask)  # epsilon 0: unbounded, masked


@pytest.mark.parametrize("norm", NORMS)
def test_normalized_step_is_a_unit_ascent_direction_off_padding(norm):
    torch.manual_seed(2)
    mask = random_mask()
    grad = torch.randn(4, 9, 6)
    step = normalized_step(grad, mask, norm)
    assert torch.all(step[mask.expand_as(step) == 0] == 0)
    torch.testing.assert_close(example_norms(step, norm), torch.ones(4))
    assert torch.all(((step * grad * mask).flatten(1).sum(dim=1)) > 0)  # it ascends
    if norm == "inf":
        assert set(step.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # scale-free: the direction of 1000 * grad is the same
    torch.testing.assert_close(normalized_step(grad * 1000, mask, norm), step)


@pytest.mark.parametrize("norm", NORMS)
def test_initial_delta_is_bounded_by_init_mag_and_zero_on_padding(norm):
    mask = random_mask()
    like = torch.zeros(1)
    torch.manual_seed(3)
    delta = initial_delta(torch.Size((4, 9, 6)), mask, 0.64, norm, like)
    torch.manual_seed(3)
    again = initial_delta(torch.Size((4, 9, 6)), mask, 0.64, norm, like)
    assert torch.equal(delta, again)
    assert torch.all(delta[mask.expand_as(delta) == 0] == 0)
    assert torch.all(delta[mask.expand_as(delta) == 1] != 0)
    assert within(example_norms(delta, norm), 0.64)
    if norm == "l2":  # U(-1,1) * mag / sqrt(n): about mag / sqrt(3) in expectation, far from 0
        assert torch.all(example_norms(delta, "l2") > 0.64 / 10)
    assert torch.equal(initial_delta(torch.Size((4, 9, 6)), mask, 0.0, norm, like), torch.zeros(4, 9, 6))


def test_perturbation_mask_positions():
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 7, 8, 9], [-100, 6, 7, -100, -100]]),
    }
    context = perturbation_mask(batch, True, "context").squeeze(-1)
    assert context.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert perturbation_mask(batch, True, "all").squeeze(-1).tolist() == batch["attention_mask"].float().tolist()
    # encoder-decoder: the encoder input, every non-padding position, whatever `positions` says
    assert perturbation_mask(batch, False, "context").squeeze(-1).tolist() == batch["attention_mask"].float().tolist()


# ---------------------------------------------------------------- the deltas inside the step functions


def _check_deltas(tiny: Tiny, model, recorded, s: AdvSettings, stats) -> list[torch.Tensor]:
    clean = model.get_input_embeddings()(tiny.batch["input_ids"]).detach()
    deltas = [embeds - clean for embeds in recorded if embeds is not None]
    expected_calls = {"fgm": 2, "pgd": s.ascent_steps + 1, "freelb": max(1, s.ascent_steps)}[s.method]
    assert len(deltas) == expected_calls, (
        f"{s.method}: expected {expected_calls} forward passes with inputs_embeds, saw {len(deltas)}"
    )
    allowed = ref_mask(tiny.batch, tiny.causal, s.positions).expand_as(clean)
    for delta in deltas:
        assert within(example_norms(delta, s.norm), s.epsilon), (
            f"{s.method}: |delta| {example_norms(delta, s.norm).tolist()} > {s.epsilon}"
        )
        assert torch.all(delta[allowed == 0] == 0), f"{s.method}: delta is nonzero where it must be zero"
    last = deltas[-1]
    assert float(last.abs().sum()) > 0
    # what the loop logs is the perturbation actually used
    assert math.isclose(stats["delta_norm"], float(example_norms(last, s.norm).mean()), rel_tol=1e-3)
    return deltas


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_deltas_inside_the_steps_stay_in_the_ball_and_off_padding_and_labels(tiny, accelerator, recorded, method, norm):
    model = tiny.model()
    s = settings(method, norm=norm)
    stats = AdversarialStep(s)(model, tiny.batch, tiny.causal, tiny.scale, accelerator)
    deltas = _check_deltas(tiny, model, recorded, s, stats)
    if method == "fgm":
        assert float(deltas[0].abs().sum()) == 0  # the first pass is the clean one
        # one full step of size epsilon, for every example
        torch.testing.assert_close(
            example_norms(deltas[1], norm), torch.full((deltas[1].size(0),), s.epsilon), rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_chatgpt_positions_all_perturbs_assistant_tokens(workspace, tokenizer, accelerator, recorded, method):
    tiny = make_tiny(workspace, tokenizer, "chatgpt")
    model = tiny.model()
    s = settings(method, positions="all")
    stats = AdversarialStep(s)(model, tiny.batch, tiny.causal, tiny.scale, accelerator)
    deltas = _check_deltas(tiny, model, recorded, s, stats)
    assistant = (tiny.batch["labels"] != IGNORE_INDEX)[..., None].expand_as(deltas[-1])
    assert float(deltas[-1][assistant].abs().sum()) > 0, "positions=all left the assistant tokens unperturbed"
    context_only = settings(method, positions="context")
    recorded.clear()
    AdversarialStep(context_only)(tiny.model(), tiny.batch, tiny.causal, tiny.scale, accelerator)
    assert (
        float(
            recorded[-1][assistant]
            .sub(model.get_input_embeddings()(tiny.batch["input_ids"]).detach()[assistant])
            .abs()
            .sum()
        )
        == 0
    )


def test_sora_decoder_inputs_are_not_perturbed(workspace, tokenizer, accelerator):
    """Encoder only: the decoder's embeddings are the same in every forward pass of the step."""
    tiny = make_tiny(workspace, tokenizer, "sora")
    model = tiny.model()
    seen: list[torch.Tensor] = []
    hook = model.model.decoder.embed_tokens.register_forward_hook(
        lambda module, args, output: seen.append(output.detach().clone())
    )
    try:
        for method in ("fgm", "pgd", "freelb", "r3f"):
            AdversarialStep(settings(method, epsilon=0.5 if method == "r3f" else DEFAULTS[method]["epsilon"]))(
                model, tiny.batch, False, tiny.scale, accelerator
            )
    finally:
        hook.remove()
    assert len(seen) >= 4
    for output in seen[1:]:
        assert torch.equal(output, seen[0])


# ---------------------------------------------------------------- inputs_embeds and the tied weights


def test_input_embeddings_are_what_the_model_uses(tiny):
    """logits(inputs_embeds=get_input_embeddings()(ids)) == logits(input_ids): adding delta to that
    tensor perturbs exactly the model's own input embeddings."""
    from textgen_cli.objectives import forward_logits

    model = tiny.model()
    batch = tiny.batch
    with torch.no_grad():
        by_ids = forward_logits(model, batch)
        by_embeds = forward_logits(model, batch, model.get_input_embeddings()(batch["input_ids"]))
    torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale_embedding", [False, True])
def test_bart_embed_scale_is_inside_get_input_embeddings(scale_embedding):
    """BART multiplies by embed_scale (sqrt(d_model) when scale_embedding) inside its embedding
    module; get_input_embeddings()(ids) must equal the encoder's own embedding of ids."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=50,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
        scale_embedding=scale_embedding,
        tie_word_embeddings=True,
    )
    model = BartForConditionalGeneration(config).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]])
    mask = (ids != 1).long()
    decoder = torch.tensor([[0, 11, 12], [0, 13, 14]])
    embedded = model.get_input_embeddings()(ids)
    raw = F.embedding(ids, model.get_input_embeddings().weight)
    torch.testing.assert_close(embedded, raw * (math.sqrt(16) if scale_embedding else 1.0))
    torch.testing.assert_close(embedded, model.model.encoder.embed_tokens(ids), rtol=0, atol=0)
    with torch.no_grad():
        by_ids = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        by_embeds = model(inputs_embeds=embedded, attention_mask=mask, decoder_input_ids=decoder).logits
    torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb", "r3f"])
def test_step_leaves_the_tied_embedding_and_head_weights_bit_identical(tiny, accelerator, method):
    model = tiny.model()
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    assert head.data_ptr() == embedding.data_ptr(), "the embedding and the LM head should be tied"
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    s = settings(method, epsilon=0.1 if method == "r3f" else DEFAULTS[method]["epsilon"])
    AdversarialStep(s)(model, tiny.batch, tiny.causal, tiny.scale, accelerator)
    after = model.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed == [], f"{method} changed weights before any optimizer step: {changed}"
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert embedding.grad is not None and float(embedding.grad.abs().sum()) > 0, "the step should compute gradients"


# ---------------------------------------------------------------- the objectives


def test_fgm_adversarial_loss_is_higher_than_clean_and_than_random_noise(tiny, accelerator):
    model = tiny.model()
    s = settings("fgm", epsilon=1.0)
    stats = AdversarialStep(s)(model, tiny.batch, tiny.causal, tiny.scale, accelerator)
    with torch.no_grad():
        clean, _ = token_loss_sum(model, tiny.batch, tiny.causal)
    assert math.isclose(stats["loss_sum"], float(clean), rel_tol=1e-5)
    assert stats["adv_loss_sum"] > stats["loss_sum"], f"FGM did not raise the loss: {stats}"
    # the gradient direction hurts more than a random direction of the same size
    mask = ref_mask(tiny.batch, tiny.causal, "context")
    embeds = model.get_input_embeddings()(tiny.batch["input_ids"]).detach()
    generator = torch.Generator().manual_seed(0)
    random_losses = []
    for _ in range(3):
        noise = torch.randn(embeds.shape, generator=generator) * mask
        noise = noise / torch.linalg.vector_norm(noise.flatten(1), dim=1).view(-1, 1, 1) * s.epsilon
        with torch.no_grad():
            random_losses.append(float(token_loss_sum(model, tiny.batch, tiny.causal, embeds + noise)[0]))
    assert stats["adv_loss_sum"] > max(random_losses), f"FGM {stats['adv_loss_sum']} vs random {random_losses}"


@pytest.mark.parametrize("norm", NORMS)
def test_freelb_accumulates_parameter_gradients_over_its_k_steps(tiny, accelerator, norm):
    model = tiny.model()
    batch, causal, scale = tiny.batch, tiny.causal, tiny.scale
    s = settings(
        "freelb",
        epsilon=0.3 if norm == "l2" else 0.02,
        step_size=0.1 if norm == "l2" else 0.01,
        ascent_steps=3,
        init_mag=0.5 if norm == "l2" else 0.01,
        norm=norm,
    )
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    stats = AdversarialStep(s)(model, batch, causal, scale, accelerator)
    got = param_grads(model)

    # by hand: delta init, K forward/backward passes each adding grad(loss_k / K), K-1 ascent steps
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    mask = ref_mask(batch, causal, s.positions)
    embedding = model.get_input_embeddings()
    delta = ref_project(ref_init(embedding(batch["input_ids"]).shape, mask, s.init_mag, norm), mask, s.epsilon, norm)
    losses = []
    last_only = None
    for t in range(s.ascent_steps):
        delta = delta.detach().requires_grad_(True)
        if t == s.ascent_steps - 1:
            last_only = param_grads(model)
        loss = ref_loss_sum(model, batch, causal, embedding(batch["input_ids"]) + delta)
        (loss * scale / s.ascent_steps).backward()
        losses.append(float(loss.detach()))
        if t < s.ascent_steps - 1:
            delta = ref_project(delta.detach() + s.step_size * ref_unit(delta.grad, mask, norm), mask, s.epsilon, norm)
    expected = param_grads(model)
    assert_same_grads(got, expected, f"freelb ({norm})")
    assert grads_differ(expected, {k: expected[k] - last_only[k] for k in expected}), (
        "the earlier steps contributed nothing"
    )
    assert math.isclose(stats["adv_loss_sum"], sum(losses) / len(losses), rel_tol=1e-5)


def test_freelb_with_one_step_and_no_init_equals_the_clean_gradient(tiny, accelerator):
    from textgen_cli.training.step import clean_step

    model = tiny.model()
    AdversarialStep(settings("freelb", ascent_steps=1, init_mag=0.0))(
        model, tiny.batch, tiny.causal, tiny.scale, accelerator
    )
    free = param_grads(model)
    model.zero_grad(set_to_none=True)
    clean_step(model, tiny.batch, tiny.causal, tiny.scale, accelerator)
    assert_same_grads(free, param_grads(model), "freelb K=1, init 0 vs clean")


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_does_not_accumulate_parameter_gradients_during_the_ascent(tiny, accelerator, norm):
    model = tiny.model()
    batch, causal, scale = tiny.batch, tiny.causal, tiny.scale
    eps, alpha, init = (1.0, 0.3, 0.64) if norm == "l2" else (0.05, 0.02, 0.02)
    s = settings("pgd", epsilon=eps, step_size=alpha, ascent_steps=3, init_mag=init, norm=norm, weight=0.5)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    stats = AdversarialStep(s)(model, batch, causal, scale, accelerator)
    got = param_grads(model)

    # by hand: grad(L_clean) + weight * grad(L_adv(delta_K)); the ascent only moves delta
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    embedding = model.get_input_embeddings()
    clean = ref_loss_sum(model, batch, causal, embedding(batch["input_ids"]))
    (clean * scale).backward()
    mask = ref_mask(batch, causal, s.positions)
    base = embedding(batch["input_ids"]).detach()
    delta = ref_project(ref_init(base.shape, mask, s.init_mag, norm), mask, eps, norm)
    start = float(ref_loss_sum(model, batch, causal, base + delta).detach())
    for _ in range(s.ascent_steps):
        delta = delta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(ref_loss_sum(model, batch, causal, base + delta), delta)
        delta = ref_project(delta.detach() + alpha * ref_unit(grad, mask, norm), mask, eps, norm)
    adv = ref_loss_sum(model, batch, causal, embedding(batch["input_ids"]) + delta)
    (adv * s.weight * scale).backward()
    assert_same_grads(got, param_grads(model), f"pgd ({norm})")
    assert math.isclose(stats["adv_loss_sum"], float(adv.detach()), rel_tol=1e-5)
    assert math.isclose(stats["loss_sum"], float(clean.detach()), rel_tol=1e-5)
    assert float(adv.detach()) > start, "the ascent should raise the loss above that at the initial delta"


def test_r3f_with_zero_noise_has_zero_kl_and_the_clean_gradient(tiny, accelerator):
    from textgen_cli.training.step import clean_step

    model = tiny.model()
    stats = AdversarialStep(settings("r3f", epsilon=0.0))(model, tiny.batch, tiny.causal, tiny.scale, accelerator)
    assert abs(stats["adv_loss_sum"]) < 1e-9
    assert stats["delta_norm"] == 0
    r3f = param_grads(model)
    model.zero_grad(set_to_none=True)
    clean = clean_step(model, tiny.batch, tiny.causal, tiny.scale, accelerator)
    assert math.isclose(stats["loss_sum"], clean["loss_sum"], rel_tol=1e-5)
    assert_same_grads(r3f, param_grads(model), "r3f eps=0 vs clean")
    # with noise the divergence is positive and the gradient changes
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    noisy = AdversarialStep(settings("r3f", epsilon=0.05, weight=10.0))(
        model, tiny.batch, tiny.causal, tiny.scale, accelerator
    )
    assert noisy["adv_loss_sum"] > 0
    assert grads_differ(param_grads(model), r3f)


# ---------------------------------------------------------------- text perturbations

# Words of 5+ letters, all letters distinct (every character edit is visible), among short words.
TEXT = (
    "the quick brown foxes jumped over a lazy dog while four night owls watched from dark branches "
    "and blue wings glided under bright cold stars in the misty dawn"
)
ELIGIBLE = [w for w in TEXT.split() if len(w) >= 4]
RATES = (0.1, 0.25, 0.5, 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_perturb_is_deterministic_per_seed_and_varies_across_seeds(kind):
    first = perturb(TEXT, kind, 0.3, seed=1)
    assert first == perturb(TEXT, kind, 0.3, seed=1)
    perturb("something else entirely different", kind, 0.3, seed=1)  # order of calls does not matter
    assert first == perturb(TEXT, kind, 0.3, seed=1)
    assert first != TEXT
    assert len({perturb(TEXT, kind, 0.3, seed=s) for s in range(6)}) > 1


def test_perturb_is_the_same_in_another_process():
    code = "from textgen_cli.data.perturb import KINDS, perturb; import json, sys; print(json.dumps([perturb(sys.argv[1], k, 0.3, 4) for k in KINDS]))"
    ours = [perturb(TEXT, kind, 0.3, 4) for kind in KINDS]
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", code, TEXT], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == ours


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", ["char", *CHAR_KINDS])
def test_char_kinds_change_exactly_the_rounded_fraction_of_eligible_words(kind, rate):
    for seed in range(3):
        out = perturb(TEXT, kind, rate, seed)
        before, after = TEXT.split(), out.split()
        assert len(after) == len(before)
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(changed) == round(rate * len(ELIGIBLE)), f"{kind} {rate} seed {seed}: {changed}"
        for a, b in changed:
            assert len(a) >= 4, f"short word '{a}' changed to '{b}'"
            assert (a[0], a[-1]) == (b[0], b[-1]), f"{kind}: '{a}' -> '{b}' moved its first or last letter"
            if kind in ("char_swap", "char_shuffle", "keyboard"):
                assert len(b) == len(a)
            if kind == "char_swap" or kind == "char_shuffle":
                assert sorted(a) == sorted(b)
            if kind == "char_delete":
                assert len(b) == len(a) - 1
            if kind == "char_insert":
                assert len(b) == len(a) + 1


@pytest.mark.parametrize("kind", CHAR_KINDS)
def test_each_char_edit_changes_the_word_it_is_applied_to(kind):
    """A chosen word whose letters are all different must come out different, or fewer words than
    round(rate * eligible) would change."""
    import random

    from textgen_cli.data.perturb import perturb_word

    for word in ("dark", "brown", "jumped"):
        same = [seed for seed in range(200) if perturb_word(word, kind, random.Random(seed)) == word]
        assert not same, f"{kind} left '{word}' unchanged for seeds {same[:10]}"


def test_char_kinds_leave_short_words_and_punctuated_edges_alone():
    text = "an old cat sat on the mat, by a red box. Hello! (quietly)"
    for kind in ("char", *CHAR_KINDS):
        out = perturb(text, kind, 1.0, 0)
        for a, b in zip(text.split(), out.split()):
            if len(a) < 4 or not (a[0].isalpha() and a[-1].isalpha()):
                assert a == b, f"{kind}: '{a}' -> '{b}'"


@pytest.mark.parametrize("rate", RATES)
def test_word_kinds_change_the_rounded_number_of_words(rate):
    words = TEXT.split()
    n = len(words)
    count = round(rate * n)
    for seed in range(3):
        dropped = perturb(TEXT, "word_drop", rate, seed).split()
        assert len(dropped) == (n - count if count < n else 1)
        remaining = iter(words)
        assert all(word in remaining for word in dropped), "word_drop must keep the order of the words it keeps"
        duplicated = perturb(TEXT, "word_dup", rate, seed).split()
        assert len(duplicated) == n + count
        shuffled = perturb(TEXT, "word_shuffle", rate, seed).split()
        assert sorted(shuffled) == sorted(words) and shuffled != words


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_word_shuffle_is_local(rate):
    """A local shuffle (k = SHUFFLE_WINDOW): no word ends up more than k positions from where it was."""
    from textgen_cli.data.perturb import SHUFFLE_WINDOW

    words = [f"w{i}" for i in range(40)]
    for seed in range(5):
        out = perturb(" ".join(words), "word_shuffle", rate, seed).split()
        moves = {word: abs(out.index(word) - i) for i, word in enumerate(words)}
        far = {word: move for word, move in moves.items() if move > SHUFFLE_WINDOW}
        assert not far, f"seed {seed}: words moved beyond the window of {SHUFFLE_WINDOW}: {far}"


@pytest.mark.parametrize("kind", KINDS)
def test_rate_zero_changes_nothing(kind):
    assert perturb(TEXT, kind, 0.0, 3) == TEXT


def test_perturb_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown"):
        perturb(TEXT, "typo", 0.1)
    with pytest.raises(ValueError, match="rate"):
        perturb(TEXT, "char", 1.5)


def test_parse_spec():
    assert parse_spec("char:0.1") == ("char", 0.1)
    assert parse_spec("word_drop:0.2") == ("word_drop", 0.2)
    for bad in ("char", "char:", "bogus:0.1", "char:abc", "char:0", "char:-0.1", "char:1.5", ":0.1", "0.1"):
        with pytest.raises(ValueError):
            parse_spec(bad)


# ---------------------------------------------------------------- augmentation


def _dialogues(n: int = 20):
    from textgen_cli.data.readers import Dialogue

    return [
        Dialogue(
            id=f"d{i}",
            messages=[
                {"role": "system", "content": "Answer in modern English please"},
                {"role": "user", "content": f"record {i}: " + TEXT},
                {"role": "assistant", "content": f"reply number {i} stays exactly as written"},
                {"role": "user", "content": "another question about brown foxes jumping"},
                {"role": "assistant", "content": "second answer also unchanged"},
            ],
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0, 1.5])
def test_augment_adds_perturbed_copies_with_clean_targets(rate):
    from textgen_cli.training.adv_train import augment

    dialogues = _dialogues()
    by_id = {d.id: d for d in dialogues}
    kinds = ["char", "word_drop"]
    copies = augment(dialogues, rate, kinds, 0.3, seed=7)
    assert len(copies) == round(rate * len(dialogues))
    assert [c.id for c in copies] == [c.id for c in augment(dialogues, rate, kinds, 0.3, seed=7)]
    assert [c.messages for c in copies] == [c.messages for c in augment(dialogues, rate, kinds, 0.3, seed=7)]
    if rate <= 1:
        assert len({c.id.split("+")[0] for c in copies}) == len(copies), "without replacement while rate <= 1"
    for n, copy in enumerate(copies):
        source_id, kind = copy.id.split("+")
        assert kind == kinds[n % len(kinds)]
        source = by_id[source_id]
        assert len(copy.messages) == len(source.messages)
        assert [m["role"] for m in copy.messages] == [m["role"] for m in source.messages]
        for new, old in zip(copy.messages, source.messages):
            if old["role"] == "assistant":
                assert new == old
        assert any(new != old for new, old in zip(copy.messages, source.messages)), "the source was not perturbed"
    assert dialogues == _dialogues(), "augment must not modify its input"
    assert augment(dialogues, 0.0, kinds, 0.3, seed=7) == []
    other = augment(dialogues, rate, kinds, 0.3, seed=8)
    assert [c.messages for c in other] != [c.messages for c in copies]


# ---------------------------------------------------------------- the stage end to end

CLI_METHOD = {
    "chatgpt": ("pgd", ["adv_train.positions=all"]),
    "sora": ("freelb", ["adv_train.norm=inf", "adv_train.epsilon=0.05"]),
}


@pytest.mark.slow
def test_adv_train_command_end_to_end(tiny):
    method, extra = CLI_METHOD[tiny.family]
    args = [
        "adv-train", "--recipe", f"recipe/tiny-{tiny.family}.yaml", "--json",
        f"run.root={tiny.root}", f"run.name=adv-{tiny.family}",
        "stages=[pretrain,finetune,adv-train]", "adv_train.steps=4", f"adv_train.method={method}",
        "adv_train.augment_rate=0.1", "train.log_every=2", *extra,
    ]  # fmt: skip
    result = textgen(args, cwd=tiny.root.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    stage_dir = tiny.root / f"adv-{tiny.family}" / "adv-train"
    assert json.loads((stage_dir / "summary.json").read_text()) == summary
    assert summary["stage"] == "adv-train"
    assert Path(summary["init_from"]) == tiny.final
    assert summary["augmented_examples"] == round(0.1 * tiny.n_train_records)
    expected = {**DEFAULTS[method], "method": method, "norm": "l2", "weight": 1.0, "positions": "context"}
    for item in extra:
        key, value = item.split("=")
        key = key.split(".")[1]
        expected[key] = float(value) if key == "epsilon" else value
    assert summary["adversarial"] == expected
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in train_lines] == [2, 4]
    for line in train_lines:
        assert {"loss", "adv_loss", "delta_norm"} <= line.keys()
        assert math.isfinite(line["loss"]) and line["adv_loss"] > 0
        assert 0 < line["delta_norm"] <= expected["epsilon"] * (1 + 1e-5)
    assert (stage_dir / "final").is_dir()


@pytest.mark.slow
def test_adv_train_without_a_finetune_output_exits_2(workspace):
    result = textgen(
        [
            "adv-train",
            "--recipe",
            "recipe/tiny-chatgpt.yaml",
            f"run.root={workspace / 'adv-runs'}",
            "run.name=never-finetuned",
        ],
        cwd=workspace,
    )
    assert result.returncode == 2, result.stderr
    assert "finetune" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_adv_train_unknown_method_exits_2_with_the_choices(workspace):
    result = textgen(["adv-train", "--recipe", "recipe/tiny-sora.yaml", "adv_train.method=fgsm"], cwd=workspace)
    assert result.returncode == 2, result.stderr
    assert "adv_train.method" in result.stderr
    for choice in METHODS:
        assert choice in result.stderr
    assert "Traceback" not in result.stderr

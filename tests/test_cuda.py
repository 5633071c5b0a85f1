"""CUDA checks, run by scripts/gpu_check.sh on a machine with a GPU (`pytest -m cuda`).
`make test` deselects them (see pyproject.toml): nothing in the suite needs a GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _tiny(family: str, tokenizer):
    from textgen_cli.core.schema import ModelSection
    from textgen_cli.models import role_for

    return (
        role_for(family)
        .build(ModelSection(family=family, layers=2, hidden=64, heads=4, ffn=128, context=64), tokenizer)
        .cuda()
    )


@pytest.mark.parametrize("family", ["chatgpt", "sora"])
def test_bf16_training_step_lowers_the_loss_on_cuda(family, tokenizer):
    from accelerate import Accelerator

    from textgen_cli.data.packing import pack_blocks
    from textgen_cli.models import role_for
    from textgen_cli.objectives import CausalBlocks, InfillingBlocks, encode_texts, token_loss_sum

    accelerator = Accelerator(mixed_precision="bf16")
    model = _tiny(family, tokenizer)
    ids = encode_texts(tokenizer, ["Call me Ishmael. Some years ago, never mind how long precisely."] * 64)
    blocks, _ = pack_blocks(ids, 62 if family == "sora" else 64, tokenizer.eos_token_id)
    data = (
        InfillingBlocks(
            blocks,
            0.3,
            3.0,
            0,
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            tokenizer.mask_token_id,
        )
        if family == "sora"
        else CausalBlocks(blocks)
    )
    batch = {k: v.cuda() for k, v in data.collate(list(range(8)), 0).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    losses = []
    for _ in range(20):
        with accelerator.autocast():
            loss, n = token_loss_sum(model, batch, role_for(family).shifted_labels)
        accelerator.backward(loss / n)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss) / n)
    assert losses[-1] < losses[0]


def test_greedy_generation_on_cuda_matches_cpu(tokenizer):
    from textgen_cli.core.schema import GenerateSection
    from textgen_cli.generation.decoding import generate_batch

    model = _tiny("chatgpt", tokenizer).eval()
    settings = GenerateSection(max_new_tokens=8)
    on_gpu = generate_batch(model, tokenizer, ["Call me", "Some years ago"], settings, "chatgpt", fmt="text")
    on_cpu = generate_batch(model.cpu(), tokenizer, ["Call me", "Some years ago"], settings, "chatgpt", fmt="text")
    assert [r.output_ids for r in on_gpu] == [r.output_ids for r in on_cpu]

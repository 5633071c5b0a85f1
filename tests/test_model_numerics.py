"""Speed changes that must not change what the model computes."""

from __future__ import annotations

import torch

from textgen_cli.core.schema import ModelSection
from textgen_cli.models import role_for


def test_chatgpt_fused_gelu_matches_gpt2_gelu_new(tokenizer):
    """`chatgpt` uses `gelu_pytorch_tanh` (one kernel) for speed; the logits and the gradients must
    be those of GPT-2's own `gelu_new` (the same tanh formula in separate ops) on the same weights."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    section = ModelSection(family="chatgpt", layers=2, hidden=32, heads=2, ffn=64, context=32, dropout=0.0)
    fused = role_for("chatgpt").build(section, tokenizer).eval()
    with torch.no_grad():  # GPT-2's 0.02 init keeps pre-activations near 0, where any GELU is close to any other
        for block in fused.transformer.h:
            block.mlp.c_fc.weight.normal_(0.0, 0.5)
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    unfused_config = fused.config.__class__.from_dict({**fused.config.to_dict(), "activation_function": "gelu_new"})
    unfused = GPT2LMHeadModel(unfused_config).eval()
    unfused.load_state_dict(fused.state_dict())
    ids = torch.randint(0, len(tokenizer), (3, 32), generator=torch.Generator().manual_seed(1))

    results = []
    for model in (fused, unfused):
        model.zero_grad()
        output = model(input_ids=ids, labels=ids)
        output.loss.backward()
        results.append((output.logits.detach(), model.transformer.h[0].mlp.c_fc.weight.grad.clone()))

    (fused_logits, fused_grad), (unfused_logits, unfused_grad) = results
    assert not torch.equal(fused_logits, torch.zeros_like(fused_logits))
    torch.testing.assert_close(fused_logits, unfused_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, unfused_grad, rtol=1e-4, atol=1e-6)


def test_training_uses_the_fused_adamw_kernel_on_cpu():
    """torch's default AdamW on CPU is a per-parameter Python loop; the loop asks for the fused kernel."""
    from textgen_cli.training.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, weight_decay=0.01, lr=1e-3, device_type="cpu")
    assert [group["fused"] for group in optimizer.param_groups] == [True, True]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    model(torch.randn(2, 4)).sum().backward()
    before = model[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)


def test_the_training_loss_equals_the_models_own_loss_with_and_without_unlabelled_positions(tokenizer):
    """The decoder-only training loss sends only the labelled positions through the output layer: with
    every position labelled (pretraining blocks) and with assistant-only labels, it gives the loss and
    gradients of transformers' own `labels=` loss (a mean, so times the label count)."""
    from textgen_cli.objectives import IGNORE_INDEX, token_loss_sum

    torch.manual_seed(0)
    section = ModelSection(family="chatgpt", layers=2, hidden=32, heads=2, ffn=64, context=32, dropout=0.0)
    model = role_for("chatgpt").build(section, tokenizer).train()
    ids = torch.randint(10, len(tokenizer), (3, 20))
    assistant_only = ids.clone()
    assistant_only[:, :12] = IGNORE_INDEX
    for labels in (ids.clone(), assistant_only):
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        model.zero_grad()
        ours, n_tokens = token_loss_sum(model, batch, causal=True)
        ours.backward()
        our_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        theirs = model(**batch).loss * (labels[:, 1:] != IGNORE_INDEX).sum()
        theirs.backward()
        assert n_tokens == int((labels[:, 1:] != IGNORE_INDEX).sum())
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
        for mine, reference in zip(our_grads, (p.grad for p in model.parameters())):
            torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)


def test_training_keeps_freed_memory_for_the_next_step():
    """A training step frees about as much as it allocates. By default glibc serves a large block with
    fresh mmap pages and hands it back to the kernel when freed, so the next step pays page faults to
    get it again; after `keep_freed_memory` the block comes from the heap and stays there once freed.
    Read from glibc's own accounting (mallinfo2) in fresh processes, one a plain Python, one with the
    setting."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        import pytest

        pytest.skip("a glibc setting; other platforms keep their allocator's behaviour")
    probe = """
import ctypes, sys, torch
from textgen_cli.training.memory import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
block = torch.ones(5 * 2**20)  # 20 MB, like a step's logits
held = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(applied, held.hblkhd, freed.arena)
"""
    mb = 2**20
    out = {}
    for mode in ("default", "keep"):
        result = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True)
        applied, mmapped_while_held, heap_after_free = result.stdout.split()
        out[mode] = (applied, int(mmapped_while_held), int(heap_after_free))
    assert out["default"][0] == "None" and out["keep"][0] == "True"
    assert out["default"][1] >= 20 * mb  # glibc's default: the block is its own mmap, unmapped when freed
    assert out["keep"][1] < 20 * mb  # kept: the block comes from the heap...
    assert out["keep"][2] >= 20 * mb  # ...and the heap keeps it after the free

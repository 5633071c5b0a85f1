"""Speed changes that must not change what the model computes."""

from __future__ import annotations

import torch

from textgen_cli.models import FAMILIES
from textgen_cli.schema import ModelSection


def test_chatgpt_fused_gelu_matches_gpt2_gelu_new(tokenizer):
    """`chatgpt` uses `gelu_pytorch_tanh` (one kernel) for speed; the logits and the gradients must
    be those of GPT-2's own `gelu_new` (the same tanh formula in separate ops) on the same weights."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    section = ModelSection(family="chatgpt", layers=2, hidden=32, heads=2, ffn=64, context=32, dropout=0.0)
    fused = FAMILIES["chatgpt"].build(section, tokenizer).eval()
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
    from textgen_cli.train import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, weight_decay=0.01, lr=1e-3, device_type="cpu")
    assert [group["fused"] for group in optimizer.param_groups] == [True, True]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    model(torch.randn(2, 4)).sum().backward()
    before = model[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)

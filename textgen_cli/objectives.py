"""Training objectives: token ids in, batches of tensors out.

- `chatgpt` pretraining: causal LM over packed blocks (documents joined by eos, no padding).
- `prefix-lm` pretraining: T5's prefix LM; each packed block is cut at a random point, the part
  before it read both ways, the rest predicted.
- `sora` pretraining: BART text infilling; spans with Poisson lengths cover `mask_ratio` of the
  tokens, each span becomes one <mask>, and the decoder reconstructs the original block.
- finetuning: chat sequences with loss on assistant tokens only (eos included) for `chatgpt`, one
  reply per sequence with its prompt read both ways for `prefix-lm`; source -> target for `sora`.

Every batch is a pure function of (example indices, epoch, seed), which keeps runs reproducible and
lets a resumed run see exactly the batches the interrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from textgen_cli.core.errors import UserError
from textgen_cli.data.tokenizer import END_OF_TURN, ROLE_TOKENS

if TYPE_CHECKING:
    import torch


IGNORE_INDEX = -100


class Examples(Protocol):
    def __len__(self) -> int: ...

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]: ...


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Batch-encode in the Rust tokenizer; no special tokens (the objectives add their own)."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def infilling_mask(length: int, mask_ratio: float, poisson_lambda: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask over `length` tokens: spans with Poisson(lambda) lengths (at least 1) until
    exactly round(mask_ratio * length) tokens are covered."""
    target = int(round(mask_ratio * length))
    masked = np.zeros(length, dtype=bool)
    covered = 0
    while covered < target:
        span = min(max(1, int(rng.poisson(poisson_lambda))), target - covered)
        start = int(rng.integers(0, length - span + 1))
        masked[start : start + span] = True
        covered = int(masked.sum())
    return masked


def collapse_spans(ids: np.ndarray, masked: np.ndarray, mask_id: int) -> list[int]:
    """Replace every run of masked tokens by a single <mask> (BART text infilling)."""
    out: list[int] = []
    previous = False
    for token, is_masked in zip(ids.tolist(), masked.tolist()):
        if is_masked:
            if not previous:
                out.append(mask_id)
        else:
            out.append(token)
        previous = is_masked
    return out


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    import torch

    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _tensor(values: Sequence[int]) -> torch.Tensor:
    import torch

    return torch.as_tensor(list(values), dtype=torch.long)


def reply_prefix_length(labels: Sequence[int]) -> int:
    """The prefix of a one-reply sequence: every token before the reply's start token (the token
    just before the first label), so that decoding can read the prefix once and then extend causally
    from the start token, as an encoder-decoder's decoder starts from its start token."""
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return max(first - 1, 0)


def prefix_lm_mask(attention_mask: torch.Tensor, prefix_lengths: torch.Tensor, dtype) -> torch.Tensor:
    """The 4-D additive attention mask (batch, 1, query, key) of a prefix LM: a key is visible to a
    query when it is a real token and comes before it (causal) or lies in the row's prefix (both
    ways). Prefix positions are counted over the real tokens, so left and right padding both work.
    transformers' decoder-only models take such a mask as given (0: attend, dtype min: do not)."""
    import torch

    real = attention_mask.bool()
    position = attention_mask.long().cumsum(-1) - 1  # index among the row's real tokens
    in_prefix = (position < prefix_lengths[:, None]) & real
    width = attention_mask.size(-1)
    causal = torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
    visible = (causal[None] | in_prefix[:, None, :]) & real[:, None, :]
    mask = torch.zeros(visible.shape, dtype=dtype, device=real.device)
    return mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def model_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes from a batch: all but the labels, and a prefix LM's
    `prefix_lengths` turned into its attention mask."""
    inputs = {key: value for key, value in batch.items() if key not in ("labels", "prefix_lengths")}
    if "prefix_lengths" in batch:
        dtype = next(model.parameters()).dtype  # a DDP wrapper has no .dtype
        inputs["attention_mask"] = prefix_lm_mask(batch["attention_mask"], batch["prefix_lengths"], dtype)
    return inputs


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs: the labels shifted one step right, starting from `start_id`."""
    inputs = labels.new_full(labels.shape, pad_id)
    inputs[:, 1:] = labels[:, :-1]
    inputs[:, 0] = start_id
    return inputs.masked_fill(inputs == IGNORE_INDEX, pad_id)


@dataclass
class CausalBlocks:
    """`chatgpt` pretraining: packed blocks, every token a label."""

    blocks: np.ndarray

    def __len__(self) -> int:
        return len(self.blocks)

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        import torch

        ids = torch.from_numpy(np.asarray(self.blocks[list(indices)], dtype=np.int64))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@dataclass
class PrefixBlocks:
    """`prefix-lm` pretraining (T5's prefix LM objective): each packed block is cut at a point drawn
    uniformly from its inner positions, seeded by (seed, epoch, index); the part before the cut is the
    prefix, read both ways, and the part after it is predicted causally (its loss only)."""

    blocks: np.ndarray
    seed: int

    def __len__(self) -> int:
        return len(self.blocks)

    def split(self, index: int, epoch: int) -> int:
        return int(np.random.default_rng([self.seed, epoch, index]).integers(1, len(self.blocks[index]) - 1))

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        import torch

        ids = torch.from_numpy(np.asarray(self.blocks[list(indices)], dtype=np.int64))
        splits = [self.split(i, epoch) for i in indices]
        labels = ids.clone()
        for row, cut in enumerate(splits):
            labels[row, : cut + 1] = IGNORE_INDEX  # position `cut` holds the first predicting token
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
            "prefix_lengths": _tensor(splits),
        }


@dataclass
class InfillingBlocks:
    """`sora` pretraining: noised block -> original block. Noise is seeded by (seed, epoch, index)."""

    blocks: np.ndarray
    mask_ratio: float
    poisson_lambda: float
    seed: int
    bos_id: int
    eos_id: int
    pad_id: int
    mask_id: int

    def __len__(self) -> int:
        return len(self.blocks)

    def example(self, index: int, epoch: int) -> tuple[list[int], list[int]]:
        rng = np.random.default_rng([self.seed, epoch, index])
        block = np.asarray(self.blocks[index], dtype=np.int64)
        masked = infilling_mask(len(block), self.mask_ratio, self.poisson_lambda, rng)
        source = [self.bos_id, *collapse_spans(block, masked, self.mask_id), self.eos_id]
        return source, [*block.tolist(), self.eos_id]

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        pairs = [self.example(i, epoch) for i in indices]
        return seq2seq_batch(pairs, self.pad_id, self.bos_id)


def seq2seq_batch(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, start_id: int) -> dict[str, torch.Tensor]:
    input_ids = _pad([source for source, _ in pairs], pad_id)
    labels = _pad([target for _, target in pairs], IGNORE_INDEX)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != pad_id).long(),
        "decoder_input_ids": shift_right(labels, start_id, pad_id),
        "labels": labels,
    }


@dataclass
class Seq2SeqExamples:
    """`sora` finetuning: (source ids, target ids + eos) pairs."""

    pairs: list[tuple[list[int], list[int]]]
    pad_id: int
    bos_id: int

    def __len__(self) -> int:
        return len(self.pairs)

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        return seq2seq_batch([self.pairs[i] for i in indices], self.pad_id, self.bos_id)

    def lengths(self) -> list[int]:
        return [len(source) + len(target) for source, target in self.pairs]


@dataclass
class ChatExamples:
    """`chatgpt` finetuning: chat-template ids, labels only on assistant tokens (eos included).

    With `prefix_lm` (the `prefix-lm` family) each sequence holds one reply, and its batches also carry
    `prefix_lengths`: the tokens before the reply's start token (the assistant tag), which attend to
    each other both ways (`model_inputs`)."""

    sequences: list[tuple[list[int], list[int]]]
    pad_id: int
    prefix_lm: bool = False

    def __len__(self) -> int:
        return len(self.sequences)

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        chosen = [self.sequences[i] for i in indices]
        input_ids = _pad([ids for ids, _ in chosen], self.pad_id)
        attention_mask = _pad([[1] * len(ids) for ids, _ in chosen], 0)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": _pad([labels for _, labels in chosen], IGNORE_INDEX),
        }
        if self.prefix_lm:
            batch["prefix_lengths"] = _tensor([reply_prefix_length(labels) for _, labels in chosen])
        return batch

    def lengths(self) -> list[int]:
        return [len(ids) for ids, _ in self.sequences]


@dataclass
class TruncationCount:
    """How many examples were cut to fit the context (reported once, as a warning)."""

    truncated: int = 0
    dropped: int = 0
    ids: list[str] = field(default_factory=list)


class ChatEncoder:
    """Builds chat ids turn by turn: the same ids `tokenizer.apply_chat_template` gives (tested)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self.role = {role: tokenizer.convert_tokens_to_ids(token) for role, token in ROLE_TOKENS.items()}

    def turn(self, message: dict[str, str], content_ids: list[int]) -> tuple[list[int], list[int]]:
        if message["role"] == "assistant":
            ids = [self.role["assistant"], *content_ids, self.eos]
            return ids, [IGNORE_INDEX, *content_ids, self.eos]
        ids = [self.role[message["role"]], *content_ids, self.end]
        return ids, [IGNORE_INDEX] * len(ids)

    def encode(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        contents = encode_texts(self.tokenizer, [m["content"] for m in messages])
        ids, labels = [self.bos], [IGNORE_INDEX]
        for message, content_ids in zip(messages, contents):
            turn_ids, turn_labels = self.turn(message, content_ids)
            ids += turn_ids
            labels += turn_labels
        if add_generation_prompt:
            ids.append(self.role["assistant"])
            labels.append(IGNORE_INDEX)
        return ids, labels

    def encode_history(self, messages: list[dict[str, str]]) -> list[int]:
        """A `sora` source: the role-tagged history between bos and eos."""
        ids, _ = self.encode(messages)
        return [*ids, self.eos]


def fit_chat(
    encoder: ChatEncoder,
    example_id: str,
    messages: list[dict[str, str]],
    context: int,
    policy: str,
    count: TruncationCount,
) -> tuple[list[int], list[int]] | None:
    """Encode a chat within `context` tokens: drop the oldest turns first, then cut the tail."""
    ids, labels = encoder.encode(messages)
    if len(ids) <= context:
        return ids, labels
    if policy == "error":
        raise UserError(
            f"example '{example_id}' is {len(ids)} tokens, longer than model.context={context} (data.too_long=error)"
        )
    turns = list(messages)
    system = [turns.pop(0)] if turns and turns[0]["role"] == "system" else []
    # Keep at least the last user -> assistant exchange when dropping whole turns.
    while len(ids) > context and sum(t["role"] == "assistant" for t in turns[1:]) >= 1 and len(turns) > 2:
        turns.pop(0)
        ids, labels = encoder.encode(system + turns)
    ids, labels = ids[:context], labels[:context]
    count.truncated += 1
    if all(label == IGNORE_INDEX for label in labels):
        count.dropped += 1
        return None
    return ids, labels


def fit_seq2seq(
    source: list[int],
    target: list[int],
    eos_id: int,
    context: int,
    keep: str,
    example_id: str,
    policy: str,
    count: TruncationCount,
) -> tuple[list[int], list[int]]:
    """Fit a (source, target) pair in `context`: keep the newest history (keep='end') or the start."""
    if len(source) <= context and len(target) <= context:
        return source, target
    if policy == "error":
        raise UserError(f"example '{example_id}' is longer than model.context={context} (data.too_long=error)")
    count.truncated += 1
    if len(source) > context:
        # keep bos, then the most recent tokens for dialogue histories; the beginning for pairs
        source = [source[0], *source[-(context - 1) :]] if keep == "end" else [*source[: context - 1], source[-1]]
    if len(target) > context:
        target = [*target[: context - 1], eos_id]
    return source, target


def forward_logits(model, batch: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Logits for a batch; with `inputs_embeds` the (encoder) input ids are replaced by embeddings.
    No KV cache: a loss needs none, and building one costs time (and torch.compile recompiles)."""
    inputs = model_inputs(model, batch)
    inputs["use_cache"] = False
    if inputs_embeds is not None:
        del inputs["input_ids"]
        inputs["inputs_embeds"] = inputs_embeds
    return model(**inputs).logits


def aligned(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the labels they predict: shifted by one for decoder-only models."""
    return (logits[:, :-1], labels[:, 1:]) if causal else (logits, labels)


def token_loss_sum(
    model, batch: dict[str, torch.Tensor], causal: bool, inputs_embeds: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over label tokens and their count.

    Summing (instead of the model's per-batch mean) lets gradient accumulation and validation weigh
    every token equally, however the tokens are spread over batches.
    """
    import torch.nn.functional as F

    if causal and _separable(model):
        return _label_positions_loss(model, batch, inputs_embeds)
    logits, labels = aligned(forward_logits(model, batch, inputs_embeds), batch["labels"], causal)
    n_tokens = int((labels != IGNORE_INDEX).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, n_tokens


def _separable(model) -> bool:
    """A plain (unwrapped) transformers LM whose body and output layer can be called apart. A DDP
    wrapper is not: its forward must run for gradients to be synchronised; nor is an FSDP-sharded
    model: its forward gathers the parameters that the output layer uses."""
    # not fsdp.is_sharded: fsdp imports the model code, which imports this module
    from torch.distributed.fsdp import FSDPModule

    return (
        getattr(model, "base_model", model) is not model
        and model.get_output_embeddings() is not None
        and not isinstance(model, FSDPModule)
    )


def _label_positions_loss(
    model, batch: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Decoder-only loss that sends only the positions with a label through the output layer:
    with assistant-only labels most positions have none, and the vocabulary projection and its
    softmax are the most expensive part of a small model's step."""
    import torch.nn.functional as F

    inputs = model_inputs(model, batch)
    if inputs_embeds is not None:
        del inputs["input_ids"]
        inputs["inputs_embeds"] = inputs_embeds
    hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())


def row_loss_sums(model, batch: dict[str, torch.Tensor], causal: bool) -> torch.Tensor:
    """Summed cross-entropy over each row's label tokens: what `token_loss_sum` adds up, by row (the
    same output-layer shortcut for decoder-only models)."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    if causal and _separable(model):
        hidden = model.base_model(**model_inputs(model, batch), use_cache=False).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = model.get_output_embeddings()(hidden[keep])
    else:
        all_logits, targets = aligned(forward_logits(model, batch), labels, causal)
        keep = targets != IGNORE_INDEX
        logits = all_logits[keep]
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    return torch.zeros(labels.size(0), dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)

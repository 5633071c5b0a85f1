"""Objectives: text infilling, chat truncation, batches, and the epoch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from textgen_cli.core.errors import UserError
from textgen_cli.data.packing import pack_blocks
from textgen_cli.objectives import (
    IGNORE_INDEX,
    ChatEncoder,
    ChatExamples,
    InfillingBlocks,
    TruncationCount,
    collapse_spans,
    fit_chat,
    infilling_mask,
    seq2seq_batch,
)
from textgen_cli.training.sampler import EpochSampler


def n_runs(mask: np.ndarray) -> int:
    """Contiguous runs of True."""
    return int(mask[0]) + int(np.sum(mask[1:] & ~mask[:-1])) if len(mask) else 0


# ------------------------------------------------------------------ infilling


@pytest.mark.parametrize("length", [1, 2, 7, 10, 33, 126, 1000])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.9])
def test_infilling_masks_exactly_round_ratio_n(length, ratio):
    for seed in range(20):
        mask = infilling_mask(length, ratio, 3.0, np.random.default_rng(seed))
        assert mask.dtype == bool and mask.shape == (length,)
        assert int(mask.sum()) == round(ratio * length)


def test_infilling_span_count_is_consistent_with_poisson_lengths():
    n, ratio = 1000, 0.3
    means = {}
    for lam in (1.0, 3.0, 6.0):
        means[lam] = np.mean(
            [n_runs(infilling_mask(n, ratio, lam, np.random.default_rng(seed))) for seed in range(100)]
        )
    # 300 masked tokens in spans of mean max(1, Poisson(3)) ~ 3.05 tokens: about 98 spans before adjacent
    # spans merge, ~75-80 after. A loose bound catches a wrong distribution (e.g. all length-1 or one big span).
    assert 55 <= means[3.0] <= 100, means
    assert means[1.0] > means[3.0] > means[6.0], means


def test_infilling_is_a_function_of_the_rng():
    a = infilling_mask(200, 0.3, 3.0, np.random.default_rng([1, 2, 3]))
    b = infilling_mask(200, 0.3, 3.0, np.random.default_rng([1, 2, 3]))
    c = infilling_mask(200, 0.3, 3.0, np.random.default_rng([1, 2, 4]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_collapse_spans():
    ids = np.array([10, 11, 12, 13, 14, 15])
    mask = np.array([False, True, True, False, True, False])
    assert collapse_spans(ids, mask, 4) == [10, 4, 13, 4, 15]
    assert collapse_spans(ids, np.ones(6, bool), 4) == [4]


BOS, EOS, PAD, MASK = 1, 2, 0, 4


@pytest.fixture
def blocks():
    rng = np.random.default_rng(0)
    return rng.integers(10, 400, size=(6, 30)).astype(np.int64)


def make_infilling(blocks, seed=5):
    return InfillingBlocks(blocks, 0.3, 3.0, seed, bos_id=BOS, eos_id=EOS, pad_id=PAD, mask_id=MASK)


def test_infilling_example(blocks):
    data = make_infilling(blocks)
    for index in range(len(blocks)):
        source, labels = data.example(index, epoch=0)
        assert labels == [*blocks[index].tolist(), EOS]
        assert source[0] == BOS and source[-1] == EOS
        assert MASK in source
        body = source[1:-1]
        n_masks = body.count(MASK)
        kept = [t for t in body if t != MASK]
        # the unmasked tokens are the block minus exactly round(0.3 * 30) = 9 masked tokens, in order
        assert len(kept) == 30 - 9
        it = iter(blocks[index].tolist())
        assert all(any(t == u for u in it) for t in kept)
        assert len(body) == len(kept) + n_masks
        assert not any(body[i] == body[i + 1] == MASK for i in range(len(body) - 1))  # one <mask> per span


def test_infilling_example_is_deterministic_per_seed_epoch_index(blocks):
    a, b = make_infilling(blocks), make_infilling(blocks)
    assert a.example(3, epoch=1) == b.example(3, epoch=1)
    assert a.example(3, epoch=1) == a.example(3, epoch=1)
    assert a.example(3, epoch=1)[0] != a.example(3, epoch=2)[0]
    assert a.example(3, epoch=1)[0] != make_infilling(blocks, seed=6).example(3, epoch=1)[0]
    # the label never changes: only the noise does
    assert a.example(3, epoch=1)[1] == a.example(3, epoch=2)[1]


def test_infilling_collate(blocks):
    batch = make_infilling(blocks).collate([0, 2, 4], epoch=0)
    assert batch["labels"].shape == (3, 31)
    assert batch["labels"][:, -1].tolist() == [EOS] * 3
    assert batch["decoder_input_ids"][:, 0].tolist() == [BOS] * 3
    assert batch["decoder_input_ids"][:, 1:].tolist() == batch["labels"][:, :-1].tolist()
    assert ((batch["input_ids"] != PAD) == batch["attention_mask"].bool()).all()


def test_seq2seq_batch_pads_labels_with_ignore_and_decoder_inputs_with_pad():
    batch = seq2seq_batch([([BOS, 5, EOS], [7, 8, 9, EOS]), ([BOS, 5, 6, 7, EOS], [7, EOS])], pad_id=PAD, start_id=BOS)
    assert batch["input_ids"].tolist() == [[BOS, 5, EOS, PAD, PAD], [BOS, 5, 6, 7, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[7, 8, 9, EOS], [7, EOS, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["decoder_input_ids"].tolist() == [[BOS, 7, 8, 9], [BOS, 7, EOS, PAD]]


def test_pack_blocks_joins_documents_with_eos():
    blocks, tail = pack_blocks([[5, 6, 7], [8], [9, 10]], block_size=4, eos_id=EOS)
    assert blocks.tolist() == [[5, 6, 7, EOS], [8, EOS, 9, 10]]
    assert tail.tolist() == [EOS]  # the ragged tail, continued by the next call
    more, rest = pack_blocks([[11, 12]], block_size=4, eos_id=EOS, carry=tail)
    assert more.tolist() == [[EOS, 11, 12, EOS]] and rest.tolist() == []


# ------------------------------------------------------------------ chat truncation


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


LONG_DIALOGUE = turns(
    ("system", "Answer briefly."),
    ("user", "The first question is rather long and wordy, about whales and the sea."),
    ("assistant", "The first answer talks about the whale at some length as well."),
    ("user", "A second question about Ahab?"),
    ("assistant", "A second answer about the captain."),
    ("user", "Third?"),
    ("assistant", "Third answer."),
)


def test_fit_chat_keeps_a_chat_that_fits(tokenizer):
    encoder = ChatEncoder(tokenizer)
    count = TruncationCount()
    assert fit_chat(encoder, "x", LONG_DIALOGUE, 10_000, "truncate", count) == encoder.encode(LONG_DIALOGUE)
    assert count.truncated == 0


def test_fit_chat_drops_the_oldest_turns_first(tokenizer):
    encoder = ChatEncoder(tokenizer)
    system, rest = LONG_DIALOGUE[:1], LONG_DIALOGUE[1:]
    full = len(encoder.encode(LONG_DIALOGUE)[0])
    without_first_exchange = encoder.encode(system + rest[2:])
    context = len(without_first_exchange[0])
    assert context < full
    count = TruncationCount()
    fitted = fit_chat(encoder, "x", LONG_DIALOGUE, context, "truncate", count)
    # the system prompt stays, the oldest user+assistant exchange goes, the newest turns are intact
    assert fitted == without_first_exchange
    assert count.truncated == 1 and count.dropped == 0
    ids, labels = fitted
    assert ids[:2] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<|system|>")]
    assert tokenizer.decode(ids).endswith("Third answer." + tokenizer.eos_token)


def test_fit_chat_drops_one_turn_at_a_time(tokenizer):
    encoder = ChatEncoder(tokenizer)
    system, rest = LONG_DIALOGUE[:1], LONG_DIALOGUE[1:]
    without_first_user = encoder.encode(system + rest[1:])
    count = TruncationCount()
    assert fit_chat(encoder, "x", LONG_DIALOGUE, len(without_first_user[0]), "truncate", count) == without_first_user


def test_fit_chat_cuts_the_tail_when_the_last_exchange_is_too_long(tokenizer):
    encoder = ChatEncoder(tokenizer)
    last = encoder.encode(LONG_DIALOGUE[:1] + LONG_DIALOGUE[-2:])
    context = len(last[0]) - 2
    count = TruncationCount()
    ids, labels = fit_chat(encoder, "x", LONG_DIALOGUE, context, "truncate", count)
    assert len(ids) == context == len(labels)
    assert (ids, labels) == (last[0][:context], last[1][:context])
    assert any(label != IGNORE_INDEX for label in labels)


def test_fit_chat_drops_an_example_with_nothing_left_to_learn(tokenizer):
    encoder = ChatEncoder(tokenizer)
    messages = turns(("user", "a very long question " * 20), ("assistant", "ok"))
    count = TruncationCount()
    assert fit_chat(encoder, "x", messages, 16, "truncate", count) is None
    assert count.truncated == 1 and count.dropped == 1


def test_fit_chat_error_policy(tokenizer):
    encoder = ChatEncoder(tokenizer)
    with pytest.raises(UserError) as info:
        fit_chat(encoder, "Gen.1.1", LONG_DIALOGUE, 20, "error", TruncationCount())
    assert "Gen.1.1" in str(info.value) and "model.context=20" in str(info.value) and "data.too_long" in str(info.value)


def test_chat_examples_collate_pads_labels_with_ignore(tokenizer):
    encoder = ChatEncoder(tokenizer)
    a = encoder.encode(turns(("user", "hi"), ("assistant", "hello there")))
    b = encoder.encode(LONG_DIALOGUE)
    batch = ChatExamples([a, b], pad_id=tokenizer.pad_token_id).collate([0, 1], epoch=0)
    n = len(a[0])
    assert batch["input_ids"][0, :n].tolist() == a[0]
    assert batch["labels"][0, :n].tolist() == a[1]
    assert set(batch["labels"][0, n:].tolist()) <= {IGNORE_INDEX}
    assert set(batch["input_ids"][0, n:].tolist()) <= {tokenizer.pad_token_id}
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert batch["labels"][1].tolist() == b[1]


# ------------------------------------------------------------------ sampler


@pytest.mark.parametrize("n, batch_size", [(24, 8), (7, 7), (30, 4)])
def test_epoch_sampler_covers_each_example_once_per_epoch(n, batch_size):
    sampler = EpochSampler(n, batch_size, seed=3)
    per_epoch = n // batch_size
    for epoch in range(3):
        seen = []
        for k in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            indices, got_epoch = sampler.batch(k)
            assert got_epoch == epoch and len(indices) == batch_size
            seen += indices
        assert len(seen) == len(set(seen)) == per_epoch * batch_size  # nothing twice in an epoch
        if n % batch_size == 0:
            assert sorted(seen) == list(range(n))  # everything once


def test_epoch_sampler_is_deterministic_and_random_access():
    a, b = EpochSampler(40, 8, seed=11), EpochSampler(40, 8, seed=11)
    forward = [a.batch(k) for k in range(15)]
    backward = [b.batch(k) for k in reversed(range(15))][::-1]
    assert forward == backward
    assert [EpochSampler(40, 8, seed=12).batch(k) for k in range(15)] != forward
    # each epoch is a different permutation
    assert [i for k in range(5) for i in a.batch(k)[0]] != [i for k in range(5, 10) for i in a.batch(k)[0]]


# ---------------------------------------------------------------- length-grouped batches


def _lengths(n: int = 1000) -> list[int]:
    import numpy as np

    return np.random.default_rng(1).integers(10, 200, size=n).tolist()


def test_length_grouped_epochs_cover_every_example_once_and_repeat_for_a_seed():
    from textgen_cli.training.sampler import EpochSampler

    lengths = _lengths()
    sampler = EpochSampler(1000, 16, seed=3, lengths=lengths)
    epoch = [i for k in range(sampler.per_epoch) for i in sampler.batch(k)[0]]
    assert len(epoch) == len(set(epoch)) == sampler.per_epoch * 16
    again = EpochSampler(1000, 16, seed=3, lengths=lengths)
    assert [again.batch(k)[0] for k in range(5)] == [sampler.batch(k)[0] for k in range(5)]
    other_epoch = [sampler.batch(sampler.per_epoch + k)[0] for k in range(5)]
    assert other_epoch != [sampler.batch(k)[0] for k in range(5)]


def test_length_grouped_batches_waste_far_less_padding_and_keep_a_random_batch_order():
    from textgen_cli.training.sampler import EpochSampler

    lengths = _lengths()

    def padding(sampler) -> int:
        batches = [sampler.batch(k)[0] for k in range(sampler.per_epoch)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = EpochSampler(1000, 16, seed=3, lengths=lengths)
    assert padding(grouped) * 10 < padding(EpochSampler(1000, 16, seed=3))
    longest = [max(lengths[i] for i in grouped.batch(k)[0]) for k in range(grouped.per_epoch)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_length_grouped_ranks_split_the_one_process_batch():
    from textgen_cli.training.sampler import EpochSampler

    lengths = _lengths()
    single = EpochSampler(1000, 16, seed=3, lengths=lengths)
    ranks = [EpochSampler(1000, 8, seed=3, rank=r, world=2, lengths=lengths) for r in (0, 1)]
    for k in range(10):
        assert ranks[0].batch(k)[0] + ranks[1].batch(k)[0] == single.batch(k)[0]

"""The tokenizer: special tokens, save/reload, the cache, and the chat template vs ChatEncoder."""

from __future__ import annotations

import pytest

from textgen_cli.core.schema import TokenizerSection
from textgen_cli.data.tokenizer import (
    BOS,
    END_OF_TURN,
    EOS,
    MASK,
    PAD,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    UNK,
    get_tokenizer,
    load_tokenizer,
)
from textgen_cli.objectives import IGNORE_INDEX, ChatEncoder

CONVERSATIONS = [
    [
        {"role": "user", "content": "And God said, Let there be light."},
        {"role": "assistant", "content": 'God said, "Let there be light."'},
    ],
    [
        {"role": "system", "content": "Rewrite the King James verse in modern English."},
        {"role": "user", "content": "Call me Ishmael."},
        {"role": "assistant", "content": "Hello, Ishmael!"},
        {"role": "user", "content": " leading space, trailing newline\n"},
        {"role": "assistant", "content": "Whales 🐋 and naïve café — ünïcödé\ttabs"},
        {"role": "user", "content": "three turns"},
        {"role": "assistant", "content": "  two leading spaces and trailing  "},
    ],
    [
        {"role": "system", "content": "s"},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "empty user turn"},
    ],
    [
        {"role": "user", "content": "a literal <|end|> and </s> in the text"},
        {"role": "assistant", "content": "<mask> <pad> too"},
    ],
    [{"role": "user", "content": "only a user turn"}],
]


def test_special_tokens_are_distinct(tokenizer):
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    assert tokenizer.unk_token_id not in (None,) and tokenizer.pad_token_id is not None
    assert tokenizer.pad_token == PAD and tokenizer.eos_token == EOS and tokenizer.bos_token == BOS
    assert tokenizer.unk_token == UNK and tokenizer.mask_token == MASK
    others = {
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        tokenizer.unk_token_id,
        tokenizer.mask_token_id,
        *(tokenizer.convert_tokens_to_ids(t) for t in ROLE_TOKENS.values()),
        tokenizer.convert_tokens_to_ids(END_OF_TURN),
    }
    assert tokenizer.pad_token_id not in others
    assert len(tokenizer) == 400


def test_special_tokens_survive_as_single_tokens(tokenizer):
    text = "<|user|>hi<|end|><|assistant|>yo</s>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|user|>") == ids[0]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == text


def test_save_and_reload_with_autotokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "mask_token_id"):
        assert getattr(reloaded, attr) == getattr(tokenizer, attr), attr
    assert reloaded.chat_template == tokenizer.chat_template
    text = "Call me Ishmael. Some years ago — never mind how long precisely"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.decode(reloaded(text, add_special_tokens=False)["input_ids"]) == text
    # and textgen's own loader accepts it
    assert load_tokenizer(tmp_path).get_vocab() == tokenizer.get_vocab()


def test_cache_hit_returns_the_same_vocab(moby_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(tmp_path / "cache"))
    section = TokenizerSection(vocab_size=350)
    first_log, second_log = [], []
    first = get_tokenizer(moby_texts, section, log=first_log.append)
    second = get_tokenizer(moby_texts, section, log=second_log.append)
    assert any("training" in line for line in first_log) and not any("cache hit" in line for line in first_log)
    assert any("cache hit" in line for line in second_log) and not any("training" in line for line in second_log)
    assert second.get_vocab() == first.get_vocab()
    assert second.chat_template == first.chat_template
    cached = list((tmp_path / "cache" / "tokenizers").iterdir())
    assert len(cached) == 1 and (cached[0] / "tokenizer.json").is_file()
    # other settings or other texts are another cache entry
    third_log = []
    get_tokenizer(moby_texts, TokenizerSection(vocab_size=360), log=third_log.append)
    get_tokenizer(moby_texts[:-1], section, log=third_log.append)
    assert sum("training" in line for line in third_log) == 2
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 3


# ------------------------------------------------------------------ chat template == ChatEncoder


def _template_ids(tokenizer, messages, **kwargs):
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def reloaded(tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("which", ["trained", "reloaded"])
def test_chat_encoder_matches_apply_chat_template(tokenizer, reloaded, index, generation_prompt, which):
    tok = tokenizer if which == "trained" else reloaded
    messages = CONVERSATIONS[index]
    ids, labels = ChatEncoder(tok).encode(messages, add_generation_prompt=generation_prompt)
    assert ids == _template_ids(tok, messages, add_generation_prompt=generation_prompt)
    assert len(labels) == len(ids)
    if generation_prompt:
        assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>") and labels[-1] == IGNORE_INDEX


def test_template_text_round_trips(tokenizer):
    messages = CONVERSATIONS[1]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids, _ = ChatEncoder(tokenizer).encode(messages)
    assert tokenizer.decode(ids) == text
    assert text.startswith(BOS + "<|system|>")


def _expected_labels(tokenizer, ids):
    """Independent reference: inside an assistant turn (after <|assistant|>, up to and including eos) the
    label is the id; everywhere else (bos, role tokens, system/user turns, <|end|>) it is ignored."""
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    labels, inside = [], False
    for token in ids:
        if token == assistant:
            labels.append(IGNORE_INDEX)
            inside = True
        elif inside:
            labels.append(token)
            inside = token != tokenizer.eos_token_id
        else:
            labels.append(IGNORE_INDEX)
    return labels


@pytest.mark.parametrize("index", range(len(CONVERSATIONS) - 1))
def test_assistant_only_labels(tokenizer, index):
    messages = CONVERSATIONS[index]
    ids, labels = ChatEncoder(tokenizer).encode(messages)
    assert labels == _expected_labels(tokenizer, ids)
    # bos, role tokens and <|end|> are never labels; every eos closes an assistant turn and is a label
    specials = {
        tokenizer.bos_token_id,
        tokenizer.convert_tokens_to_ids(END_OF_TURN),
        *(tokenizer.convert_tokens_to_ids(t) for t in ROLE_TOKENS.values()),
    }
    assert all(label == IGNORE_INDEX for token, label in zip(ids, labels) if token in specials)
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    eos_positions = [
        i for i, token in enumerate(ids) if token == tokenizer.eos_token_id and labels[i] == tokenizer.eos_token_id
    ]
    assert len(eos_positions) == n_assistant
    # the labelled tokens are exactly the assistant contents, each followed by eos
    expected = []
    for m in messages:
        if m["role"] == "assistant":
            expected += [*tokenizer(m["content"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert [label for label in labels if label != IGNORE_INDEX] == expected
    # system and user contents are never labelled
    assert labels[0] == IGNORE_INDEX and ids[0] == tokenizer.bos_token_id


def test_user_only_conversation_has_no_labels(tokenizer):
    ids, labels = ChatEncoder(tokenizer).encode(CONVERSATIONS[-1])
    assert set(labels) == {IGNORE_INDEX}
    assert len(ids) == len(labels)

"""Byte-level BPE tokenizer: trained locally with `tokenizers`, cached, saved as a PreTrainedTokenizerFast.

The chat template lives here too, because the tokenizer carries it: `AutoTokenizer.from_pretrained(run_dir)`
followed by `apply_chat_template` gives byte for byte the token ids the model was finetuned on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from textgen_cli.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from textgen_cli.schema import TokenizerSection

PAD, BOS, EOS, UNK, MASK = "<pad>", "<s>", "</s>", "<unk>", "<mask>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, MASK, *ROLE_TOKENS.values(), END_OF_TURN]

# A turn is its role token, its text, then <|end|>; an assistant turn ends with eos instead, so the
# model learns to stop. No white space is added anywhere: the text between special tokens is
# tokenized on its own, which is what lets the training code build the same ids turn by turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TOKENIZER_FORMAT_VERSION = "1"  # bump when SPECIAL_TOKENS, the template or training settings change


def cache_dir() -> Path:
    return Path(os.environ.get("TEXTGEN_CACHE_DIR") or Path.home() / ".cache" / "textgen")


@dataclass
class Corpus:
    """Texts to train a tokenizer on, streamed in batches, and a key naming their content."""

    key: str
    batches: Callable[[], Iterable[list[str]]]
    description: str


def texts_corpus(texts: list[str]) -> Corpus:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return Corpus(digest.hexdigest(), lambda: [texts], f"{len(texts)} texts")


def corpus_key(corpus: Corpus, section: "TokenizerSection") -> str:
    blob = f"{TOKENIZER_FORMAT_VERSION}|{section.vocab_size}|{section.min_frequency}|{corpus.key}"
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def get_tokenizer(corpus: "list[str] | Corpus", section: "TokenizerSection", log=print) -> "PreTrainedTokenizerFast":
    """Load `tokenizer.path`, or a cached tokenizer for this corpus, or train one and cache it."""
    if section.path:
        return load_tokenizer(Path(section.path))
    if isinstance(corpus, list):
        corpus = texts_corpus(corpus)
    cached = cache_dir() / "tokenizers" / corpus_key(corpus, section)
    if (cached / "tokenizer.json").is_file():
        log(f"tokenizer: cache hit {cached}")
        return load_tokenizer(cached)
    log(f"tokenizer: training byte-level BPE (vocab {section.vocab_size}) on {corpus.description}")
    tokenizer = train_tokenizer(corpus.batches(), section.vocab_size, section.min_frequency)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(cached)
    except OSError:  # another run cached the same tokenizer first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def train_tokenizer(texts: "Iterable[str] | Iterable[list[str]]", vocab_size: int, min_frequency: int) -> "PreTrainedTokenizerFast":
    """Train on texts, or on batches (lists) of texts streamed from disk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(core)


def wrap_tokenizer(core) -> "PreTrainedTokenizerFast":
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=MASK,
        additional_special_tokens=[*ROLE_TOKENS.values(), END_OF_TURN],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: Path) -> "PreTrainedTokenizerFast":
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise UserError(f"tokenizer directory '{path}' does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load a tokenizer from this directory: {str(exc).splitlines()[0]}") from exc
    vocab = tokenizer.get_vocab()
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise UserError(f"{path}: tokenizer lacks the special tokens textgen needs: {', '.join(missing)}")
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        raise UserError(f"{path}: tokenizer needs a pad token distinct from eos")
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def special_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)

"""Byte-level BPE tokenizer: trained locally with `tokenizers`, cached, saved as a PreTrainedTokenizerFast.

The chat template lives here too, because the tokenizer carries it: `AutoTokenizer.from_pretrained(run_dir)`
followed by `apply_chat_template` gives byte for byte the token ids the model was finetuned on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from textgen_cli.core.schema import TokenizerSection

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


def corpus_key(corpus: Corpus, section: TokenizerSection) -> str:
    blob = f"{TOKENIZER_FORMAT_VERSION}|{section.vocab_size}|{section.min_frequency}|{corpus.key}"
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def get_tokenizer(corpus: list[str] | Corpus, section: TokenizerSection, log=print) -> PreTrainedTokenizerFast:
    """Load `tokenizer.path`, or a cached tokenizer for this corpus, or train one and cache it."""
    if section.path:
        tokenizer = load_tokenizer(Path(section.path))
        adapt_tokenizer(tokenizer)  # a model built for it gets rows for what is added
        return tokenizer
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


def train_tokenizer(
    texts: Iterable[str] | Iterable[list[str]], vocab_size: int, min_frequency: int
) -> PreTrainedTokenizerFast:
    """Train on texts, or on batches (lists) of texts streamed from disk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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


def wrap_tokenizer(core) -> PreTrainedTokenizerFast:
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


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved with save_pretrained: textgen's own, or any other (see `adapt_tokenizer`)."""
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise UserError(f"tokenizer directory '{path}' does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load a tokenizer from this directory: {str(exc).splitlines()[0]}") from exc
    if is_textgen_tokenizer(tokenizer) and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def is_textgen_tokenizer(tokenizer) -> bool:
    """Trained by textgen: every special token of its own is in the vocabulary."""
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in SPECIAL_TOKENS)


def has_own_chat_template(tokenizer) -> bool:
    """The tokenizer brings a chat template other than textgen's (Qwen, Llama instruct, ...)."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != CHAT_TEMPLATE


def adapt_tokenizer(tokenizer, needs_mask: bool = False) -> list[str]:
    """Add only the special tokens textgen needs and the tokenizer lacks; returns those added (new
    ids at the end of the vocabulary: the model's embeddings must then grow, see models.loading).

    Needed: eos (every reply ends with it), a pad token other than eos (padding is masked by
    comparing with pad), <mask> where BART-style infilling needs it, and, when the tokenizer brings
    no chat template of its own, bos, the role tokens and <|end|> of textgen's template (which it
    then gets)."""
    wanted: dict[str, Any] = {}
    own_template = has_own_chat_template(tokenizer)
    if tokenizer.eos_token is None:
        wanted["eos_token"] = EOS
    if tokenizer.bos_token is None and not own_template:
        wanted["bos_token"] = BOS  # textgen's template starts with it
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        wanted["pad_token"] = PAD
    if needs_mask and tokenizer.mask_token is None:
        wanted["mask_token"] = MASK
    vocab = tokenizer.get_vocab()
    markup = [] if own_template else [token for token in (*ROLE_TOKENS.values(), END_OF_TURN) if token not in vocab]
    if markup:
        wanted["extra_special_tokens"] = markup
    before = set(tokenizer.get_vocab())
    if wanted:
        tokenizer.add_special_tokens(wanted, replace_extra_special_tokens=False)
    if not own_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    return sorted((token for token in vocab if token not in before), key=vocab.__getitem__)


def special_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)

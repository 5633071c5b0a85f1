"""Pretraining data preparation: stream a text corpus through the tokenizer and pack it into
fixed-size blocks, cached on disk.

The corpus is never held in memory: `datasets` keeps it as memory-mapped Arrow, batches of rows go
through the Rust tokenizer (which encodes a batch on every core), and full blocks are appended to a
binary file that is then memory-mapped. The result is cached under the textgen cache folder, keyed
by the file's content, the tokenizer and the block size: a second run with the same inputs opens the
cached blocks without tokenizing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from textgen_cli.data import file_format, load_rows, _line_of_row
from textgen_cli.errors import UserError
from textgen_cli.objectives import pack_blocks
from textgen_cli.tokenizer import cache_dir

if TYPE_CHECKING:
    import datasets

FORMAT_VERSION = "1"
ROWS_PER_BATCH = 2000


def file_digest(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


@dataclass
class TextSource:
    """A slice of rows of one local text file: what gets tokenized."""

    path: Path
    text_field: str
    start: int  # first row
    stop: int | None  # one past the last row (None: to the end)
    digest: str

    def rows(self) -> "datasets.Dataset":
        rows = load_rows(self.path)
        stop = len(rows) if self.stop is None else min(self.stop, len(rows))
        return rows.select(range(self.start, stop)) if (self.start, stop) != (0, len(rows)) else rows

    @property
    def field(self) -> str:
        return "text" if file_format(self.path) == "text" else self.text_field

    def batches(self) -> Iterator[list[str]]:
        """Non-empty texts in batches; a non-string value is an error naming its line."""
        rows = self.rows()
        if self.field not in rows.column_names:
            raise UserError(f"{self.path}: records have no field '{self.field}' (set by data.pretrain.text_field); fields found: {', '.join(rows.column_names)}")
        offset = self.start
        for batch in rows.select_columns([self.field]).iter(batch_size=ROWS_PER_BATCH):
            texts = batch[self.field]
            for index, text in enumerate(texts):
                if not isinstance(text, str):
                    raise UserError(f"{_line_of_row(self.path, offset + index)}: field '{self.field}' must be a string, got {type(text).__name__}")
            offset += len(texts)
            yield [text for text in texts if text.strip()]

    def key(self) -> str:
        return f"{self.digest}|{self.text_field}|{self.start}|{self.stop}"


def split_sources(path: str, text_field: str, max_rows: int | None, validation: str | None, holdout_fraction: float) -> tuple[TextSource, TextSource, int]:
    """The training and validation text sources; without a validation file the last
    `holdout_fraction` of the training rows are held out. Returns the held-out row count (0 if none)."""
    train_path = Path(path)
    rows = len(load_rows(train_path, max_rows))
    train_digest = file_digest(train_path)
    if validation:
        val_path = Path(validation)
        val_rows = len(load_rows(val_path, max_rows))
        return TextSource(train_path, text_field, 0, rows, train_digest), TextSource(val_path, text_field, 0, val_rows, file_digest(val_path)), 0
    cut = max(1, int(rows * holdout_fraction))
    if rows - cut < 1:
        raise UserError(f"{train_path}: only {rows} records; too few to hold out a validation part (set data.pretrain.validation)")
    return TextSource(train_path, text_field, 0, rows - cut, train_digest), TextSource(train_path, text_field, rows - cut, rows, train_digest), cut


@dataclass
class Packed:
    blocks: np.ndarray  # (n_blocks, block_size), memory-mapped
    tokens: int  # tokens in the source, eos separators included
    cached: bool


def packed_blocks(source: TextSource, tokenizer, block_size: int) -> Packed:
    """Blocks of `block_size` tokens: documents joined by eos, the ragged tail dropped. Cached."""
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32
    key = hashlib.sha256(f"{FORMAT_VERSION}|{source.key()}|{tokenizer_digest(tokenizer)}|{block_size}|{eos}|{np.dtype(dtype).name}".encode()).hexdigest()[:24]
    folder = cache_dir() / "blocks"
    data_file, meta_file = folder / f"{key}.bin", folder / f"{key}.json"
    if data_file.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        return Packed(_open(data_file, dtype, meta["n_blocks"], block_size), meta["tokens"], cached=True)

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    carry = np.empty(0, dtype=np.int64)
    tokens = n_blocks = 0
    try:
        with tmp.open("wb") as out:
            for texts in source.batches():
                if not texts:
                    continue
                encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
                tokens += sum(len(ids) + 1 for ids in encoded)
                blocks, carry = pack_blocks(encoded, block_size, eos, carry)
                out.write(blocks.astype(dtype).tobytes())
                n_blocks += len(blocks)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, data_file)
        meta_file.write_text(json.dumps({"n_blocks": n_blocks, "tokens": tokens, "block_size": block_size, "source": str(source.path)}), encoding="utf-8")
    finally:
        tmp.unlink(missing_ok=True)
    return Packed(_open(data_file, dtype, n_blocks, block_size), tokens, cached=False)


def _open(path: Path, dtype, n_blocks: int, block_size: int) -> np.ndarray:
    if n_blocks == 0:
        return np.zeros((0, block_size), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_blocks, block_size))

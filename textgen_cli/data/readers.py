"""Read the user's data files through `datasets`, with a clear error for every malformed input.

A data path may also name a dataset: `hf:ORG/NAME[/CONFIG][:SPLIT]` on the hub (read from the local
datasets cache, since textgen runs offline) or `hf:/path/to/folder[:SPLIT]` on disk (a
`save_to_disk` folder, or a folder of parquet / json / csv files). Its split is turned into a parquet
file in textgen's cache once, and every reader then treats it as a local file.

Three shapes of data: plain text (pretraining), {source, target} pairs, and dialogues (a list of
{role, content} turns). Pairs become one-turn chats for `chatgpt`, and every assistant turn of a
dialogue becomes a (history -> response) example for `sora`, so both families learn from the same
records.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.progress import debug, verbose

if TYPE_CHECKING:
    import datasets

HUB_PREFIX = "hf:"
FORMATS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
ROLES = ("system", "user", "assistant")
# A conversation: {role, content} turns, oldest first (the `messages` that apply_chat_template takes).
Messages = list[dict[str, str]]


@dataclass
class Pair:
    id: str
    source: str
    target: str


@dataclass
class Dialogue:
    """One dialogue record of a data file: its id and its turns."""

    id: str
    messages: Messages


def is_dataset(value: str | Path) -> bool:
    return str(value).startswith(HUB_PREFIX)


def resolve_dataset_value(value: str, root: Path, default_split: str) -> str:
    """A recipe's `hf:` value made explicit: a local folder resolved against `root` (the recipe's
    folder, or the current one for an override), the split named (default: the key's own)."""
    name, _, split = value[len(HUB_PREFIX) :].partition(":")
    if name.startswith(("/", ".", "~")):
        name = str((root / Path(name).expanduser()).resolve())
    return f"{HUB_PREFIX}{name}:{split or default_split}"


def local_file(value: str | Path) -> Path:
    """A data path as a local file: itself, or for an `hf:` dataset its split as a cached parquet
    file (written once; the name is derived from the dataset's fingerprint)."""
    if not is_dataset(value):
        return Path(value)
    import datasets

    from textgen_cli.data.tokenizer import cache_dir

    name, _, split = str(value)[len(HUB_PREFIX) :].partition(":")
    rows = _load_dataset_split(name, split or "train")
    key = hashlib.sha256(f"{value}|{rows._fingerprint}".encode()).hexdigest()[:24]
    path = cache_dir() / "datasets" / f"{key}.parquet"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        datasets.disable_progress_bars()
        rows.to_parquet(str(tmp))
        os.replace(tmp, path)
    debug(f"data: {value} ({len(rows):,} records) as {path}")
    return path


def _load_dataset_split(name: str, split: str) -> datasets.Dataset:
    """One split of a hub dataset (ORG/NAME[/CONFIG]) or of a local dataset folder."""
    import datasets

    where = f"dataset '{name}'"
    if name.startswith("/"):  # resolve_dataset_value made local folders absolute
        folder = Path(name)
        if not folder.is_dir():
            raise UserError(f"{where}: no such folder; expected a save_to_disk folder or a folder of data files")
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            saved = datasets.load_from_disk(str(folder))
            base = split.partition("[")[0]  # `train[:90%]`: datasets' slicing, done here by hand
            if isinstance(saved, datasets.DatasetDict):
                if base not in saved:
                    raise UserError(f"{where} has no split '{base}'; splits found: {', '.join(saved)}")
                saved = saved[base]
            if "[" not in split:
                return saved  # a DatasetDict's split, or a single saved split whatever it is called
            try:
                (part,) = datasets.ReadInstruction.from_spec(split).to_absolute({base: len(saved)})
            except ValueError as exc:
                raise UserError(f"{where}: bad split '{split}' ({exc})") from None
            return saved.select(range(part.from_, part.to))
        path, config = str(folder), None
    else:
        parts = name.split("/")
        path, config = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        return datasets.load_dataset(path, config, split=split)
    except ConnectionError:
        raise UserError(
            f"{where} is not in the local datasets cache, and textgen runs offline; download it once with "
            f"HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 and the same command, or point to a local copy (hf:/path/to/folder)"
        ) from None
    except Exception as exc:  # unknown split or config, unreadable files: the library says which
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{where}, split '{split}': cannot load: {detail}") from None


def file_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise UserError(f"{path}: unknown data format '{path.suffix}'; expected one of {', '.join(FORMATS)}") from None


def load_rows(path: str | Path, max_rows: int | None = None) -> datasets.Dataset:
    """Load a local data file with `datasets` (cached as Arrow); the reader follows the file extension."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise UserError(f"data file '{path}' does not exist")
    if not path.is_file():
        raise UserError(f"data file '{path}' is not a file")
    fmt = file_format(path)
    if path.stat().st_size == 0:
        raise UserError(f"data file '{path}' is empty")
    if fmt != "parquet":
        _check_utf8(path)  # pyarrow accepts bad bytes and fails later, far from the line at fault
    datasets.disable_progress_bars()
    if not verbose():  # -v shows what datasets has to say
        datasets.utils.logging.set_verbosity_error()
    try:
        rows = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # the readers raise many types; find the exact culprit for the message
        raise UserError(_explain_load_failure(path, fmt, exc)) from exc
    if fmt == "text":
        rows = rows.filter(
            lambda batch: [bool(text.strip()) for text in batch["text"]], batched=True, batch_size=10_000
        )
    if len(rows) == 0:
        raise UserError(f"data file '{path}' holds no records")
    if max_rows is not None and len(rows) > max_rows:
        rows = rows.select(range(max_rows))
    debug(f"data: {len(rows):,} records from {path} ({fmt})")
    return rows


def _check_utf8(path: Path, chunk_size: int = 1 << 20) -> None:
    """Stream the file through an incremental UTF-8 decoder; name the line of the first bad byte."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    lines, offset = 1, 0
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                # the decoder may hold back up to 3 bytes of an unfinished character from the last chunk
                bad = max(0, err.start - len(err.object) + len(chunk))
                line = lines + chunk[:bad].count(b"\n")
                raise UserError(
                    f"{path}:{line}: not valid UTF-8 (byte 0x{chunk[bad]:02x} at offset {offset + bad}); expected UTF-8 text"
                ) from None
            lines += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(
                f"{path}:{lines}: not valid UTF-8 (the file ends inside a character); expected UTF-8 text"
            ) from None


def _explain_load_failure(path: Path, fmt: str, exc: Exception) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return (
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); expected UTF-8 text"
        )
    if fmt == "json" and path.suffix.lower() == ".jsonl":
        first_type: dict[str, tuple[str, int]] = {}  # field -> (type name, line) where first seen
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); expected one JSON object per line"
            if not isinstance(value, dict):
                return f"{path}:{number}: expected a JSON object, got {type(value).__name__}"
            for field, item in value.items():
                if item is None:
                    continue
                seen = first_type.setdefault(field, (type(item).__name__, number))
                if seen[0] != type(item).__name__:
                    return (
                        f"{path}:{number}: field '{field}' is {_a(type(item).__name__)}, but line {seen[1]} has {_a(seen[0])}; "
                        "expected the same type on every line"
                    )
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause):
        detail += f" ({str(cause).splitlines()[0]})"
    return f"{path}: cannot read as {fmt}: {detail}"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _line_of_row(path: Path, row: int) -> str:
    """'file:line' for a JSONL row (blank lines are skipped by the reader), else 'file, record N'."""
    if path.suffix.lower() == ".jsonl":
        seen = -1
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    seen += 1
                    if seen == row:
                        return f"{path}:{number}"
    return f"{path}, record {row + 1}"


def _require_column(rows: datasets.Dataset, path: Path | str, field: str, key: str) -> None:
    if field not in rows.column_names:
        raise UserError(
            f"{path}: records have no field '{field}' (set by {key}); fields found: {', '.join(rows.column_names)}"
        )


def read_texts(path: str, text_field: str, max_rows: int | None = None) -> list[str]:
    shown, path = path, local_file(path)
    rows = load_rows(path, max_rows)
    field = "text" if file_format(path) == "text" else text_field
    _require_column(rows, shown, field, "data.pretrain.text_field")
    texts = rows[field]
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"{_line_of_row(path, index)}: field '{field}' must be a string, got {type(text).__name__}")
    return [text for text in texts if text.strip()]


def read_pairs(path: str, source_field: str, target_field: str, max_rows: int | None = None) -> list[Pair]:
    shown, path = path, local_file(path)
    rows = load_rows(path, max_rows)
    _require_column(rows, shown, source_field, "data.finetune.source_field")
    _require_column(rows, shown, target_field, "data.finetune.target_field")
    ids = rows["id"] if "id" in rows.column_names else [None] * len(rows)
    pairs = []
    for index, (id_, source, target) in enumerate(zip(ids, rows[source_field], rows[target_field])):
        for field, value in ((source_field, source), (target_field, target)):
            if not isinstance(value, str) or not value.strip():
                got = "an empty string" if isinstance(value, str) else type(value).__name__
                raise UserError(f"{_line_of_row(path, index)}: field '{field}' must be a non-empty string, got {got}")
        pairs.append(Pair(id=str(id_ if id_ is not None else index), source=source, target=target))
    return pairs


def read_dialogues(path: str, messages_field: str, max_rows: int | None = None) -> list[Dialogue]:
    shown, path = path, local_file(path)
    rows = load_rows(path, max_rows)
    _require_column(rows, shown, messages_field, "data.finetune.messages_field")
    ids = rows["id"] if "id" in rows.column_names else [None] * len(rows)
    dialogues = []
    for index, (id_, messages) in enumerate(zip(ids, rows[messages_field])):
        where = _line_of_row(path, index) if not isinstance(messages, list) else None
        if where:
            raise UserError(f"{where}: field '{messages_field}' must be a list of {{role, content}} turns")
        turns = [_check_turn(path, index, turn) for turn in messages]
        if not any(turn["role"] == "assistant" for turn in turns):
            raise UserError(
                f"{_line_of_row(path, index)}: dialogue has no assistant turn; expected at least one to learn from"
            )
        dialogues.append(Dialogue(id=str(id_ if id_ is not None else index), messages=turns))
    return dialogues


def _check_turn(path: Path, index: int, turn: Any) -> dict[str, str]:
    if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
        raise UserError(
            f"{_line_of_row(path, index)}: each turn must be an object with string fields 'role' and 'content', got {turn!r}"
        )
    if turn["role"] not in ROLES:
        raise UserError(
            f"{_line_of_row(path, index)}: unknown role '{turn['role']}'; expected one of {', '.join(ROLES)}"
        )
    return {"role": turn["role"], "content": turn["content"]}


def pair_to_chat(pair: Pair) -> Dialogue:
    """A pairs task cast as a one-turn chat, so `chatgpt` trains on exactly `sora`'s examples."""
    return Dialogue(
        id=pair.id, messages=[{"role": "user", "content": pair.source}, {"role": "assistant", "content": pair.target}]
    )


def with_system_prompt(dialogue: Dialogue, system: str) -> Messages:
    """The recipe's system prompt goes first, unless the data brings its own."""
    if not system or (dialogue.messages and dialogue.messages[0]["role"] == "system"):
        return list(dialogue.messages)
    return [{"role": "system", "content": system}, *dialogue.messages]


def read_finetune_examples(section, split: str, max_rows: int | None) -> list[Dialogue]:
    """A finetuning split as dialogues (pairs are cast to one-turn chats)."""
    path = getattr(section, split)
    if section.task == "pairs":
        return [pair_to_chat(p) for p in read_pairs(path, section.source_field, section.target_field, max_rows)]
    return read_dialogues(path, section.messages_field, max_rows)


@dataclass
class EvalExample:
    id: str
    prompt: str | list[dict[str, str]]  # the source text (pairs) or the history ending with a user turn
    source: str  # what a reader sees as the input: the source, or the last user turn
    reference: str


def examples_from(dialogues: list[Dialogue], task: str) -> list[EvalExample]:
    """Pairs: source -> target. Dialogues: the history up to the last assistant turn -> that turn."""
    examples = []
    for dialogue in dialogues:
        last = max(i for i, turn in enumerate(dialogue.messages) if turn["role"] == "assistant")
        history = dialogue.messages[:last]
        if not history or history[-1]["role"] != "user":
            continue  # nothing to reply to
        reference = dialogue.messages[last]["content"]
        prompt = history[-1]["content"] if task == "pairs" else history
        examples.append(EvalExample(dialogue.id, prompt, history[-1]["content"], reference))
    return examples

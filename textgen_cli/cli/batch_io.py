"""Batch mode's inputs and outputs: prompts read from a .txt / .jsonl file or stdin, one JSON line
written per result (`textgen generate --input`, or prompts piped on stdin)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from textgen_cli.core.errors import UserError
from textgen_cli.generation.decoding import GenerationResult
from textgen_cli.generation.prompts import PromptInput, check_input


@dataclass
class InputRecord:
    item: PromptInput
    where: str
    id: Any = None


def parse_input_line(
    line: str,
    where: str,
    fields: Sequence[str] = ("prompt",),
    dialogue_fields: Sequence[str] = ("messages",),
    json_only: bool = False,
) -> InputRecord | None:
    """One input line: JSON (an object with a prompt or messages field, a string, or a list of turns),
    or, unless `json_only`, plain text. Blank lines are skipped (None)."""
    stripped = line.strip()
    if not stripped:
        return None
    if json_only or stripped[0] in '{["':
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected an object with a 'prompt' or 'messages' field"
            ) from None
    else:
        return InputRecord(check_input(line.rstrip("\r\n"), where), where)
    record_id = None
    if isinstance(value, dict):
        record_id = value.get("id")
        text_key = next((key for key in fields if key in value), None)
        turns_key = next((key for key in dialogue_fields if key in value), None)
        if turns_key is not None:
            value = value[turns_key]
            if not isinstance(value, list):
                raise UserError(f"{where}: field '{turns_key}' must be a list of {{role, content}} turns")
        elif text_key is not None:
            value = value[text_key]
            if not isinstance(value, str):
                raise UserError(f"{where}: field '{text_key}' must be a string, got {type(value).__name__}")
        else:
            expected = ", ".join(f"'{key}'" for key in (*fields, *dialogue_fields))
            raise UserError(
                f"{where}: the record has none of the fields {expected}; found: {', '.join(value) or 'none'}"
            )
    return InputRecord(check_input(value, where), where, record_id)


def read_inputs(
    source: str, stream: TextIO | None = None, source_field: str = "source", messages_field: str = "messages"
) -> list[InputRecord]:
    """Prompts from a .txt file (one per line), a .jsonl/.json-lines file, or a stream (`-`: stdin)."""
    fields = tuple(dict.fromkeys(("prompt", source_field)))
    dialogue_fields = tuple(dict.fromkeys(("messages", messages_field)))
    if source == "-":
        handle = stream or sys.stdin
        lines, name, json_only = handle.read().splitlines(), "stdin", False
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(
                f"input file '{source}' does not exist" if not path.exists() else f"input '{source}' is not a file"
            )
        suffix = path.suffix.lower()
        if suffix not in (".txt", ".text", ".jsonl", ".json"):
            raise UserError(
                f"{source}: unknown input format '{path.suffix}'; expected .txt (one prompt per line) or .jsonl"
            )
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UserError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        name, json_only = source, suffix in (".jsonl", ".json")
        if suffix in (".txt", ".text"):
            records = [
                InputRecord(check_input(line, f"{name}:{n}"), f"{name}:{n}")
                for n, line in enumerate(lines, 1)
                if line.strip()
            ]
            return _nonempty(records, source)
    records = []
    for number, line in enumerate(lines, start=1):
        record = parse_input_line(line, f"{name}:{number}", fields, dialogue_fields, json_only)
        if record is not None:
            records.append(record)
    return _nonempty(records, name)


def _nonempty(records: list[InputRecord], name: str) -> list[InputRecord]:
    if not records:
        raise UserError(f"{name}: no prompts found; expected one prompt per line (blank lines are skipped)")
    return records


def output_record(
    record: InputRecord, result: GenerationResult, model_path: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    """One output line: the input (and its id), the output and its counts, the model, the decoding settings."""
    out: dict[str, Any] = {}
    if record.id is not None:
        out["id"] = record.id
    out["messages" if isinstance(record.item, list) else "prompt"] = record.item
    out.update(
        output=result.output,
        prompt_tokens=result.prompt_tokens,
        output_tokens=result.new_tokens,
        finish_reason=result.finish_reason,
        truncated=result.truncated,
        dropped_turns=result.dropped_turns,
        model=str(model_path),
        settings=settings,
    )
    return out

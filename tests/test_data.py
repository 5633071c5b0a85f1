"""Data files: every malformed input is a UserError that names the file (and the line for JSONL)."""

from __future__ import annotations

import json

import pytest

from harness import textgen, write_recipe
from textgen_cli.core.errors import UserError
from textgen_cli.core.schema import FinetuneData
from textgen_cli.data.readers import (
    Dialogue,
    pair_to_chat,
    read_dialogues,
    read_finetune_examples,
    read_pairs,
    read_texts,
    with_system_prompt,
)


def jsonl(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chat(*turns):
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# ------------------------------------------------------------------ good files


def test_read_pairs_and_texts(tmp_path):
    path = jsonl(
        tmp_path / "p.jsonl", {"id": "a", "source": "s1", "target": "t1"}, {"id": "b", "source": "s2", "target": "t2"}
    )
    pairs = read_pairs(str(path), "source", "target")
    assert [(p.id, p.source, p.target) for p in pairs] == [("a", "s1", "t1"), ("b", "s2", "t2")]
    assert len(read_pairs(str(path), "source", "target", max_rows=1)) == 1
    text = tmp_path / "t.txt"
    text.write_text("first line\n\n   \nsecond line\n", encoding="utf-8")
    assert read_texts(str(text), "text") == ["first line", "second line"]


def test_pairs_become_one_turn_chats_and_system_prompt_goes_first(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", {"source": "kjv", "target": "modern"})
    section = FinetuneData(task="pairs", train=str(path))
    [dialogue] = read_finetune_examples(section, "train", None)
    assert dialogue.messages == [{"role": "user", "content": "kjv"}, {"role": "assistant", "content": "modern"}]
    assert with_system_prompt(dialogue, "be modern")[0] == {"role": "system", "content": "be modern"}
    assert with_system_prompt(dialogue, "") == dialogue.messages
    own = Dialogue("x", [{"role": "system", "content": "mine"}, *dialogue.messages])
    assert with_system_prompt(own, "recipe's") == own.messages
    assert pair_to_chat(read_pairs(str(path), "source", "target")[0]).messages == dialogue.messages


def test_read_dialogues(tmp_path):
    path = jsonl(
        tmp_path / "d.jsonl",
        chat(("system", "s"), ("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "ciao")),
    )
    [dialogue] = read_dialogues(str(path), "messages")
    assert [m["role"] for m in dialogue.messages] == ["system", "user", "assistant", "user", "assistant"]


# ------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist") as info:
        read_pairs(str(tmp_path / "nope.jsonl"), "source", "target")
    assert "nope.jsonl" in str(info.value)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.txt", "empty.csv"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty") as info:
        if name.endswith(".txt"):
            read_texts(str(path), "text")
        else:
            read_pairs(str(path), "source", "target")
    assert name in str(info.value)


def test_blank_text_file_holds_no_records(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(UserError, match="no records"):
        read_texts(str(path), "text")


def test_unknown_format(tmp_path):
    path = tmp_path / "data.xml"
    path.write_text("<a/>")
    with pytest.raises(UserError, match=r"unknown data format '\.xml'"):
        read_texts(str(path), "text")


def test_jsonl_line_that_is_not_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"source": "a", "target": "b"}\n{"source": "c", "target": "d"}\n{"source": "e", "target": \n{"source": "g", "target": "h"}\n'
    )
    with pytest.raises(UserError) as info:
        read_pairs(str(path), "source", "target")
    assert f"{path}:3:" in str(info.value)
    assert "JSON" in str(info.value)


def test_missing_field_names_the_field_and_the_recipe_key(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", {"source": "a", "tgt": "b"}, {"source": "c", "tgt": "d"})
    with pytest.raises(UserError) as info:
        read_pairs(str(path), "source", "target")
    message = str(info.value)
    assert str(path) in message and "'target'" in message and "data.finetune.target_field" in message


def test_field_missing_on_one_line_names_the_line(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", {"source": "a", "target": "b"}, {"source": "c", "target": "d"}, {"source": "e"})
    with pytest.raises(UserError) as info:
        read_pairs(str(path), "source", "target")
    assert f"{path}:3:" in str(info.value) and "'target'" in str(info.value)


def test_wrong_field_type_names_file_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"source": "a", "target": "b"}\n\n{"source": "c", "target": 5}\n')
    with pytest.raises(UserError) as info:
        read_pairs(str(path), "source", "target")
    assert f"{path}:3:" in str(info.value) and "'target'" in str(info.value)


def test_wrong_field_type_on_every_line(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", {"source": "a", "target": 1}, {"source": "c", "target": 2})
    with pytest.raises(UserError) as info:
        read_pairs(str(path), "source", "target")
    assert f"{path}:1:" in str(info.value) and "string" in str(info.value)


def test_empty_target_string(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", {"source": "a", "target": "b"}, {"source": "c", "target": "  "})
    with pytest.raises(UserError, match=r"p\.jsonl:2: field 'target' must be a non-empty string"):
        read_pairs(str(path), "source", "target")


def test_text_field_of_wrong_type(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", {"text": "fine"}, {"text": 3})
    with pytest.raises(UserError) as info:
        read_texts(str(path), "text")
    assert f"{path}:2:" in str(info.value)


def test_non_utf8_text_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("hello\nworld\ncafé noir\n".encode("latin-1"))
    with pytest.raises(UserError) as info:
        read_texts(str(path), "text")
    assert f"{path}:3:" in str(info.value) and "UTF-8" in str(info.value)


@pytest.mark.parametrize("reader", ["pairs", "dialogues"])
def test_non_utf8_jsonl_file(tmp_path, reader):
    """A latin-1 byte inside a JSON string: a UserError naming file:line, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.jsonl"
    if reader == "pairs":
        lines = ['{"source": "a", "target": "b"}', '{"source": "caf\xe9", "target": "d"}']
    else:
        lines = [
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
            '{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "d"}]}',
        ]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(UserError) as info:
        if reader == "pairs":
            read_pairs(str(path), "source", "target")
        else:
            read_dialogues(str(path), "messages")
    assert f"{path}:2:" in str(info.value) and "UTF-8" in str(info.value)


def test_dialogue_without_assistant_turn(tmp_path):
    path = jsonl(
        tmp_path / "d.jsonl",
        chat(("user", "hi"), ("assistant", "yo")),
        chat(("system", "s"), ("user", "hi"), ("user", "anyone?")),
    )
    with pytest.raises(UserError, match="no assistant turn") as info:
        read_dialogues(str(path), "messages")
    assert f"{path}:2:" in str(info.value)


def test_dialogue_with_unknown_role(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", chat(("user", "hi"), ("bot", "yo")))
    with pytest.raises(UserError, match="unknown role 'bot'") as info:
        read_dialogues(str(path), "messages")
    assert f"{path}:1:" in str(info.value)


def test_dialogue_messages_not_a_list(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", {"messages": "hello"})
    with pytest.raises(UserError, match="must be a list") as info:
        read_dialogues(str(path), "messages")
    assert f"{path}:1:" in str(info.value)


def test_data_error_through_the_cli_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n')
    recipe = write_recipe(
        tmp_path / "r.yaml",
        stages=["pretrain"],
        model={"context": 32},
        data={"pretrain": {"train": "bad.jsonl"}},
        generate={"max_new_tokens": 8},
    )
    result = textgen(["pretrain", "--recipe", str(recipe)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{bad}:2:" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.partial"))

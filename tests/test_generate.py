"""`textgen generate`: prompts built exactly as in finetuning, greedy decoding equal to a hand-written
argmax loop, batched equal to one-by-one, seeds, stop strings, streaming, context limits, and the CLI
(single prompt, batch file, stdin -> stdout, chat over stdin, clear exit-2 errors)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from harness import ok, textgen
from textgen_cli.cli.batch_io import read_inputs
from textgen_cli.cli.chat_session import ChatSession, run_chat
from textgen_cli.core.errors import UserError
from textgen_cli.core.schema import GenerateSection, ModelSection
from textgen_cli.data.readers import Dialogue
from textgen_cli.generation.decoding import GenerationStats, generate_batch, generate_stream
from textgen_cli.generation.generate import Generator, load_generator
from textgen_cli.generation.prompts import build_prompt, prompt_budget, prompt_format
from textgen_cli.recipe import load_recipe

FAMILIES = ("chatgpt", "sora", "prefix-lm")
CONTEXT = 64
PROMPTS = [
    "Call me Ishmael.",
    "The whale",
    "It was a dark and stormy night, and the sea was rough with waves.",
    "hello",
    "Queequeg was a native of Rokovoko",
    "ship",
    "There she blows! there she blows! A hump like a snow-hill!",
    "Ahab",
]
GREEDY = GenerateSection(max_new_tokens=24)


def _tiny_model(family: str, tokenizer, arch: str = "auto"):
    """A 1-layer model with large random weights: varied, position-dependent outputs (a padding or
    position bug changes them), and an eos bias so that some prompts stop early and others do not."""
    import torch

    from textgen_cli.models import role_for

    torch.manual_seed(0)
    # a prefix LM needs two layers: with one, the cached keys and values of the prefix do not depend
    # on what the prefix attended to, and reading it causally would go unnoticed
    layers = 2 if family == "prefix-lm" else 1
    model = role_for(family).build(
        ModelSection(family=family, arch=arch, layers=layers, hidden=32, heads=2, ffn=64, context=CONTEXT, dropout=0.0),
        tokenizer,
    )
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0, 0.3)
        if family == "sora":
            model.final_logits_bias[0, tokenizer.eos_token_id] = 5.0
        else:
            # the second layer of the prefix LM's model already ends some prompts early
            model.get_input_embeddings().weight[tokenizer.eos_token_id] *= 2.5 if layers == 1 else 1.0
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models decode fastest on one thread (two threads mostly wait on each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tokenizer, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """family -> (checkpoint directory, the model loaded back from it)."""
    from textgen_cli.models import load_checkpoint

    root = tmp_path_factory.mktemp("generate-models")
    out = {}
    for family in FAMILIES:
        path = root / family
        _tiny_model(family, tokenizer).save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[family] = (path, load_checkpoint(path, family, len(tokenizer)).eval())
    return out


def _argmax_loop(model, prompt_ids: list[int], max_new_tokens: int, eos: int, start: int) -> list[int]:
    """Greedy decoding the slow, obvious way: the whole sequence through the model at every step."""
    import torch

    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if model.config.is_encoder_decoder:
                logits = model(
                    input_ids=torch.tensor([prompt_ids]), decoder_input_ids=torch.tensor([[start, *new]])
                ).logits
            elif getattr(model.config, "textgen_family", None) == "prefix-lm":
                ids = prompt_ids + new
                logits = model(
                    input_ids=torch.tensor([ids]), attention_mask=_prefix_mask(len(ids), len(prompt_ids) - 1)
                ).logits
            else:
                logits = model(input_ids=torch.tensor([prompt_ids + new])).logits
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token == eos:
                break
    return new


def _prefix_mask(width: int, prefix: int):
    """A prefix LM's additive mask written out cell by cell: position q sees k when k <= q or when
    k is in the prefix (every prompt token but the last, the reply's start token)."""
    import torch

    mask = torch.full((1, 1, width, width), torch.finfo(torch.float32).min)
    for q in range(width):
        for k in range(width):
            if k <= q or k < prefix:
                mask[0, 0, q, k] = 0.0
    return mask


# ------------------------------------------------------------------ prompts


def test_chat_prompt_is_byte_for_byte_the_finetuning_template(tokenizer, tmp_path):
    from textgen_cli.objectives import IGNORE_INDEX, TruncationCount
    from textgen_cli.training.finetune import chatgpt_examples

    system = "Rewrite the King James verse in modern English."
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{family: chatgpt}}\nstages: []\nprompt: {{system: {json.dumps(system)}}}\n", encoding="utf-8"
    )
    loaded = load_recipe(str(recipe))
    source, target = (
        "And God said, Let there be light: and there was light.",
        "God said, “Let there be light,” and there was light.",
    )
    [(train_ids, labels)] = chatgpt_examples(
        [Dialogue("0", [{"role": "user", "content": source}, {"role": "assistant", "content": target}])],
        tokenizer,
        loaded,
        512,
        TruncationCount(),
    ).sequences

    prompt = build_prompt(tokenizer, source, "chatgpt", "chat", budget=512, system=loaded.recipe.prompt.system).ids
    # the finetuning sequence is exactly the prompt followed by the reply, whose first token is the first label
    assert train_ids[: len(prompt)] == prompt
    assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] != IGNORE_INDEX
    messages = [{"role": "system", "content": system}, {"role": "user", "content": source}]
    assert prompt == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    text = tokenizer.decode(prompt, skip_special_tokens=False)
    assert text == f"<s><|system|>{system}<|end|><|user|>{source}<|end|><|assistant|>"
    assert text == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_dialogue_system_turn_wins_over_the_recipe_prompt(tokenizer):
    dialogue = [{"role": "system", "content": "Own."}, {"role": "user", "content": "hi"}]
    ids = build_prompt(tokenizer, dialogue, "chatgpt", "chat", budget=512, system="Recipe.").ids
    assert tokenizer.decode(ids) == "<s><|system|>Own.<|end|><|user|>hi<|end|><|assistant|>"


@pytest.mark.parametrize("task", ["pairs", "dialogue"])
def test_sora_source_is_what_finetuning_encodes(tokenizer, tmp_path, task):
    from textgen_cli.objectives import TruncationCount
    from textgen_cli.training.finetune import sora_examples

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{family: sora}}\nstages: []\ndata: {{finetune: {{task: {task}}}}}\n", encoding="utf-8")
    loaded = load_recipe(str(recipe))
    turns = [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "How are you?"},
    ]
    examples = sora_examples(
        [Dialogue("0", [*turns, {"role": "assistant", "content": "Well."}])], tokenizer, loaded, 512, TruncationCount()
    )
    trained_source = examples.pairs[-1][0]
    fmt = prompt_format("sora", task)
    assert fmt == ("text" if task == "pairs" else "chat")
    item = turns if task == "dialogue" else "How are you?"
    assert build_prompt(tokenizer, item, "sora", fmt, budget=512).ids == trained_source
    # against references built without textgen's encoders: the tokenizer's own chat template, plain tokenizing
    if task == "pairs":
        expected = [
            tokenizer.bos_token_id,
            *tokenizer("How are you?", add_special_tokens=False)["input_ids"],
            tokenizer.eos_token_id,
        ]
        text = "<s>How are you?</s>"
    else:
        expected = [*tokenizer.apply_chat_template(turns)["input_ids"], tokenizer.eos_token_id]
        text = "<s><|user|>Hello there.<|end|><|assistant|>Hi.</s><|user|>How are you?<|end|></s>"
    assert trained_source == expected
    assert tokenizer.decode(trained_source, skip_special_tokens=False) == text


def test_prompt_formats_follow_the_training_stage():
    assert prompt_format("chatgpt", "pairs", "finetune") == "chat"
    assert prompt_format("chatgpt", "pairs", "pretrain") == "text"
    assert prompt_format("sora", "dialogue", "finetune") == "chat"
    assert prompt_format("sora", "dialogue", "pretrain") == "text"
    assert prompt_format("chatgpt", "pairs", "pretrain", requested="chat") == "chat"


# ------------------------------------------------------------------ decoding correctness


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_a_hand_written_argmax_loop(tiny, tokenizer, family):
    _, model = tiny[family]
    fmt = "chat" if family != "sora" else "text"
    results = generate_batch(
        model, tokenizer, PROMPTS, GREEDY, family, batch_size=len(PROMPTS), system="Be brief.", fmt=fmt
    )
    reasons = set()
    for prompt, result in zip(PROMPTS, results):
        ids = build_prompt(tokenizer, prompt, family, fmt, prompt_budget(model, GREEDY), system="Be brief.").ids
        expected = _argmax_loop(model, ids, GREEDY.max_new_tokens, tokenizer.eos_token_id, tokenizer.bos_token_id)
        assert result.output_ids == expected, prompt
        assert result.new_tokens == len(expected) and result.prompt_tokens == len(ids)
        assert result.output == tokenizer.decode(expected, skip_special_tokens=True)
        reasons.add(result.finish_reason)
    # the fixture is built so that the batch mixes rows that stop at eos with rows that run to the limit
    assert reasons == {"eos", "length"}


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_by_one(tiny, tokenizer, family):
    _, model = tiny[family]
    inputs = [
        *PROMPTS,
        [
            {"role": "user", "content": "Where is the whale?"},
            {"role": "assistant", "content": "At sea."},
            {"role": "user", "content": "Which sea?"},
        ],
    ]
    fmt = "chat"  # dialogues and plain prompts, of very different lengths, in one batch
    one_by_one = [generate_batch(model, tokenizer, [item], GREEDY, family, fmt=fmt)[0] for item in inputs]
    lengths = {r.prompt_tokens for r in one_by_one}
    assert len(lengths) > 4
    for size in (3, len(inputs)):
        batched = generate_batch(model, tokenizer, inputs, GREEDY, family, batch_size=size, fmt=fmt)
        assert [r.output_ids for r in batched] == [r.output_ids for r in one_by_one]
        assert [r.output for r in batched] == [r.output for r in one_by_one]
        assert [r.finish_reason for r in batched] == [r.finish_reason for r in one_by_one]


def _whole_sequence_nll(model, prompt_ids: list[int], target: list[int]) -> float:
    """The target's summed NLL the obvious way: prompt and target through the model as one unpadded
    sequence (a prefix LM with its prefix mask), cross-entropy on the target's positions."""
    import torch
    import torch.nn.functional as F

    ids = prompt_ids + target
    with torch.no_grad():
        if getattr(model.config, "textgen_family", None) == "prefix-lm":
            logits = model(
                input_ids=torch.tensor([ids]), attention_mask=_prefix_mask(len(ids), len(prompt_ids) - 1)
            ).logits
        else:
            logits = model(input_ids=torch.tensor([ids])).logits
    predicted = logits[0, len(prompt_ids) - 1 : len(ids) - 1]
    return float(F.cross_entropy(predicted.float(), torch.tensor(target), reduction="sum"))


@pytest.mark.parametrize(
    "family, arch",
    [(f, "auto") for f in FAMILIES] + [("chatgpt", "gemma2"), ("chatgpt", "gpt2"), ("prefix-lm", "gpt2")],
)
def test_decoding_from_the_handed_prompt_cache_scores_references_and_changes_nothing(tiny, tokenizer, family, arch):
    """`on_prompts` gets each batch's prompts read into the cache that decoding goes on from: the
    replies stay exactly what decoding without it gives, and a reference scored after any row's
    cached prompt has the NLL of the prompt and reference read whole. An encoder-decoder decodes
    from no such cache, so it is never called."""
    model = tiny[family][1] if arch == "auto" else _tiny_model(family, tokenizer, arch)
    fmt = "chat" if family != "sora" else "text"
    targets = [
        [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id] for text in reversed(PROMPTS)
    ]
    plain = generate_batch(model, tokenizer, PROMPTS, GREEDY, family, batch_size=3, system="Be brief.", fmt=fmt)
    seen: list[list[int]] = []
    scored: dict[tuple[int, int], float] = {}

    def on_prompts(rows, cached):
        seen.append(list(rows))
        partners = [rows[(k + 1) % len(rows)] for k in range(len(rows))]  # own prompts, then the next row's
        own = cached.nll([targets[i] for i in rows], list(range(len(rows))))
        other = cached.nll([targets[i] for i in rows], [rows.index(j) for j in partners])
        scored.update({(i, i): v for i, v in zip(rows, own)})
        scored.update({(i, j): v for i, j, v in zip(rows, partners, other)})

    handed = generate_batch(
        model, tokenizer, PROMPTS, GREEDY, family, batch_size=3, system="Be brief.", fmt=fmt, on_prompts=on_prompts
    )
    assert [r.output_ids for r in handed] == [r.output_ids for r in plain]
    if family == "sora":
        assert seen == []
        return
    assert sorted(i for rows in seen for i in rows) == list(range(len(PROMPTS)))
    assert all(len(rows) > 1 for rows in seen[:-1])
    budget = prompt_budget(model, GREEDY)
    prompt_ids = [build_prompt(tokenizer, p, family, fmt, budget, system="Be brief.").ids for p in PROMPTS]
    assert len({(i, j) for i, j in scored if i != j}) >= len(PROMPTS) - 1
    for (i, j), value in scored.items():
        assert value == pytest.approx(_whole_sequence_nll(model, prompt_ids[j], targets[i]), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_sample(tiny, tokenizer, family):
    _, model = tiny[family]
    sampling = dataclasses.replace(GREEDY, do_sample=True, temperature=1.5, top_k=0, top_p=0.95, seed=11)
    first = [r.output_ids for r in generate_batch(model, tokenizer, PROMPTS, sampling, family, batch_size=4)]
    again = [r.output_ids for r in generate_batch(model, tokenizer, PROMPTS, sampling, family, batch_size=4)]
    other = [
        r.output_ids
        for r in generate_batch(model, tokenizer, PROMPTS, dataclasses.replace(sampling, seed=12), family, batch_size=4)
    ]
    greedy = [r.output_ids for r in generate_batch(model, tokenizer, PROMPTS, GREEDY, family, batch_size=4)]
    assert first == again
    assert first != other
    assert first != greedy


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_strings_end_the_output_before_them(tiny, tokenizer, family):
    _, model = tiny[family]
    results = generate_batch(model, tokenizer, PROMPTS, GREEDY, family, fmt="text")
    prompt, full = next((p, r) for p, r in zip(PROMPTS, results) if r.finish_reason == "length" and len(r.output) > 12)
    stop = full.output[6:9]
    expected = full.output[: full.output.index(stop)]
    settings = dataclasses.replace(GREEDY, stop=[stop, "never appears"])
    [cut] = generate_batch(model, tokenizer, [prompt], settings, family, fmt="text")
    assert cut.finish_reason == "stop"
    assert cut.output == expected
    assert cut.new_tokens < full.new_tokens
    # streaming never shows the stop string either
    chunks: list[str] = []
    streamed = generate_stream(
        model, tokenizer, build_prompt(tokenizer, prompt, family, "text", 40), settings, chunks.append
    )
    assert "".join(chunks) == streamed.output == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_shows_the_same_text_token_by_token(tiny, tokenizer, family):
    _, model = tiny[family]
    prompt = build_prompt(tokenizer, PROMPTS[0], family, "text", 40)
    chunks: list[str] = []
    stats = GenerationStats()
    result = generate_stream(model, tokenizer, prompt, GREEDY, chunks.append, stats)
    [batched] = generate_batch(model, tokenizer, [PROMPTS[0]], GREEDY, family, fmt="text")
    assert "".join(chunks) == result.output == batched.output
    assert len(chunks) > 3  # it really streamed
    assert (
        stats.new_tokens == result.new_tokens
        and stats.first_token_s is not None
        and stats.first_token_s <= stats.seconds
    )
    assert "tokens/s" in stats.line() and "time to first token" in stats.line()


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_and_repetition_controls(tiny, tokenizer, family):
    _, model = tiny[family]
    beams = dataclasses.replace(GREEDY, num_beams=3, length_penalty=1.2)
    results = generate_batch(model, tokenizer, PROMPTS[:3], beams, family, batch_size=3)
    one = [generate_batch(model, tokenizer, [p], beams, family)[0] for p in PROMPTS[:3]]
    assert [r.output_ids for r in results] == [r.output_ids for r in one]
    no_repeat = dataclasses.replace(GREEDY, no_repeat_ngram_size=2, repetition_penalty=1.3)
    for result in generate_batch(model, tokenizer, PROMPTS, no_repeat, family):
        bigrams = list(zip(result.output_ids, result.output_ids[1:]))
        assert len(bigrams) == len(set(bigrams))


# ------------------------------------------------------------------ limits and errors


def test_long_prompts_are_truncated_to_fit_or_refused(tiny, tokenizer):
    _, model = tiny["chatgpt"]
    long_text = " ".join(PROMPTS * 6)
    budget = prompt_budget(model, GREEDY)
    assert budget == CONTEXT - GREEDY.max_new_tokens
    [result] = generate_batch(model, tokenizer, [long_text], GREEDY, "chatgpt", fmt="chat", system="Be brief.")
    assert result.truncated and result.prompt_tokens == budget
    [plain] = generate_batch(model, tokenizer, [long_text], GREEDY, "chatgpt", fmt="text")
    assert plain.truncated and plain.prompt_tokens == budget
    # plain text keeps its end (that is what gets continued)
    ids = build_prompt(tokenizer, long_text, "chatgpt", "text", budget).ids
    assert tokenizer.decode(ids).endswith(long_text[-20:])
    with pytest.raises(UserError, match="generate.too_long=error"):
        generate_batch(model, tokenizer, [long_text], dataclasses.replace(GREEDY, too_long="error"), "chatgpt")
    with pytest.raises(UserError, match="leaves no room"):
        prompt_budget(model, dataclasses.replace(GREEDY, max_new_tokens=CONTEXT))
    with pytest.raises(UserError, match="at most 63"):
        prompt_budget(tiny["sora"][1], dataclasses.replace(GREEDY, max_new_tokens=CONTEXT))


def test_long_dialogues_lose_their_oldest_turns_first(tokenizer):
    turns = []
    for i in range(8):
        turns += [
            {"role": "user", "content": f"Question number {i} about the whale?"},
            {"role": "assistant", "content": f"Answer {i}: it is white."},
        ]
    turns.append({"role": "user", "content": "And the last one?"})
    prompt = build_prompt(tokenizer, turns, "chatgpt", "chat", budget=60, system="Be brief.")
    text = tokenizer.decode(prompt.ids)
    assert len(prompt.ids) <= 60 and prompt.dropped_turns > 0 and not prompt.truncated
    assert text.startswith("<s><|system|>Be brief.<|end|><|user|>")  # system stays, then a user turn
    assert text.endswith("<|user|>And the last one?<|end|><|assistant|>")
    assert "Question number 0" not in text
    with_source = build_prompt(tokenizer, turns, "sora", "chat", budget=60)
    assert len(with_source.ids) <= 60 and with_source.dropped_turns > 0
    assert tokenizer.decode(with_source.ids).endswith("<|user|>And the last one?<|end|></s>")


@pytest.mark.parametrize(
    "item, message",
    [
        ("", "empty prompt"),
        ("   \n", "empty prompt"),
        ([], "empty dialogue"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "expected a 'user' turn"),
        ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
        ([{"role": "user"}], "string fields 'role' and 'content'"),
        (42, "expected a prompt string"),
    ],
)
def test_bad_prompts_are_user_errors(tokenizer, item, message):
    with pytest.raises(UserError, match=message):
        build_prompt(tokenizer, item, "chatgpt", "chat", budget=40)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("temperature", 0.0, "for greedy decoding set generate.do_sample=false"),
        ("top_p", 1.5, "a probability in"),
        ("num_beams", 0, "a positive integer"),
        ("max_new_tokens", 0, "a positive integer"),
        ("min_new_tokens", 99, "generate.max_new_tokens=64"),
        ("stop", [""], "non-empty strings"),
        ("batch_size", 0, "a positive integer"),
    ],
)
def test_bad_settings_are_user_errors(tmp_path, key, value, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{family: chatgpt}}\nstages: []\ngenerate: {{{key}: {json.dumps(value)}}}\n", encoding="utf-8"
    )
    with pytest.raises(UserError, match=f"r.yaml: key 'generate.{key}': expected .*{message}"):
        load_recipe(str(recipe))


def test_read_inputs_formats_and_errors(tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(
        '{"id": "a", "prompt": "one"}\n\n"two"\n[{"role": "user", "content": "three"}]\n{"source": "four"}\n{"messages": [{"role": "user", "content": "five"}]}\n',
        encoding="utf-8",
    )
    records = read_inputs(str(jsonl))
    assert [r.item for r in records] == [
        "one",
        "two",
        [{"role": "user", "content": "three"}],
        "four",
        [{"role": "user", "content": "five"}],
    ]
    assert records[0].id == "a" and records[1].where == f"{jsonl}:3"
    text = tmp_path / "in.txt"
    text.write_text("first\n\n{not json}\n", encoding="utf-8")
    assert [r.item for r in read_inputs(str(text))] == ["first", "{not json}"]
    mixed = io.StringIO('plain words\n{"prompt": "json"}\n')
    assert [r.item for r in read_inputs("-", mixed)] == ["plain words", "json"]
    for content, message in [
        ('{"prompt": ""}\n', r"in\.jsonl:1: empty prompt"),
        ('{"text": "x"}\n', "none of the fields"),
        ("{oops\n", r"in\.jsonl:1: not valid JSON"),
        ("\n\n", "no prompts found"),
    ]:
        jsonl.write_text(content, encoding="utf-8")
        with pytest.raises(UserError, match=message):
            read_inputs(str(jsonl))
    (tmp_path / "prompts.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError, match="unknown input format"):
        read_inputs(str(tmp_path / "prompts.csv"))
    with pytest.raises(UserError, match="does not exist"):
        read_inputs(str(tmp_path / "missing.jsonl"))


# ------------------------------------------------------------------ models, runs and chat sessions


def _fake_run(root: Path, checkpoint: Path, name: str, stage: str, system: str) -> None:
    import shutil

    final = root / "runs" / name / stage / "final"
    shutil.copytree(checkpoint, final)
    recipe = f"model: {{family: chatgpt, context: {CONTEXT}}}\nstages: []\nprompt: {{system: {json.dumps(system)}}}\ngenerate: {{max_new_tokens: 16}}\n"
    (final.parent / "recipe.yaml").write_text(recipe, encoding="utf-8")
    (final.parent / "summary.json").write_text(json.dumps({"stage": stage}), encoding="utf-8")


@pytest.fixture(scope="module")
def workdir(tiny, tmp_path_factory) -> Path:
    """A folder with a recipe, its pretrain and finetune runs (the tiny chatgpt model), and a run-less recipe."""
    root = tmp_path_factory.mktemp("generate-runs")
    _fake_run(root, tiny["chatgpt"][0], "tiny", "pretrain", "Pretrain system.")
    (root / "tiny.yaml").write_text(
        f"model: {{family: chatgpt, context: {CONTEXT}}}\nstages: []\nprompt: {{system: Be brief.}}\ngenerate: {{max_new_tokens: 16}}\n",
        encoding="utf-8",
    )
    (root / "untrained.yaml").write_text("model: {family: sora}\nstages: []\n", encoding="utf-8")
    return root


def test_recipe_model_is_the_latest_trained_one(workdir, tiny, monkeypatch):
    monkeypatch.chdir(workdir)
    generator = load_generator("tiny.yaml", None)
    assert generator.stage == "pretrain" and generator.fmt == "text"  # only pretrain is trained yet
    _fake_run(workdir, tiny["chatgpt"][0], "tiny", "finetune", "Finetune system.")
    try:
        generator = load_generator("tiny.yaml", None, overrides=["generate.seed=5"])
        assert generator.stage == "finetune" and generator.fmt == "chat"
        assert (
            generator.system == "Be brief." and generator.settings.seed == 5 and generator.settings.max_new_tokens == 16
        )
        assert load_generator("tiny.yaml", None, stage="pretrain").stage == "pretrain"
        # --model alone: the settings and system prompt of the run that trained it
        beside = load_generator(None, str(workdir / "runs" / "tiny" / "finetune" / "final"))
        assert beside.system == "Finetune system." and beside.fmt == "chat" and beside.settings.max_new_tokens == 16
        # a bare checkpoint directory: schema defaults
        bare = load_generator(None, str(tiny["sora"][0]), overrides=["generate.max_new_tokens=8"])
        assert bare.family == "sora" and bare.system == "" and bare.settings.max_new_tokens == 8 and bare.fmt == "text"
    finally:
        import shutil

        shutil.rmtree(workdir / "runs" / "tiny" / "finetune")
    with pytest.raises(UserError, match=r"no trained model.*textgen pretrain --recipe untrained.yaml"):
        load_generator("untrained.yaml", None)
    with pytest.raises(UserError, match="expected one of pretrain, finetune"):
        load_generator("tiny.yaml", None, stage="final")
    with pytest.raises(UserError, match="is a `chatgpt` model, but the recipe's model.family is `sora`"):
        load_generator("untrained.yaml", str(tiny["chatgpt"][0]))


def _generator(tiny, tokenizer, family: str, **settings) -> Generator:
    path, model = tiny[family]
    section = dataclasses.replace(GenerateSection(), **{"max_new_tokens": 12, **settings})
    return Generator(
        model=model,
        tokenizer=tokenizer,
        family=family,
        fmt="chat",
        task="dialogue",
        system="Be brief." if family != "sora" else "",
        settings=section,
        path=path,
        stage="finetune",
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_session_keeps_history_and_commands(tiny, tokenizer, tmp_path, family):
    generator = _generator(tiny, tokenizer, family)
    out, err = io.StringIO(), io.StringIO()
    saved = tmp_path / "conversation.jsonl"
    lines = f"hello\n\nthe whale\n/save {saved}\n/reset\n/system Speak like Ahab.\nagain\n/nope\n/exit\nnot read\n"
    stats = run_chat(generator, io.StringIO(lines), out, err, interactive=False)
    replies = out.getvalue().split("\n")[:-1]
    assert len(replies) == 3 and stats.prompts == 3
    conversation = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    system = [{"role": "system", "content": "Be brief."}] if family != "sora" else []
    assert [(m["role"], m["content"]) for m in conversation[len(system) :]] == [
        ("user", "hello"),
        ("assistant", replies[0]),
        ("user", "the whale"),
        ("assistant", replies[1]),
    ]
    # the second reply was generated from the whole history, exactly as a batch dialogue would be
    [expected] = generate_batch(
        generator.model,
        tokenizer,
        [[*conversation[len(system) : -1]]],
        dataclasses.replace(generator.settings, seed=generator.settings.seed + 1),
        family,
        fmt="chat",
        system=generator.system,
    )
    assert replies[1] == expected.output
    assert "conversation cleared" in err.getvalue() and "unknown command '/nope'" in err.getvalue()
    assert "system prompt set" in err.getvalue()


def test_chat_session_trims_the_oldest_turns_and_says_so(tiny, tokenizer):
    generator = _generator(tiny, tokenizer, "chatgpt", max_new_tokens=30)  # 34 tokens left for the prompt
    session = ChatSession(generator, io.StringIO(), io.StringIO())
    for text in [
        "Call me Ishmael.",
        "Some years ago, never mind how long precisely",
        "having little or no money in my purse",
        "and the last",
    ]:
        session.handle(text)
    assert len(session.history) == 8  # the whole history is kept (and /save writes it all)
    assert "oldest turns are left out" in session.err.getvalue()


# ------------------------------------------------------------------ the command line
#
# Every `textgen` process pays a few seconds to import torch and transformers, so the module starts
# them all at once (in threads) and each test checks its own.


SAMPLING = ["generate.max_new_tokens=9", "generate.do_sample=true", "generate.temperature=0.7", "generate.seed=3"]
DIALOGUE = [{"role": "user", "content": "Where is the whale?"}]
ERRORS = {
    "empty-prompt": (["--prompt", ""], "", "--prompt: empty prompt"),
    "unknown-key": (["--prompt", "hi", "generate.temprature=0.7"], "", "did you mean 'generate.temperature'"),
    "bad-value": (
        ["--prompt", "hi", "generate.temperature=0"],
        "",
        "command line override: key 'generate.temperature'",
    ),
    "bad-type": (["--prompt", "hi", "generate.top_k=lots"], "", "generate.top_k"),
    "two-modes": (["--prompt", "hi", "--chat"], "", "cannot be combined"),
    "stage-and-model": (["--prompt", "hi", "--stage", "pretrain"], "", "cannot be combined with --model"),
    "empty-stdin": ([], "", "stdin: no prompts found"),
    "bad-stdin": ([], "{broken\n", "stdin:1: not valid JSON"),
    "dialogue-ends-with-reply": (
        [],
        json.dumps([*DIALOGUE, {"role": "assistant", "content": "x"}]) + "\n",
        "stdin:1: the dialogue ends with a 'assistant' turn",
    ),
    "missing-input": (["--input", "missing.jsonl"], "", "input file 'missing.jsonl' does not exist"),
    "bad-output-dir": (
        ["--input", "x.jsonl", "--output", "no/such/dir/out.jsonl"],
        "",
        "the folder 'no/such/dir' does not exist",
    ),
    "output-without-batch": (["--prompt", "hi", "--output", "o.jsonl"], "", "--output is for batch mode"),
}
NO_MODEL_ERRORS = {
    "no-recipe-no-model": (["--prompt", "hi"], "give --recipe NAME"),
    "untrained-recipe": (["-r", "untrained.yaml", "--prompt", "hi"], "has no trained model"),
    "missing-model-dir": (["--model", "nope", "--prompt", "hi"], "model directory 'nope' does not exist"),
}


@pytest.fixture(scope="module")
def cli(tiny, tokenizer, tmp_path_factory) -> dict[str, object]:
    """name -> a future of the finished `textgen generate` process."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("generate-cli")
    _fake_run(root, tiny["chatgpt"][0], "tiny", "pretrain", "Pretrain system.")
    (root / "tiny.yaml").write_text(
        f"model: {{family: chatgpt, context: {CONTEXT}}}\nstages: []\ngenerate: {{max_new_tokens: 16}}\n",
        encoding="utf-8",
    )
    (root / "untrained.yaml").write_text("model: {family: sora}\nstages: []\n", encoding="utf-8")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS))
        + json.dumps({"id": "d", "messages": DIALOGUE})
        + "\n",
        encoding="utf-8",
    )
    chatgpt, sora = str(tiny["chatgpt"][0]), str(tiny["sora"][0])
    specs = {
        "single": (["-r", "tiny.yaml", "--prompt", PROMPTS[2]], ""),
        "json": (["--model", sora, "--prompt", PROMPTS[0], "--json", *SAMPLING], ""),
        "stdin": (
            ["--model", chatgpt, "generate.max_new_tokens=5"],
            "first prompt\n\nsecond one\n" + json.dumps(DIALOGUE) + "\n",
        ),
        "chat": (
            ["--model", chatgpt, "--chat", "generate.max_new_tokens=6"],
            f"hello\n/reset\nhi again\n/save {root / 'chat.jsonl'}\n",
        ),
        "batch": (
            [
                "--model",
                chatgpt,
                "--input",
                str(prompts),
                "--output",
                str(root / "out.jsonl"),
                "generate.max_new_tokens=24",
                "generate.batch_size=3",
            ],
            "",
        ),
        **{name: (["--model", chatgpt, *args], stdin) for name, (args, stdin, _) in ERRORS.items()},
        **{name: (args, "") for name, (args, _) in NO_MODEL_ERRORS.items()},
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(textgen, ["generate", *args], root, stdin=stdin) for name, (args, stdin) in specs.items()
        }
        futures["root"] = root  # type: ignore[assignment]
        yield futures


def test_cli_single_prompt_streams_the_greedy_reply(cli, tiny, tokenizer):
    result = ok(cli["single"].result())
    settings = dataclasses.replace(GREEDY, max_new_tokens=16)
    [expected] = generate_batch(
        tiny["chatgpt"][1], tokenizer, [PROMPTS[2]], settings, "chatgpt", fmt="text"
    )  # a pretrain model continues text
    assert result.stdout == expected.output + "\n"
    assert "tokens/s" in result.stderr and "time to first token" in result.stderr


def test_cli_json_prompt_with_overrides_is_reproducible(cli, tiny, tokenizer):
    record = json.loads(ok(cli["json"].result()).stdout)
    assert record["prompt"] == PROMPTS[0] and 0 < record["output_tokens"] <= 9
    assert record["settings"]["do_sample"] is True and record["settings"]["temperature"] == 0.7
    # same seed, same output, in another process
    settings = dataclasses.replace(GenerateSection(), max_new_tokens=9, do_sample=True, temperature=0.7, seed=3)
    [expected] = generate_batch(tiny["sora"][1], tokenizer, [PROMPTS[0]], settings, "sora", fmt="text")
    assert record["output"] == expected.output and record["output_tokens"] == expected.new_tokens


def test_cli_batch_jsonl_in_and_out(cli, tiny, tokenizer):
    result = ok(cli["batch"].result())
    records = [json.loads(line) for line in (cli["root"] / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [*range(len(PROMPTS)), "d"]
    assert records[-1]["messages"] == DIALOGUE and records[0]["prompt"] == PROMPTS[0]
    # a bare checkpoint (no recipe beside it): chat format, no system prompt
    expected = generate_batch(tiny["chatgpt"][1], tokenizer, [*PROMPTS, DIALOGUE], GREEDY, "chatgpt", fmt="chat")
    assert [r["output"] for r in records] == [e.output for e in expected]
    assert [r["output_tokens"] for r in records] == [e.new_tokens for e in expected]
    assert [r["prompt_tokens"] for r in records] == [e.prompt_tokens for e in expected]
    assert [r["finish_reason"] for r in records] == [e.finish_reason for e in expected]
    assert all(r["settings"]["batch_size"] == 3 and r["settings"]["max_new_tokens"] == 24 for r in records)
    assert "generate step 3/3" in result.stderr  # progress (plain lines when not on a terminal)
    assert f"generated {sum(e.new_tokens for e in expected):,} tokens for 9 prompts" in result.stderr


def test_cli_stdin_to_stdout(cli):
    result = ok(cli["stdin"].result())
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("prompt") or r.get("messages") for r in records] == ["first prompt", "second one", DIALOGUE]
    assert all(0 < r["output_tokens"] <= 5 for r in records)


def test_cli_chat_over_stdin_until_end_of_input(cli):
    result = ok(cli["chat"].result())
    assert len(result.stdout.splitlines()) == 2
    assert "conversation cleared" in result.stderr and "tokens/s" in result.stderr
    messages = json.loads((cli["root"] / "chat.jsonl").read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["content"] == "hi again"
    assert messages[1]["content"] == result.stdout.splitlines()[1]


@pytest.mark.parametrize("name", [*ERRORS, *NO_MODEL_ERRORS])
def test_cli_errors_exit_2_without_traceback(cli, name):
    result = cli[name].result()
    message = ERRORS[name][2] if name in ERRORS else NO_MODEL_ERRORS[name][1]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")


def test_cli_help_mentions_every_mode():
    result = textgen(["generate", "--help"])
    assert result.returncode == 0
    for flag in ("--recipe", "--model", "--prompt", "--chat", "--input", "--output", "--stage", "--json"):
        assert flag in result.stdout

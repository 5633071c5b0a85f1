"""Recipes: the shipped ones validate, overrides win, and every mistake is a clear exit-2 error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from harness import REPO, textgen
from textgen_cli.core.errors import UserError
from textgen_cli.core.schema import PATH_KEYS
from textgen_cli.recipe import (
    all_keys,
    choices_of_keys,
    find_recipe,
    load_recipe,
    load_recipe_values,
    schema_markdown,
    shipped_recipes,
    shipped_recipes_dir,
)

FAMILIES = choices_of_keys()["model.family"]

DATA = "data:\n  pretrain: {train: p.txt}\n  finetune: {train: f.jsonl}\n"


def _get(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------ shipped recipes


def test_shipped_recipes_are_found():
    names = {p.name for p in shipped_recipes()}
    assert {"sora.yaml", "chatgpt.yaml"} <= names


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: p.name)
def test_shipped_recipe_validates_and_its_data_exists(path):
    loaded = load_recipe(str(path))
    assert loaded.path == path.resolve()
    if path.stem in FAMILIES:
        assert loaded.recipe.model.family == path.stem
    for dotted in PATH_KEYS:
        value = _get(loaded.recipe, dotted)
        if dotted == "model.init_from" and value == "scratch":  # random weights, not a path
            continue
        if value:
            assert Path(value).is_absolute()
            assert Path(value).exists(), f"{path.name}: {dotted} -> {value} does not exist"
    assert loaded.recipe.data.pretrain.train and loaded.recipe.data.finetune.train


def test_recipes_validate_command_accepts_every_shipped_recipe(tmp_path):
    result = textgen(["recipes", "validate", *[str(p) for p in shipped_recipes()]], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok:") == len(shipped_recipes())


# ------------------------------------------------------------------ overrides


def test_overrides_win_over_the_file():
    base = load_recipe("sora")
    loaded = load_recipe("sora", ["model.layers=3", "train.lr=5e-4", "run.name=other", "prompt.system=hi there"])
    assert base.recipe.model.layers == 2
    assert loaded.recipe.model.layers == 3
    assert loaded.recipe.train.lr == pytest.approx(5e-4)
    assert loaded.name == "other"
    assert loaded.recipe.prompt.system == "hi there"
    assert loaded.recipe.model.hidden == base.recipe.model.hidden  # untouched keys keep the file's value
    assert loaded.settings_hash() != base.settings_hash()


def test_override_can_fix_a_bad_value_in_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  family: sora\n  layers: many\n" + DATA)
    with pytest.raises(UserError):
        load_recipe(str(recipe))
    assert load_recipe(str(recipe), ["model.layers=3"]).recipe.model.layers == 3


def test_override_wins_through_the_cli(tmp_path):
    result = textgen(["recipes", "show", "sora", "model.layers=5", "train.batch_size=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["model"]["layers"] == 5
    assert shown["train"]["batch_size"] == 3
    assert shown["model"]["family"] == "sora"


def test_print_recipe_applies_overrides(tmp_path):
    result = textgen(["pretrain", "--recipe", "chatgpt", "--print-recipe", "model.heads=8"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["heads"] == 8
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.layrs=3", "model.layers"),
        ("trian.lr=1e-3", "did you mean 'train'"),
        ("model.layers=x", "model.layers"),
        ("train.lr=-1", "train.lr"),
    ],
)
def test_bad_override_is_blamed_on_the_command_line(override, key):
    with pytest.raises(UserError) as info:
        load_recipe("sora", [override])
    message = str(info.value)
    assert message.startswith("command line override")
    assert key in message


# ------------------------------------------------------------------ errors through the CLI


def test_typo_key_names_file_and_key_with_suggestion(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model:\n  family: sora\n  layrs: 3\n" + DATA)
    result = textgen(["pretrain", "--recipe", str(recipe)], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(recipe) in result.stderr
    assert "model.layrs" in result.stderr
    assert "did you mean 'model.layers'" in result.stderr
    assert result.stdout == ""


def test_debug_shows_the_traceback(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model:\n  family: sora\n  layrs: 3\n" + DATA)
    result = textgen(["pretrain", "--recipe", str(recipe), "--debug"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "did you mean 'model.layers'" in result.stderr


def test_typo_in_a_cli_override_is_blamed_on_the_command_line(tmp_path):
    result = textgen(["pretrain", "--recipe", "sora", "model.layrs=3"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "command line override" in result.stderr
    assert "did you mean 'model.layers'" in result.stderr


BAD_RECIPES = {
    # name: (recipe text, strings the message must contain besides the file name)
    "wrong-type": ("model:\n  family: sora\n  layers: many\n" + DATA, ["model.layers", "integer", "many"]),
    "wrong-type-number": ("model:\n  family: sora\ntrain:\n  lr: fast\n" + DATA, ["train.lr", "number"]),
    "section-not-mapping": ("model: sora\n" + DATA, ["'model'"]),
    "missing-family": ("model:\n  layers: 2\n" + DATA, ["model.family", "required"]),
    "no-model-at-all": (DATA, ["model.family"]),
    "yaml-syntax": ("model:\n  family: sora\n layers: 2\n" + DATA, ["YAML", "line 3"]),
    "negative-lr": ("model:\n  family: sora\ntrain:\n  lr: -0.001\n" + DATA, ["train.lr", "-0.001"]),
    "heads-not-dividing-hidden": ("model:\n  family: sora\n  hidden: 30\n  heads: 4\n" + DATA, ["model.heads", "30"]),
    "context-too-short": ("model:\n  family: chatgpt\n  context: 4\n" + DATA, ["model.context", "8"]),
    "unknown-family": ("model:\n  family: gpt\n" + DATA, ["model.family", "sora", "chatgpt", "'gpt'"]),
    "interpolation-missing-key": (
        "model:\n  family: sora\n  hidden: ${model.hiden}\n" + DATA,
        ["model.hidden", "model.hiden"],
    ),
    "typo-nested": (
        "model:\n  family: sora\ndata:\n  pretrain: {train: p.txt, validaton: v.txt}\n  finetune: {train: f.jsonl}\n",
        ["data.pretrain.validaton", "did you mean 'data.pretrain.validation'"],
    ),
    "typo-top-level": ("model:\n  family: sora\ntrian:\n  lr: 0.1\n" + DATA, ["trian", "did you mean 'train'"]),
    # checked when the recipe loads, not when LoRA is attached after the data is read
    "lora-dropout": (
        "model:\n  family: chatgpt\n  lora: {rank: 4, dropout: 1.5}\n" + DATA,
        ["model.lora.dropout", "1.5"],
    ),
    "lora-rank": ("model:\n  family: chatgpt\n  lora: {rank: -2}\n" + DATA, ["model.lora.rank", "-2"]),
}


def test_recipes_validate_rejects_an_invalid_lora_section(tmp_path):
    recipe = tmp_path / "lora.yaml"
    recipe.write_text("model:\n  family: chatgpt\n  lora: {rank: 4, alpha: 0}\n" + DATA, encoding="utf-8")
    result = textgen(["recipes", "validate", str(recipe)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "model.lora.alpha" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", sorted(BAD_RECIPES))
def test_bad_recipe_exits_2_naming_file_and_key(tmp_path, name):
    text, expected = BAD_RECIPES[name]
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(text, encoding="utf-8")
    result = textgen(["pretrain", "--recipe", str(recipe)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert str(recipe) in result.stderr
    for fragment in expected:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


@pytest.mark.parametrize("context", [8, 16, 32, 64])
def test_small_contexts_validate_with_default_settings(tmp_path, context):
    """Only context < 8 is an error; no other key's default may make a small context invalid."""
    recipe = tmp_path / "small.yaml"
    recipe.write_text(
        f"model:\n  family: chatgpt\n  layers: 1\n  hidden: 32\n  heads: 2\n  ffn: 64\n  context: {context}\n" + DATA
    )
    assert load_recipe(str(recipe)).recipe.model.context == context
    assert load_recipe("sora", [f"model.context={context}"]).recipe.model.context == context


def test_interpolation_to_an_existing_key_works(tmp_path):
    recipe = tmp_path / "interp.yaml"
    recipe.write_text("model:\n  family: sora\n  hidden: 64\n  ffn: ${model.hidden}\n" + DATA)
    assert load_recipe(str(recipe)).recipe.model.ffn == 64


def test_unknown_recipe_name_exits_2(tmp_path):
    result = textgen(["pretrain", "--recipe", "no-such-recipe"], cwd=tmp_path)
    assert result.returncode == 2
    assert "no-such-recipe" in result.stderr and "sora.yaml" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ keys reference


def test_schema_markdown_lists_every_key():
    table = schema_markdown()
    for key in all_keys():
        assert f"| `{key}` |" in table
    assert "| `model.family` | a string | `required` |" in table


def test_recipes_keys_prints_schema_markdown(tmp_path):
    result = textgen(["recipes", "keys"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == schema_markdown()


def test_docs_recipes_md_is_in_sync_with_the_schema():
    doc = REPO / "docs" / "recipes.md"
    assert doc.is_file(), "docs/recipes.md is missing"
    match = re.search(r"<!-- keys:start -->\n(.*?)<!-- keys:end -->", doc.read_text(encoding="utf-8"), re.S)
    assert match, "docs/recipes.md lacks the <!-- keys:start --> ... <!-- keys:end --> block"
    assert match.group(1).strip() == schema_markdown().strip(), "regenerate the block with `textgen recipes keys`"


# ------------------------------------------------------------------ finding recipes and their paths


@pytest.mark.parametrize("name", ["sora", "sora.yaml", "chatgpt"])
def test_bare_shipped_name_resolves_from_an_empty_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    stem = name.removesuffix(".yaml")
    assert find_recipe(name) == (shipped_recipes_dir() / f"{stem}.yaml").resolve()
    result = textgen(["recipes", "show", name], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["model"]["family"] == stem
    # the shipped recipe's data paths point into the shipped data, not into the cwd
    train = Path(shown["data"]["pretrain"]["train"])
    assert train.is_absolute() and train.is_file()
    assert train.is_relative_to(shipped_recipes_dir().resolve())


def test_a_local_file_wins_over_the_shipped_recipe(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    (tmp_path / "sora.yaml").write_text("model:\n  family: chatgpt\n" + DATA)
    monkeypatch.chdir(tmp_path)
    loaded = load_recipe("sora.yaml")
    assert loaded.path == (tmp_path / "sora.yaml").resolve()
    assert loaded.recipe.model.family == "chatgpt"


def test_relative_data_paths_resolve_against_the_recipe_file(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    folder = tmp_path / "somewhere" / "recipes"
    folder.mkdir(parents=True)
    recipe = folder / "mine.yaml"
    recipe.write_text(
        "model:\n  family: sora\ndata:\n  pretrain: {train: data/p.txt, validation: ../v.txt}\n  finetune: {train: f.jsonl}\ntokenizer: {path: tok}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_recipe(str(recipe))
    r = loaded.recipe
    assert Path(r.data.pretrain.train) == folder / "data" / "p.txt"
    assert Path(r.data.pretrain.validation) == tmp_path / "somewhere" / "v.txt"
    assert Path(r.data.finetune.train) == folder / "f.jsonl"
    assert Path(r.tokenizer.path) == folder / "tok"
    assert loaded.name == "mine"
    assert loaded.run_dir("pretrain") == Path("runs") / "mine" / "pretrain"


def test_relative_recipe_path_from_the_cwd(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.yaml").write_text("model:\n  family: sora\n" + DATA)
    monkeypatch.chdir(tmp_path)
    loaded = load_recipe("sub/r.yaml")
    assert Path(loaded.recipe.data.pretrain.train) == tmp_path / "sub" / "p.txt"


def test_values_in_hand_load_like_the_same_file(tmp_path):
    """load_recipe_values (no file read) gives what load_recipe gives for a file of those values."""
    values = {
        "model": {"family": "chatgpt"},
        "stages": [],
        "data": {"finetune": {"test": "t.jsonl"}},
        "generate": {"top_p": 0.5},
    }
    file = tmp_path.resolve() / "r.yaml"  # load_recipe resolves the path it finds
    file.write_text(yaml.safe_dump(values), encoding="utf-8")
    overrides = ["generate.seed=3"]
    assert load_recipe_values(values, file, overrides).to_dict() == load_recipe(str(file), overrides).to_dict()
    assert load_recipe_values(values, file).recipe.data.finetune.test == str(file.parent / "t.jsonl")
    for bad, message in [
        ({"temprature": 0.5}, "unknown key 'generate.temprature'; did you mean 'generate.temperature'?"),
        ({"top_p": 2.0}, "key 'generate.top_p': expected a probability in (0, 1], got 2.0"),
        ({"top_k": "lots"}, "key 'generate.top_k': expected an integer, got 'lots'"),
    ]:
        file.write_text(yaml.safe_dump({**values, "generate": bad}), encoding="utf-8")
        with pytest.raises(UserError) as from_file:
            load_recipe(str(file))
        with pytest.raises(UserError) as from_values:
            load_recipe_values({**values, "generate": bad}, file)
        assert str(from_values.value) == str(from_file.value) == f"{file}: {message}"


# ------------------------------------------------------------------ the stage table and the stage hash


def _stage_hash_before_the_table(loaded, stage: str) -> str:
    """LoadedRecipe.stage_hash as it was written before stages.py (inline keys and chain): runs made
    then must still be found, so the hash must not change."""
    import hashlib
    import json

    keys = {
        "pretrain": ["model", "tokenizer", "data.pretrain", "data.max_examples", "train", "pretrain"],
        "finetune": ["data.finetune", "data.too_long", "prompt", "finetune"],
        "adv-train": ["adv_train"],
    }
    values = loaded.to_dict()
    parts = {}
    chain = {"pretrain": [], "finetune": ["pretrain"], "adv-train": ["pretrain", "finetune"]}[stage]
    for name in [*chain, stage]:
        for dotted in keys[name]:
            node = values
            for key in dotted.split("."):
                node = node[key]
            parts[dotted] = node
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def test_stage_hash_is_unchanged_by_the_stage_table():
    from textgen_cli.core.stages import STAGES

    name = "sora.yaml"
    path = shipped_recipes_dir() / name
    base, finetune_changed, train_changed = (
        load_recipe(str(path), overrides)
        for overrides in ([], ["finetune.lr=1e-4", "adv_train.epsilon=0.5"], ["train.lr=1.234e-3", "prompt.system=x"])
    )
    hashes = []
    for loaded in (base, finetune_changed, train_changed):
        hashes.append({stage: loaded.stage_hash(stage) for stage in STAGES})
        for stage in STAGES:
            assert hashes[-1][stage] == _stage_hash_before_the_table(loaded, stage), (name, loaded.overrides, stage)
    # each stage's hash covers its own keys and its previous stages', nothing later
    assert hashes[0]["pretrain"] == hashes[1]["pretrain"] and hashes[0]["finetune"] != hashes[1]["finetune"]
    assert all(hashes[0][stage] != hashes[2][stage] for stage in STAGES)


def test_stage_table_entries_name_real_sections_data_and_runners():
    """Every stage's recipe section has steps and lr, its data section a train file, its hash keys
    exist, it starts from a stage listed before it, and its runner is a function of its module."""
    import ast
    import importlib.util

    from textgen_cli.core.schema import STAGES as SCHEMA_STAGES
    from textgen_cli.core.schema import Recipe
    from textgen_cli.core.stages import EVALUATED_STAGES, STAGE_TABLE, STAGES, lineage, section_of

    assert SCHEMA_STAGES == STAGES == ("pretrain", "finetune", "adv-train")
    assert EVALUATED_STAGES == ("finetune", "adv-train")
    assert [lineage(s) for s in STAGES] == [
        ["pretrain"],
        ["pretrain", "finetune"],
        ["pretrain", "finetune", "adv-train"],
    ]
    assert section_of("adv-train") == "adv_train"
    values = load_recipe(str(shipped_recipes()[0])).to_dict()
    recipe = Recipe()
    for position, (name, stage) in enumerate(STAGE_TABLE.items()):
        assert stage.name == name
        assert hasattr(getattr(recipe, stage.section), "steps") and hasattr(getattr(recipe, stage.section), "lr")
        assert hasattr(getattr(recipe.data, stage.data), "train")
        assert stage.previous is None or stage.previous in STAGES[:position]
        for dotted in stage.hash_keys:
            node = values
            for key in dotted.split("."):
                node = node[key]  # KeyError: a hash key the recipe does not have
        module, function = stage.runner.split(":")
        source = Path(importlib.util.find_spec(module).origin).read_text(
            encoding="utf-8"
        )  # not imported: no torch here
        assert function in {node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}, (
            stage.runner
        )


def _out_of_range(range_, type_):
    """A value of the key's type that `range_` refuses (the schema's ranges are all bounds, sign
    tests or lists drawn from a set)."""
    import typing

    kinds = set(typing.get_args(type_)) or {type_}
    if list in kinds or typing.get_origin(type_) is list:
        candidates = [["no-such-entry"]]
    elif float in kinds:
        candidates = [-1.0, 0.0, 11.0, 1.5, 1e39]
    else:
        candidates = [-1, 0, 11, 299, 7]
    return next(c for c in candidates if not range_.ok(c))


def _ranged_keys():
    from textgen_cli.core.schema import ModelSection, Recipe
    from textgen_cli.recipe import iter_schema, ranged_values

    types = {key: type_ for key, type_, _, _ in iter_schema()}
    return [(key, types[key], range_) for key, _, range_ in ranged_values(Recipe(model=ModelSection(family="chatgpt")))]


@pytest.mark.parametrize("key, type_, range_", _ranged_keys(), ids=[k for k, _, _ in _ranged_keys()])
def test_every_range_in_the_schema_is_checked_when_the_recipe_loads(key, type_, range_):
    """One checker for every key with a range (schema metadata): an out-of-range value is refused as
    the recipe loads, naming the key and the range, long before any training."""
    bad = _out_of_range(range_, type_)
    value = "[" + ",".join(bad) + "]" if isinstance(bad, list) else repr(bad)
    with pytest.raises(UserError, match=re.escape(f"key '{key}': expected {range_.expected}")):
        load_recipe("chatgpt.yaml", [f"{key}={value}"])

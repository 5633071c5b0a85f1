"""Datasets by name (`hf:`): a save_to_disk folder and a folder of parquet files load through
`datasets`, their columns mapped by the *_field keys and their splits by the key or `:SPLIT`; a hub
dataset that is not in the offline cache is one clear error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import moby_lines, textgen, write_recipe

PAIRS = [{"kjv": f"And it came to pass, verse {i}.", "modern": f"It happened, verse {i}."} for i in range(12)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("hubdata")
    # pairs with their own column names, saved as a DatasetDict (save_to_disk)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS[:9]), "validation": datasets.Dataset.from_list(PAIRS[9:])}
    ).save_to_disk(str(root / "verses"))
    # prose in a column called `body`, as a folder of parquet files named by split
    (root / "prose").mkdir()
    lines = [line.strip() for line in moby_lines(300) if line.strip()]
    datasets.Dataset.from_dict({"body": lines[:250]}).to_parquet(str(root / "prose" / "train.parquet"))
    datasets.Dataset.from_dict({"body": lines[250:]}).to_parquet(str(root / "prose" / "validation.parquet"))
    return root


def hub_recipe(root, **data: dict) -> Path:
    """root/hub.yaml: a 2-step run of the stage that `data` names (pretrain, if it names both)."""
    return write_recipe(
        root / "hub.yaml",
        stages=["pretrain" if "pretrain" in data else "finetune"],
        model={"context": 32},
        data=data,
        train={"batch_size": 4, "log_every": 1, "eval_every": 2, "eval_batches": 1},
        pretrain={"steps": 2},
        checkpoint={"every": 0},
    )


def test_a_save_to_disk_folder_maps_columns_and_splits(folders):
    from textgen_cli.data.readers import read_finetune_examples
    from textgen_cli.recipe import load_recipe

    recipe = hub_recipe(
        folders,
        finetune={
            "task": "pairs",
            "train": "hf:./verses",
            "validation": "hf:./verses",
            "test": "hf:./verses:train[:3]",
            "source_field": "kjv",
            "target_field": "modern",
        },
    )
    loaded = load_recipe(str(recipe))
    section = loaded.recipe.data.finetune
    # the recipe keeps the name, made explicit: the folder resolved against the recipe, the split named
    assert (
        section.train == f"hf:{folders / 'verses'}:train"
        and section.validation == f"hf:{folders / 'verses'}:validation"
    )
    train = read_finetune_examples(section, "train", None)
    assert [d.messages for d in train[:1]] == [
        [{"role": "user", "content": PAIRS[0]["kjv"]}, {"role": "assistant", "content": PAIRS[0]["modern"]}]
    ]
    assert len(train) == 9 and len(read_finetune_examples(section, "validation", None)) == 3
    assert len(read_finetune_examples(section, "test", None)) == 3  # datasets' split slicing


def test_pretrain_reads_a_folder_of_parquet_files_through_the_cli(folders):
    recipe = hub_recipe(
        folders,
        pretrain={"train": "hf:./prose", "validation": "hf:./prose", "text_field": "body"},
        finetune={"train": "hf:./verses", "source_field": "kjv", "target_field": "modern"},
    )
    result = textgen(["pretrain", "--recipe", str(recipe), "--json"], cwd=folders)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["train_examples"] > 0


def test_a_missing_column_names_the_dataset_and_the_key(folders):
    from textgen_cli.core.errors import UserError
    from textgen_cli.data.readers import read_finetune_examples
    from textgen_cli.recipe import load_recipe

    section = load_recipe(str(hub_recipe(folders, finetune={"train": "hf:./verses"}))).recipe.data.finetune
    with pytest.raises(
        UserError,
        match=rf"^hf:{folders / 'verses'}:train: records have no field 'source' \(set by data.finetune.source_field\); fields found: kjv, modern$",
    ):
        read_finetune_examples(section, "train", None)


def test_an_unknown_split_is_named(folders):
    from textgen_cli.core.errors import UserError
    from textgen_cli.data.readers import read_finetune_examples
    from textgen_cli.recipe import load_recipe

    section = load_recipe(str(hub_recipe(folders, finetune={"train": "hf:./verses:dev"}))).recipe.data.finetune
    with pytest.raises(
        UserError, match=rf"^dataset '{folders / 'verses'}' has no split 'dev'; splits found: train, validation$"
    ):
        read_finetune_examples(section, "train", None)


def test_a_hub_dataset_missing_from_the_offline_cache_exits_2_naming_it(folders):
    recipe = hub_recipe(folders, pretrain={"train": "hf:acme/no-such-verses"})
    result = textgen(["pretrain", "--recipe", str(recipe)], cwd=folders)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "error: dataset 'acme/no-such-verses' is not in the local datasets cache, and textgen runs offline; download it once with "
        "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 and the same command, or point to a local copy (hf:/path/to/folder)"
    )
    assert "Traceback" not in result.stderr

"""Load a recipe file, apply command-line overrides and validate everything against `schema.py`.

Every error names the recipe file (or the command line) and the dotted key, says what was
expected, and suggests the closest valid key for a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from textgen_cli.core.errors import UserError
from textgen_cli.core.files import RECIPE_FILE
from textgen_cli.core.loaded_recipe import LoadedRecipe
from textgen_cli.core.schema import CHOICES, PATH_KEYS, STAGES, ModelSection, Recipe
from textgen_cli.core.stages import STAGE_TABLE
from textgen_cli.data.readers import is_dataset, resolve_dataset_value


def shipped_recipes_dir() -> Path:
    """The shipped `recipes/` folder: packaged inside the wheel, or beside the package in a checkout."""
    packaged = Path(__file__).parent / "recipes"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "recipes"


def shipped_recipes() -> list[Path]:
    return sorted(shipped_recipes_dir().glob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """A path that exists wins; a bare name falls back to the shipped recipes (`sora` or `sora.yaml`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        raise UserError(f"recipe '{name_or_path}' is a directory; expected a .yaml file")
    if len(path.parts) == 1:
        for candidate in (shipped_recipes_dir() / name_or_path, shipped_recipes_dir() / f"{name_or_path}.yaml"):
            if candidate.is_file():
                return candidate.resolve()
    shipped = ", ".join(p.name for p in shipped_recipes()) or "none"
    raise UserError(
        f"recipe '{name_or_path}' not found: no such file, and no shipped recipe of that name (shipped: {shipped})"
    )


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> LoadedRecipe:
    path = find_recipe(name_or_path)
    return _validated(_read_yaml(path), path, overrides)


def load_recipe_values(values: dict[str, Any], path: Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """`load_recipe` for values already in hand, with the same checks and messages; no file is read.
    `path` stands for where the values come from: errors name it, its stem is the recipe's name, and
    relative paths among the values resolve against its folder."""
    return _validated(OmegaConf.create(values), path, overrides)


def _validated(values: DictConfig, path: Path, overrides: list[str] | None) -> LoadedRecipe:
    """Check the values (from `path`) with the overrides merged in, and resolve their paths."""
    overrides = list(overrides or [])
    check_keys(OmegaConf.to_container(values), Recipe, source=str(path))
    override_values = _parse_overrides(overrides)
    check_keys(OmegaConf.to_container(override_values), Recipe, source="command line override")

    # Untyped merge first, so that an override can fix a bad value in the file.
    combined = OmegaConf.merge(values, override_values)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Recipe), combined)
    except oc_errors.ValidationError as exc:
        in_overrides = OmegaConf.select(override_values, _full_key(exc), default=None) is not None
        raise UserError(_type_error_message("command line override" if in_overrides else str(path), exc)) from exc
    try:
        OmegaConf.resolve(merged)
    except (
        oc_errors.InterpolationResolutionError,
        oc_errors.InterpolationKeyError,
        oc_errors.GrammarParseError,
    ) as exc:
        raise UserError(f"{path}: key '{_full_key(exc)}': interpolation failed: {str(exc).splitlines()[0]}") from exc
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise UserError(f"{path}: key '{missing[0]}' is required but has no value")

    recipe: Recipe = OmegaConf.to_object(merged)  # type: ignore[assignment]
    override_keys = {item.split("=", 1)[0] for item in overrides}
    validate_values(recipe, source=str(path), override_keys=override_keys)
    _resolve_paths(recipe, base=path.parent, override_keys=override_keys)
    check_metrics(recipe, str(path), override_keys)
    return LoadedRecipe(recipe=recipe, path=path, overrides=overrides)


def check_metrics(recipe: Recipe, source: str, override_keys: set[str] = frozenset()) -> None:
    """Every `eval.metrics` entry names a shipped metric or an existing module, checked when the
    recipe loads: an evaluation after training must not be the first to find a typo."""
    from textgen_cli.metrics.paths import resolve_metric_path

    for entry in recipe.eval.metrics:
        try:
            resolve_metric_path(entry)
        except UserError as exc:
            where = "command line override" if "eval.metrics" in override_keys else source
            raise UserError(f"{where}: key 'eval.metrics': {exc}") from None


def load_generate_recipe(recipe: str | None, model_dir: str | None, overrides: list[str] | None = None) -> LoadedRecipe:
    """The recipe that supplies decoding settings and the system prompt (`generate`, `evaluate`):
    --recipe, else the one saved beside the --model checkpoint by its training run, else the schema
    defaults."""
    from textgen_cli.models import family_of_checkpoint  # numpy: `textgen recipes` does not need it

    if recipe is None and model_dir is None:
        raise UserError("give --recipe NAME (uses its latest trained model) or --model DIR")
    if recipe is not None:
        return load_recipe(recipe, overrides)
    path = Path(model_dir).expanduser()  # type: ignore[arg-type]
    if not path.is_dir() and not (path.is_file() and path.suffix.lower() == ".gguf"):
        raise UserError(f"model directory '{model_dir}' does not exist")
    return recipe_for_checkpoint(path, family_of_checkpoint(path), list(overrides or []))


def recipe_for_checkpoint(path: Path, family: str, overrides: list[str]) -> LoadedRecipe:
    """The recipe a textgen run saved beside the checkpoint, else the schema defaults for `family`;
    overrides applied."""
    saved = path.parent / RECIPE_FILE
    if saved.is_file():
        return load_recipe(str(saved), overrides)
    return load_recipe_values({"model": {"family": family}, "stages": []}, Path(f"{path} (schema defaults)"), overrides)


def _read_yaml(path: Path) -> DictConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        # safe_load: a recipe is data, never code.
        values = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "unknown position"
        raise UserError(
            f"{path}: {where}: YAML tags such as {exc.problem.split()[-1] if exc.problem else '!!python'} are not allowed: a recipe is plain data and cannot run code"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: YAML syntax error at {where}: {problem}") from exc
    if values is None:
        raise UserError(f"{path}: the recipe is empty; expected a mapping with at least `model.family`")
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level, got {type(values).__name__}")
    return OmegaConf.create(values)


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"command line override '{item}': expected key=value, e.g. train.lr=3e-4")
    try:
        return OmegaConf.from_dotlist(overrides)
    except Exception as exc:  # omegaconf raises several grammar errors here
        raise UserError(f"command line override: cannot parse {overrides}: {exc}") from exc


def check_keys(values: Any, schema: type, source: str, prefix: str = "") -> None:
    """Unknown keys are errors, with the closest valid key suggested."""
    if not isinstance(values, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            candidates = [f"{prefix}{name}" for name in fields] + list(all_keys())
            close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys here: {', '.join(fields)}"
            raise UserError(f"{source}: unknown key '{dotted}'{hint}")
        field_type = _field_type(schema, key)
        if dataclasses.is_dataclass(field_type):
            if not isinstance(value, dict):
                raise UserError(f"{source}: key '{dotted}' is a section; expected a mapping of keys, got {value!r}")
            check_keys(value, field_type, source, prefix=f"{dotted}.")


def _field_type(schema: type, name: str) -> Any:
    return typing.get_type_hints(schema)[name]


def iter_schema(schema: type = Recipe, prefix: str = "") -> Iterator[tuple[str, Any, Any, str]]:
    """Yield (dotted key, type, default, help) for every leaf key of the schema."""
    hints = typing.get_type_hints(schema)
    instance = schema()
    for f in dataclasses.fields(schema):
        dotted = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from iter_schema(hints[f.name], prefix=f"{dotted}.")
        else:
            yield dotted, hints[f.name], getattr(instance, f.name), f.metadata.get("help", "")


def all_keys() -> list[str]:
    return [key for key, *_ in iter_schema()]


def _full_key(exc: Exception) -> str:
    return str(getattr(exc, "full_key", "") or "?")


def _type_error_message(source: str, exc: oc_errors.ValidationError) -> str:
    key = _full_key(exc)
    expected = _expected_type(key)
    value = getattr(exc, "value", None)
    return f"{source}: key '{key}': expected {expected}, got {value!r}"


def _expected_type(dotted: str) -> str:
    for key, type_, _, _ in iter_schema():
        if key == dotted:
            return type_name(type_)
    return "a value of the schema's type"


def type_name(type_: Any) -> str:
    origin = typing.get_origin(type_)
    args = [a for a in typing.get_args(type_) if a is not type(None)]
    if origin in (list, list):
        return f"a list of {type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if args and len(args) < len(typing.get_args(type_)):  # Optional[X]
        return f"{type_name(args[0])} or null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(type_, str(type_))


def choices_of_keys() -> dict[str, tuple[str, ...]]:
    """Allowed values of the string keys: the schema's, and the families and layouts as their tables
    (models.ROLES, models.ARCHS) hold them, so that a new family or layout is one entry there."""
    from textgen_cli.models import ARCHS, ROLES

    return {**CHOICES, "model.family": tuple(ROLES), "model.arch": ("auto", *ARCHS)}


def validate_values(recipe: Recipe, source: str, override_keys: set[str] = frozenset()) -> None:
    """The one checker: every key's choices and range (schema metadata), each section's `check` for
    rules across keys, then what only the layers above core can check (perturbation specs) and the
    data each listed stage needs. The first problem is raised, worded the same way for all."""

    def fail(key: str, expected: str, value: Any) -> None:
        where = "command line override" if key in override_keys else source
        raise UserError(f"{where}: key '{key}': expected {expected}, got {value!r}")

    for key, choices in choices_of_keys().items():
        value = _get(recipe, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            fail(key, "one of " + ", ".join(choices) + hint, value)
    for key, value, range_ in ranged_values(recipe):
        if not range_.ok(value):
            fail(key, range_.expected, list(value) if isinstance(value, list) else value)
    for prefix, section in sections(recipe):
        problem = section.check() if hasattr(section, "check") else None
        if problem is not None:
            key, expected, value = problem
            fail(f"{prefix}{key}", expected, value)
    from textgen_cli.data.perturb import KINDS, parse_spec

    for spec in recipe.eval.perturb:
        try:
            parse_spec(spec)
        except ValueError as exc:
            fail("eval.perturb", f"KIND:RATE entries ({exc})", list(recipe.eval.perturb))
    for kind in recipe.adv_train.augment_kinds:
        if kind not in KINDS:
            fail(
                "adv_train.augment_kinds", "a list drawn from " + ", ".join(KINDS), list(recipe.adv_train.augment_kinds)
            )
    for stage in STAGES:
        data = STAGE_TABLE[stage].data
        if stage in recipe.stages and not getattr(recipe.data, data).train:
            raise UserError(f"{source}: key 'data.{data}.train' is required when stages include {stage}")


def sections(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The recipe and every section in it, each with its dotted prefix ('' for the recipe, 'model.', ...)."""
    yield prefix, obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from sections(value, f"{prefix}{f.name}.")


def ranged_values(recipe: Recipe) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, value, its schema Range) for every key that has a range, in schema order."""
    for prefix, section in sections(recipe):
        for f in dataclasses.fields(section):
            if "range" in f.metadata:
                yield f"{prefix}{f.name}", getattr(section, f.name), f.metadata["range"]


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _resolve_paths(recipe: Recipe, base: Path, override_keys: set[str] = frozenset()) -> None:
    """Input paths in the file are relative to the recipe file, so a run works from any folder;
    paths given on the command line are relative to the current folder, as a shell user expects."""
    recipe.eval.metrics = [
        str((base / entry).resolve()) if ("/" in entry or entry.endswith(".py")) else entry
        for entry in recipe.eval.metrics
    ]
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        owner = _get(recipe, ".".join(parents)) if parents else recipe
        value = getattr(owner, leaf)
        if value:
            root = Path.cwd() if dotted in override_keys else base
            if dotted == "model.init_from":  # may also be `scratch` or a hub id
                from textgen_cli.models.loading import resolve_init_from

                setattr(owner, leaf, resolve_init_from(value, root))
                continue
            if is_dataset(value):  # hf:NAME, a dataset (data/readers.py), not a file path
                setattr(owner, leaf, resolve_dataset_value(value, root, default_split=leaf))
                continue
            setattr(owner, leaf, str((root / Path(value).expanduser()).resolve()))


def describe(path: Path) -> str:
    """The recipe's own one-line description, without validating it."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return str(values.get("description", "")) if isinstance(values, dict) else ""
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return "(unreadable)"


def schema_markdown() -> str:
    """`docs/recipes.md`'s key reference, generated from the schema (a test keeps the file in sync)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    choices = choices_of_keys()
    ranges = {key: range_ for key, _, range_ in ranged_values(Recipe(model=ModelSection(family="chatgpt")))}
    for key, type_, default, help_ in iter_schema():
        shown = "required" if default == "???" else json.dumps(default)
        if key in choices:
            help_ += " Choices: " + ", ".join(f"`{c}`" for c in choices[key]) + "."
        if key in ranges:
            help_ += f" Accepts {ranges[key].expected}."
        lines.append(f"| `{key}` | {type_name(type_)} | `{shown}` | {help_} |")
    return "\n".join(lines) + "\n"

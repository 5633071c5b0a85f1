"""The `textgen` command line. Each verb's logic lives in its own module; this file only parses
arguments, turns errors into exit codes and prints results.

torch and transformers are imported inside the commands, so `textgen --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Annotated, Any, Callable, Optional

import typer

from textgen_cli import __version__
from textgen_cli.errors import Interrupted, TrainingDiverged, UserError

# textgen never talks to a hub: models, tokenizers, data and metrics are all local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="textgen",
    help="Train, sample and compare Transformer text generators (sora: encoder-decoder, chatgpt: decoder-only) from one recipe file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(help="List, show and check recipes.", no_args_is_help=False)
app.add_typer(recipes_app, name="recipes")

RecipeOption = Annotated[str, typer.Option("--recipe", "-r", help="Recipe file, or the name of a shipped recipe (see `textgen recipes`).")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="key=value overrides that win over the recipe file, e.g. train.lr=3e-4 model.layers=2.", show_default=False)]
PrintRecipe = Annotated[bool, typer.Option("--print-recipe", help="Print the fully resolved recipe and exit.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (logs stay on stderr).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its newest valid checkpoint (same as resume=auto).")]


def guarded(debug: bool, action: Callable[[], Any]) -> Any:
    """Exit codes: 0 success, 2 bad input (recipe, data, checkpoint, path), 1 anything else."""
    try:
        return action()
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except Interrupted as exc:
        print(f"{exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except TrainingDiverged as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        raise typer.Exit(1) from None


def _stage_command(stage: str, recipe: str, overrides: list[str] | None, print_recipe: bool, json_output: bool, debug: bool, resume: bool) -> None:
    from textgen_cli.recipe import load_recipe

    def action() -> None:
        loaded = load_recipe(recipe, [*(overrides or []), *(["resume=auto"] if resume else [])])
        if print_recipe:
            sys.stdout.write(loaded.to_yaml())
            return
        from textgen_cli.progress import quiet_libraries

        quiet_libraries()
        if stage == "pretrain":
            from textgen_cli.pretrain import run_pretrain as run
        else:
            from textgen_cli.finetune import run_finetune as run
        summary = run(loaded)
        print_summary(summary, json_output)

    guarded(debug, action)


def print_summary(summary: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print(json.dumps(summary, indent=2))
        return
    from textgen_cli.progress import format_duration

    print(
        f"{summary['stage']} finished: {summary['final_dir']}\n"
        f"  validation loss {summary['initial_val_loss']:.4f} -> {summary['final_val_loss']:.4f} (perplexity {summary['final_val_ppl']:.2f})\n"
        f"  {summary['steps']} steps, {summary['tokens']:,} tokens, {summary['tokens_per_s']:,.0f} tokens/s, "
        f"{format_duration(summary['wall_time_s'])} wall, peak memory {summary['peak_memory_mb']:,.0f} MB"
    )


@app.command()
def pretrain(
    recipe: RecipeOption,
    overrides: Overrides = None,
    resume: Resume = False,
    print_recipe: PrintRecipe = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Train a tokenizer and a model from scratch on the recipe's prose corpus (causal LM for chatgpt, text infilling for sora)."""
    _stage_command("pretrain", recipe, overrides, print_recipe, json_output, debug, resume)


@app.command()
def finetune(
    recipe: RecipeOption,
    overrides: Overrides = None,
    resume: Resume = False,
    print_recipe: PrintRecipe = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Finetune the recipe's pretrained model on its source -> target or dialogue data."""
    _stage_command("finetune", recipe, overrides, print_recipe, json_output, debug, resume)


@recipes_app.callback(invoke_without_command=True)
def recipes_list(ctx: typer.Context) -> None:
    """List the shipped recipes with their descriptions."""
    if ctx.invoked_subcommand is not None:
        return
    from textgen_cli.recipe import describe, shipped_recipes

    for path in shipped_recipes():
        print(f"{path.name:<22} {describe(path)}")


@recipes_app.command("show")
def recipes_show(recipe: Annotated[str, typer.Argument(help="Recipe file or shipped recipe name.")], overrides: Overrides = None, debug: Debug = False) -> None:
    """Print the fully resolved recipe (defaults filled in, overrides applied, paths resolved)."""
    from textgen_cli.recipe import load_recipe

    guarded(debug, lambda: sys.stdout.write(load_recipe(recipe, overrides).to_yaml()))


@recipes_app.command("validate")
def recipes_validate(recipes: Annotated[list[str], typer.Argument(help="Recipe files or shipped recipe names.")], debug: Debug = False) -> None:
    """Check recipes against the schema; exit 2 on the first invalid one."""
    from textgen_cli.recipe import load_recipe

    def action() -> None:
        for name in recipes:
            loaded = load_recipe(name)
            print(f"ok: {loaded.path}")

    guarded(debug, action)


@recipes_app.command("keys")
def recipes_keys() -> None:
    """Print every recipe key with its type, default and meaning (Markdown)."""
    from textgen_cli.recipe import schema_markdown

    sys.stdout.write(schema_markdown())


def _version(value: bool) -> None:
    if value:
        print(f"textgen {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Train, sample and compare Transformer text generators from one recipe file."""


def main() -> None:
    app()

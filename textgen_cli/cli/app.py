"""The `textgen` command line: the commands, their options and help. This file only parses arguments
and dispatches: what a command does is `actions.py`, errors into exit codes `guard.py`.

torch and transformers are imported inside the commands, so `textgen --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from textgen_cli import __version__
from textgen_cli.cli import actions
from textgen_cli.cli.guard import ROOT_FLAGS, guarded

if TYPE_CHECKING:
    pass

# Data and metrics are always local files: `datasets` and `evaluate` never need the hub. Models
# may come from it (model.init_from=owner/name, through the transformers cache), so HF_HUB_OFFLINE
# is left to the user: set it to 1 to keep textgen off the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
# the libraries' own log level follows -v / -q: progress.configure_logging

app = typer.Typer(
    name="textgen",
    help="Train, sample and compare Transformer text generators (sora: encoder-decoder, chatgpt: decoder-only) from one recipe file.",
    no_args_is_help=True,
    add_completion=True,  # textgen --install-completion / --show-completion
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(help="List, show and check recipes.", no_args_is_help=False)
app.add_typer(recipes_app, name="recipes")


def complete_recipe(incomplete: str) -> list[str]:
    """Shell completion for --recipe: the shipped recipe names (the shell completes file paths too)."""
    from textgen_cli.recipe import shipped_recipes

    return [path.name for path in shipped_recipes() if path.name.startswith(incomplete)]


RecipeOption = Annotated[
    str,
    typer.Option(
        "--recipe",
        "-r",
        help="Recipe file, or the name of a shipped recipe (see `textgen recipes`).",
        autocompletion=complete_recipe,
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="key=value overrides that win over the recipe file, e.g. train.lr=3e-4 model.layers=2.", show_default=False
    ),
]
PrintRecipe = Annotated[bool, typer.Option("--print-recipe", help="Print the fully resolved recipe and exit.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (logs stay on stderr).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Also show debug detail and the libraries' warnings (stderr).")
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Show only errors and the final result: no progress, no log lines, no warnings."
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume", help="Continue an interrupted run from its newest valid checkpoint (same as resume=auto)."
    ),
]


def _stage_command(
    stage: str,
    recipe: str,
    overrides: list[str] | None,
    print_recipe: bool,
    json_output: bool,
    debug: bool,
    resume: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    guarded(
        debug,
        lambda: actions.train_stage(
            stage, recipe, overrides or [], print_recipe=print_recipe, json_output=json_output, resume=resume
        ),
        verbose,
        quiet,
    )


@app.command()
def pretrain(
    recipe: RecipeOption,
    overrides: Overrides = None,
    resume: Resume = False,
    print_recipe: PrintRecipe = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train a tokenizer and a model from scratch on the recipe's prose corpus (causal LM for chatgpt, text infilling for sora)."""
    _stage_command("pretrain", recipe, overrides, print_recipe, json_output, debug, resume, verbose, quiet)


@app.command()
def finetune(
    recipe: RecipeOption,
    overrides: Overrides = None,
    resume: Resume = False,
    print_recipe: PrintRecipe = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Finetune the recipe's pretrained model on its source -> target or dialogue data."""
    _stage_command("finetune", recipe, overrides, print_recipe, json_output, debug, resume, verbose, quiet)


GenRecipe = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        "-r",
        help="Recipe file or shipped recipe name: its latest trained model (finetune, else pretrain) and its `generate:` settings.",
    ),
]
GenModel = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Generate from this local checkpoint directory (or .gguf file) instead (settings: --recipe, else the recipe saved beside it, else defaults).",
    ),
]
GenStage = Annotated[
    str | None,
    typer.Option(
        "--stage",
        help="Which of the recipe's trained models, by stage (default: the latest trained: adv-train, else finetune, else pretrain).",
    ),
]
GenPrompt = Annotated[str | None, typer.Option("--prompt", "-p", help="One prompt; the reply is streamed to stdout.")]
GenChat = Annotated[
    bool,
    typer.Option(
        "--chat",
        help="Interactive multi-turn chat, one message per line on stdin (/reset, /system TEXT, /save FILE, /exit).",
    ),
]
GenInput = Annotated[
    str | None,
    typer.Option("--input", "-i", help="Batch mode: prompts from a .txt (one per line) or .jsonl file ('-': stdin)."),
]
GenOutput = Annotated[
    str | None, typer.Option("--output", "-o", help="Batch mode: write JSON lines here (default: stdout).")
]


@app.command()
def generate(
    recipe: GenRecipe = None,
    overrides: Overrides = None,
    model: GenModel = None,
    stage: GenStage = None,
    prompt: GenPrompt = None,
    chat: GenChat = False,
    input_file: GenInput = None,
    output: GenOutput = None,
    print_recipe: PrintRecipe = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Generate text: one streamed prompt, a multi-turn chat, or a batch of prompts (file or stdin) to JSON lines.

    Decoding settings come from the recipe's `generate:` section; override any of them with key=value arguments, e.g. generate.do_sample=true generate.temperature=0.7.
    """
    guarded(
        debug,
        lambda: actions.generate(
            recipe,
            model,
            stage,
            overrides or [],
            prompt=prompt,
            chat=chat,
            input_file=input_file,
            output=output,
            print_recipe=print_recipe,
            json_output=json_output,
        ),
        verbose,
        quiet,
    )


@app.command("adv-train")
def adv_train(
    recipe: RecipeOption,
    overrides: Overrides = None,
    resume: Resume = False,
    print_recipe: PrintRecipe = False,
    json_output: JsonOutput = False,
    debug: Debug = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Harden the finetuned model: L = L_clean + lambda * L_adv with FGM, PGD, FreeLB or R3F on the input embeddings, plus optional perturbed-text augmentation."""
    _stage_command("adv-train", recipe, overrides, print_recipe, json_output, debug, resume, verbose, quiet)


@app.command()
def evaluate(
    recipe: RecipeOption,
    overrides: Overrides = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Evaluate this local checkpoint directory (or .gguf file) instead of the recipe's latest trained model.",
        ),
    ] = None,
    stage: Annotated[
        str | None,
        typer.Option(
            "--stage",
            help="Which of the recipe's models: pretrain, finetune or adv-train (default: the latest trained: adv-train, else finetune, else pretrain).",
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="train, validation or test (default: the recipe's eval.split).")
    ] = None,
    perturb: Annotated[
        list[str] | None,
        typer.Option(
            "--perturb", help="Also score perturbed sources, KIND:RATE (repeatable), e.g. char:0.1 word_drop:0.1."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Folder for eval.json and predictions.jsonl (default: the model's run directory)."
        ),
    ] = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Score a trained model on a split: BLEU, chrF, ROUGE, distinct-n, self-BLEU, exact match with bootstrap intervals, a baseline, bits per byte and perplexity."""
    guarded(
        debug,
        lambda: actions.evaluate(recipe, model, stage, split, perturb or [], output, overrides or [], json_output),
        verbose,
        quiet,
    )


@app.command()
def compare(
    items: Annotated[
        list[str] | None,
        typer.Argument(
            help="Finished run directories to compare (runs/NAME or runs/NAME/STAGE), and/or key=value overrides applied to every --recipe.",
            show_default=False,
        ),
    ] = None,
    recipes: Annotated[
        list[str] | None,
        typer.Option("--recipe", "-r", help="A recipe to train (what is missing) and compare; give two or more."),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            help="Repeat each recipe with N seeds (mean ± std; the leads tested by a two-level bootstrap over seeds and examples). Default: 3 with --budget, else 1.",
            show_default=False,
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="The budget every arm gets, whatever the flag order: flops=3e12,1e13 (or tokens=..., examples=...). Several values give a table per budget, the metric against FLOPs and the crossover; with a constant learning rate each arm and seed trains once.",
            show_default=False,
        ),
    ] = None,
    lr_grid: Annotated[
        str | None,
        typer.Option(
            "--lr-grid",
            help="Learning rates each arm picks from (e.g. 1e-3,2e-3,4e-3), judged on the validation split by the primary metric, never on test; the picks apply to every seed.",
            show_default=False,
        ),
    ] = None,
    arm: Annotated[
        str | None,
        typer.Option(
            "--arm",
            help="With --budget: train and evaluate only this arm (a recipe's name), every seed, and write no report. One process per arm runs the arms in parallel; the same command without --arm then reuses their runs and writes the report.",
            show_default=False,
        ),
    ] = None,
    match: Annotated[
        str | None,
        typer.Option(
            "--match", help="Give every recipe the first recipe's budget: flops or tokens (sets each stage's steps)."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Report name (default: the recipe names joined by -vs-).")
    ] = None,
    reports: Annotated[str, typer.Option("--reports", help="Folder that holds reports.")] = "reports",
    primary: Annotated[
        str,
        typer.Option(
            "--primary",
            help="The primary metric, named before the run: bleu, chrf, rougeL, exact_match, or bits_per_byte (the test references', lower is better). The other tested rows are Holm-corrected.",
        ),
    ] = "bleu",
    factors: Annotated[
        list[str] | None,
        typer.Option(
            "--factor",
            help="A setting besides the family that the arms may differ in (a name from the settings table, e.g. 'learning rate'); any other difference marks the comparison confounded.",
        ),
    ] = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train what is missing, evaluate every model on the same test examples, and write a side-by-side report (terminal table, report.md, report.html, metrics.csv, metrics.json, plots)."""
    guarded(
        debug,
        lambda: actions.compare(
            list(recipes or []),
            list(items or []),
            seeds=seeds,
            match=match,
            name=name,
            reports=reports,
            primary=primary,
            factors=list(factors or []),
            budget=budget,
            lr_grid=lr_grid,
            arm=arm,
            json_output=json_output,
        ),
        verbose,
        quiet,
    )


@recipes_app.callback(invoke_without_command=True)
def recipes_list(ctx: typer.Context) -> None:
    """List the shipped recipes with their descriptions."""
    if ctx.invoked_subcommand is not None:
        return
    from textgen_cli.recipe import describe, shipped_recipes

    for path in shipped_recipes():
        print(f"{path.name:<22} {describe(path)}")


@recipes_app.command("show")
def recipes_show(
    recipe: Annotated[str, typer.Argument(help="Recipe file or shipped recipe name.")],
    overrides: Overrides = None,
    debug: Debug = False,
) -> None:
    """Print the fully resolved recipe (defaults filled in, overrides applied, paths resolved)."""
    from textgen_cli.recipe import load_recipe

    guarded(debug, lambda: sys.stdout.write(load_recipe(recipe, overrides).to_yaml()))


@recipes_app.command("validate")
def recipes_validate(
    recipes: Annotated[list[str], typer.Argument(help="Recipe files or shipped recipe names.")], debug: Debug = False
) -> None:
    """Check recipes against the schema; exit 2 on the first invalid one."""
    guarded(debug, lambda: actions.validate_recipes(recipes))


@recipes_app.command("keys")
def recipes_keys(
    update: Annotated[
        str | None,
        typer.Option(
            "--update",
            help="Rewrite the block between <!-- keys:start --> and <!-- keys:end --> in this Markdown file instead of printing.",
        ),
    ] = None,
) -> None:
    """Print every recipe key with its type, default and meaning (Markdown)."""
    if update is None:
        from textgen_cli.recipe import schema_markdown

        sys.stdout.write(schema_markdown())
        return
    guarded(False, lambda: actions.update_keys_block(update))


def _version(value: bool) -> None:
    if value:
        print(f"textgen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train, sample and compare Transformer text generators from one recipe file."""
    ROOT_FLAGS.update(verbose=verbose, quiet=quiet)


def main() -> None:
    app()

"""The `textgen` command line. Each verb's logic lives in its own module; this file only parses
arguments, turns errors into exit codes and prints results.

torch and transformers are imported inside the commands, so `textgen --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from textgen_cli import __version__
from textgen_cli.core.errors import DiskFull, Interrupted, TrainingDiverged, UserError, WorkerDied

if TYPE_CHECKING:
    from textgen_cli.core.results import RunSummary

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


# -v / -q given before the command (`textgen -v pretrain ...`); set by root() on every invocation
_root_flags = {"verbose": False, "quiet": False}


def verbosity(verbose: bool, quiet: bool) -> str:
    verbose, quiet = verbose or _root_flags["verbose"], quiet or _root_flags["quiet"]
    if verbose and quiet:
        raise UserError("--verbose and --quiet cannot be combined; choose one")
    return "verbose" if verbose else "quiet" if quiet else "normal"


def guarded(debug: bool, action: Callable[[], Any], verbose: bool = False, quiet: bool = False) -> Any:
    """Exit codes: 0 success, 2 bad input (recipe, data, checkpoint, path), 1 anything else."""
    try:
        from textgen_cli.core.progress import configure_logging

        configure_logging(verbosity(verbose, quiet))
        return action()
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except Interrupted as exc:
        print(f"{exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except (TrainingDiverged, DiskFull, WorkerDied) as exc:
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
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training import run_stage

    def action() -> None:
        loaded = load_recipe(recipe, [*(overrides or []), *(["resume=auto"] if resume else [])])
        if print_recipe:
            sys.stdout.write(loaded.to_yaml())
            return
        if int(os.environ.get("RANK", "0")) == 0:  # rank 0 owns the run directory (RunDir.begin checks again)
            from textgen_cli.core.files import check_run_location

            # a read-only or unwritable run.root is refused before the tokenizer is trained and the data packed
            check_run_location(loaded.run_dir(stage), keep=False)
        from textgen_cli.core.progress import quiet_libraries

        quiet_libraries()
        summary = run_stage(loaded, stage)
        if int(os.environ.get("RANK", "0")) != 0:
            return  # in a distributed run only rank 0 evaluates and reports
        from textgen_cli.evaluation.after_stage import evaluate_after_stage

        report = evaluate_after_stage(loaded, stage, summary)
        evaluation = None  # the evaluation after training, for --json
        if report is not None:
            from textgen_cli.evaluation.evaluate import print_table

            evaluation = {
                "metrics": report.metrics,
                "intervals": report.intervals,
                "likelihood": report.likelihood,
                "n_examples": report.n_examples,
                "eval_time_s": report.eval_time_s,
                "file": report.files["eval"],
            }
            if not json_output:
                print_table(report, stream=sys.stderr)
        print_summary(summary, json_output, evaluation)

    guarded(debug, action, verbose, quiet)


def print_summary(summary: RunSummary, json_output: bool, evaluation: dict[str, Any] | None = None) -> None:
    """The finished stage: its summary.json as JSON on stdout (with `eval`, the evaluation after
    training, when there was one), or three lines."""
    if json_output:
        print(json.dumps(summary.to_dict() | ({"eval": evaluation} if evaluation is not None else {}), indent=2))
        return
    from textgen_cli.core.progress import format_duration

    print(
        f"{summary.stage} finished: {summary.final_dir}\n"
        f"  validation loss {summary.initial_val_loss:.4f} -> {summary.final_val_loss:.4f} (perplexity {summary.final_val_ppl:.2f})\n"
        f"  {summary.steps} steps, {summary.tokens:,} tokens, {summary.tokens_per_s:,.0f} tokens/s, "
        f"{format_duration(summary.wall_time_s)} wall, peak memory {summary.peak_memory_mb:,.0f} MB"
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

    def action() -> None:
        from textgen_cli.recipe import load_generate_recipe

        if print_recipe:
            sys.stdout.write(load_generate_recipe(recipe, model, overrides).to_yaml())
            return
        chosen = [
            name
            for name, given in (("--prompt", prompt is not None), ("--chat", chat), ("--input", input_file is not None))
            if given
        ]
        if len(chosen) > 1:
            raise UserError(f"{' and '.join(chosen)} cannot be combined; choose one mode")
        batch = input_file is not None or (not chosen and not sys.stdin.isatty())
        if not chosen and not batch:
            raise UserError(
                "nothing to generate from: give --prompt TEXT, --chat, --input FILE, or pipe prompts on stdin"
            )
        if output is not None and not batch:
            raise UserError("--output is for batch mode (--input FILE or prompts on stdin)")
        if chat and json_output:
            raise UserError("--json applies to --prompt and batch mode, not to --chat")
        if batch:
            _generate_batch(recipe, model, stage, overrides, input_file or "-", output)
            return
        from textgen_cli.cli.batch_io import InputRecord, output_record
        from textgen_cli.cli.chat_session import run_chat
        from textgen_cli.core.progress import log
        from textgen_cli.generation.decoding import GenerationStats
        from textgen_cli.generation.generate import load_generator
        from textgen_cli.generation.prompts import check_input

        if prompt is not None:
            check_input(prompt, "--prompt")  # before the model loads
        generator = load_generator(recipe, model, stage, overrides)
        if chat:
            stats = run_chat(generator, sys.stdin, sys.stdout, sys.stderr, interactive=sys.stdin.isatty())
            if stats.prompts:
                log(stats.line(mean_first_token=True))
            return
        stats = GenerationStats()
        built = generator.prompt(check_input(prompt, "--prompt"), where="--prompt")
        if built.truncated or built.dropped_turns:
            log(
                f"warning: the prompt is longer than the model's context allows ({generator.budget} tokens with generate.max_new_tokens="
                f"{generator.max_new_tokens}); it was truncated"
            )
        if json_output:
            result = generator.stream(built, lambda _: None, stats)
            record = output_record(
                InputRecord(prompt, "--prompt"), result, generator.path, generator.decoding_settings()
            )
            print(
                json.dumps(
                    {**record, "tokens_per_s": stats.tokens_per_s, "time_to_first_token_s": stats.first_token_s},
                    ensure_ascii=False,
                )
            )
        else:
            generator.stream(built, lambda text: (sys.stdout.write(text), sys.stdout.flush()), stats)
            print()
        log(stats.line())

    guarded(debug, action, verbose, quiet)


def _generate_batch(
    recipe: str | None,
    model: str | None,
    stage: str | None,
    overrides: list[str] | None,
    source: str,
    output: str | None,
) -> None:
    """Batch mode: every input line becomes one JSON line, in input order."""
    from pathlib import Path

    from textgen_cli.cli.batch_io import output_record, read_inputs
    from textgen_cli.core.progress import Reporter, log
    from textgen_cli.generation.decoding import GenerationStats
    from textgen_cli.generation.generate import load_generator
    from textgen_cli.recipe import load_generate_recipe

    if output is not None and output != "-" and not Path(output).expanduser().resolve().parent.is_dir():
        raise UserError(f"--output '{output}': the folder '{Path(output).expanduser().parent}' does not exist")
    loaded = load_generate_recipe(recipe, model, overrides)
    finetune_data = loaded.recipe.data.finetune
    records = read_inputs(source, sys.stdin, finetune_data.source_field, finetune_data.messages_field)
    generator = load_generator(recipe, model, stage, overrides, loaded=loaded)
    size = generator.batch_size
    stats = GenerationStats()
    reporter = Reporter("generate", -(-len(records) // size))
    try:
        results = generator.batch(
            [r.item for r in records],
            stats,
            on_batch=lambda done, total, batch: reporter.step(-(-done // size), {"tokens_per_s": batch.tokens_per_s}),
            labels=[r.where for r in records],
        )
    finally:
        reporter.close()
    settings = generator.decoding_settings()
    lines = "".join(
        json.dumps(output_record(r, res, generator.path, settings), ensure_ascii=False) + "\n"
        for r, res in zip(records, results)
    )
    if output is None or output == "-":
        sys.stdout.write(lines)
        sys.stdout.flush()
    else:
        Path(output).expanduser().write_text(lines, encoding="utf-8")
        log(f"wrote {len(records)} results to {output}")
    log(stats.line())


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

    def action() -> None:
        from textgen_cli.core.progress import quiet_libraries
        from textgen_cli.evaluation.evaluate import print_table, run_evaluate
        from textgen_cli.recipe import load_recipe

        loaded = load_recipe(recipe, overrides)
        quiet_libraries()
        report = run_evaluate(loaded, model, stage, split or loaded.recipe.eval.split, perturb or [], output)
        from textgen_cli.training.model_card import record_evaluation

        record_evaluation(report)  # a run's final model on the test split: its card gets the scores
        if json_output:
            print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        else:
            print_table(report)

    guarded(debug, action, verbose, quiet)


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
            "--primary", help="The primary metric, named before the run; the other tested rows are Holm-corrected."
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

    def action() -> None:
        from textgen_cli.comparison.compare import print_table, run_compare
        from textgen_cli.core.progress import quiet_libraries

        quiet_libraries()
        given = list(items or [])
        overrides = [item for item in given if "=" in item]
        runs = [item for item in given if "=" not in item]
        result = run_compare(
            list(recipes or []),
            runs,
            overrides,
            seeds,
            match,
            name,
            reports,
            primary,
            list(factors or []),
            budget,
            lr_grid,
        )
        if json_output:
            print(
                json.dumps(
                    {
                        "report": result["report"],
                        "rows": result["rows"],
                        "models": [c.label for c in result["columns"]],
                        "confounded": result["confounded"],
                        "settings": [vars(s) for s in result["settings"]],
                        "budgets": result.get("curve_record"),
                        "lr_grid": [vars(g) for g in result.get("lr_grid", [])],
                    },
                    indent=2,
                )
            )
        else:
            from textgen_cli.comparison.compare import print_budgets
            from textgen_cli.comparison.tuning import grid_lines

            if result.get("lr_grid"):
                print("\n".join(grid_lines(result["lr_grid"], result["primary"])))
            if "budgets" in result:
                print_budgets(result)
            else:
                print_table(
                    result["columns"],
                    result["rows"],
                    settings=result["settings"],
                    confounded=result["confounded"],
                    primary=result["primary"],
                    effects=result["pretraining"],
                    factors=result["factors"],
                )
            print(
                f"report: {result['report']}/report.html (also report.md, metrics.csv, metrics.json) in {result['elapsed_s']:.0f} s"
            )

    guarded(debug, action, verbose, quiet)


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
    from textgen_cli.recipe import load_recipe

    def action() -> None:
        for name in recipes:
            loaded = load_recipe(name)
            print(f"ok: {loaded.path}")

    guarded(debug, action)


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
    from textgen_cli.recipe import schema_markdown

    if update is None:
        sys.stdout.write(schema_markdown())
        return
    from pathlib import Path

    path = Path(update)
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- keys:start -->\n", "<!-- keys:end -->"
    if start not in text or end not in text:
        print(f"error: {path} has no {start.strip()} ... {end} block", file=sys.stderr)
        raise typer.Exit(2)
    head, rest = text.split(start, 1)
    path.write_text(head + start + schema_markdown() + end + rest.split(end, 1)[1], encoding="utf-8")


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
    _root_flags.update(verbose=verbose, quiet=quiet)


def main() -> None:
    app()

"""What each command does once its arguments are parsed: load the recipe, call the layer below, print
the result. `app.py` parses and dispatches to these; `guard.py` turns their errors into exit codes.

torch and transformers are imported inside the functions, so `textgen --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError

if TYPE_CHECKING:
    from textgen_cli.core.results import RunSummary


def train_stage(
    stage: str, recipe: str, overrides: list[str], *, print_recipe: bool, json_output: bool, resume: bool
) -> None:
    """`textgen pretrain / finetune / adv-train`: train the stage, evaluate it when the stage is
    evaluated, print the summary."""
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training import run_stage

    loaded = load_recipe(recipe, [*overrides, *(["resume=auto"] if resume else [])])
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
        from textgen_cli.evaluation.render import print_table

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


def generate(
    recipe: str | None,
    model: str | None,
    stage: str | None,
    overrides: list[str],
    *,
    prompt: str | None,
    chat: bool,
    input_file: str | None,
    output: str | None,
    print_recipe: bool,
    json_output: bool,
) -> None:
    """`textgen generate`: exactly one of a streamed --prompt, a --chat session, or batch mode."""
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
        raise UserError("nothing to generate from: give --prompt TEXT, --chat, --input FILE, or pipe prompts on stdin")
    if output is not None and not batch:
        raise UserError("--output is for batch mode (--input FILE or prompts on stdin)")
    if chat and json_output:
        raise UserError("--json applies to --prompt and batch mode, not to --chat")
    if batch:
        generate_batch(recipe, model, stage, overrides, input_file or "-", output)
    elif chat:
        chat_session(recipe, model, stage, overrides)
    else:
        generate_one(recipe, model, stage, overrides, prompt or "", json_output)


def chat_session(recipe: str | None, model: str | None, stage: str | None, overrides: list[str]) -> None:
    from textgen_cli.cli.chat_session import run_chat
    from textgen_cli.core.progress import log
    from textgen_cli.generation.generate import load_generator

    generator = load_generator(recipe, model, stage, overrides)
    stats = run_chat(generator, sys.stdin, sys.stdout, sys.stderr, interactive=sys.stdin.isatty())
    if stats.prompts:
        log(stats.line(mean_first_token=True))


def generate_one(
    recipe: str | None, model: str | None, stage: str | None, overrides: list[str], prompt: str, json_output: bool
) -> None:
    """One prompt, streamed to stdout (or one JSON line with --json)."""
    from textgen_cli.cli.batch_io import InputRecord, output_record
    from textgen_cli.core.progress import log
    from textgen_cli.generation.decoding import GenerationStats
    from textgen_cli.generation.generate import load_generator
    from textgen_cli.generation.prompts import check_input

    check_input(prompt, "--prompt")  # before the model loads
    generator = load_generator(recipe, model, stage, overrides)
    stats = GenerationStats()
    built = generator.prompt(check_input(prompt, "--prompt"), where="--prompt")
    if built.truncated or built.dropped_turns:
        log(
            f"warning: the prompt is longer than the model's context allows ({generator.budget} tokens with generate.max_new_tokens="
            f"{generator.max_new_tokens}); it was truncated"
        )
    if json_output:
        result = generator.stream(built, lambda _: None, stats)
        record = output_record(InputRecord(prompt, "--prompt"), result, generator.path, generator.decoding_settings())
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


def generate_batch(
    recipe: str | None,
    model: str | None,
    stage: str | None,
    overrides: list[str] | None,
    source: str,
    output: str | None,
) -> None:
    """Batch mode: every input line becomes one JSON line, in input order."""
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


def evaluate(
    recipe: str,
    model: str | None,
    stage: str | None,
    split: str | None,
    perturb: list[str],
    output: str | None,
    overrides: list[str],
    json_output: bool,
) -> None:
    """`textgen evaluate`: score the model, put the scores in its model card, print them."""
    from textgen_cli.core.progress import quiet_libraries
    from textgen_cli.evaluation.evaluate import run_evaluate
    from textgen_cli.evaluation.render import print_table
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.model_card import record_evaluation

    loaded = load_recipe(recipe, overrides)
    quiet_libraries()
    report = run_evaluate(loaded, model, stage, split or loaded.recipe.eval.split, perturb, output)
    record_evaluation(report)  # a run's final model on the test split: its card gets the scores
    if json_output:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_table(report)


def compare(
    recipes: list[str],
    items: list[str],
    *,
    seeds: int | None,
    match: str | None,
    name: str | None,
    reports: str,
    primary: str,
    factors: list[str],
    budget: str | None,
    lr_grid: str | None,
    arm: str | None,
    json_output: bool,
) -> None:
    """`textgen compare`: train what is missing, evaluate, and print the table (or its JSON)."""
    from textgen_cli.comparison.compare import run_compare
    from textgen_cli.comparison.terminal import print_budgets, print_table
    from textgen_cli.comparison.tuning import grid_lines
    from textgen_cli.core.progress import quiet_libraries

    quiet_libraries()
    overrides = [item for item in items if "=" in item]
    runs = [item for item in items if "=" not in item]
    result = run_compare(recipes, runs, overrides, seeds, match, name, reports, primary, factors, budget, lr_grid, arm)
    if "arm" in result:
        print_arm_done(result, json_output)
        return
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
        return
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


def print_arm_done(result: dict, json_output: bool) -> None:
    """`compare --arm`: which runs are trained and evaluated at which budgets; no report."""
    from textgen_cli.comparison.tuning import grid_lines

    runs = [str(loaded.run_dir(list(loaded.recipe.stages)[-1]).parent) for _, loaded, _ in result["trained"]]
    budgets = [budget.label for budget in result["budgets"]]
    if json_output:
        print(json.dumps({"arm": result["arm"], "runs": runs, "budgets": budgets}, indent=2))
        return
    if result.get("lr_grid"):
        print("\n".join(grid_lines(result["lr_grid"], result["primary"])))
    print(
        f"arm {result['arm']}: {len(runs)} run(s) trained and evaluated at {', '.join(budgets)} in "
        f"{result['elapsed_s']:.0f} s: {', '.join(runs)}; the same command without --arm writes the report"
    )


def validate_recipes(recipes: list[str]) -> None:
    from textgen_cli.recipe import load_recipe

    for name in recipes:
        print(f"ok: {load_recipe(name).path}")


def update_keys_block(update: str) -> None:
    """Rewrite the block between <!-- keys:start --> and <!-- keys:end --> of a Markdown file."""
    from textgen_cli.recipe import schema_markdown

    path = Path(update)
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- keys:start -->\n", "<!-- keys:end -->"
    if start not in text or end not in text:
        raise UserError(f"{path} has no {start.strip()} ... {end} block")
    head, rest = text.split(start, 1)
    path.write_text(head + start + schema_markdown() + end + rest.split(end, 1)[1], encoding="utf-8")

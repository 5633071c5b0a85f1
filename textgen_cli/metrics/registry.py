"""Every number an evaluation or a comparison reports, one entry each, in comparison-table order.

`textgen evaluate` reads it for the shipped metric modules (which result key becomes which row),
the rows with bootstrap intervals and the direction of each row; `textgen compare` and its report
for the rows, their groups, labels and directions. Adding a metric means one entry here (per row
it reports) plus its module `textgen_cli/metrics/<name>/<name>.py`; the comparison table then
shows it with no other change (a test checks that every entry reaches the table).

Plain data: importing this module costs nothing (the modules are loaded only to compute).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    name: str  # the key in eval.json's `metrics` (module rows) and in metrics.json / metrics.csv
    group: str  # the comparison table's group: quality, diversity, input use, cost
    label: str  # the row's label in comparison tables
    higher_is_better: bool | None  # None: a size, not a score: never ranked
    module: str | None = (
        None  # the shipped evaluate module computing it; None: computed by evaluate.py or training (see compare.values_of)
    )
    key: str | None = None  # the key of the module's result holding the number (default: `name`)
    interval: bool = (
        False  # a 95% paired-bootstrap interval in eval.json; compare tests its lead with a paired bootstrap
    )
    table: bool = True  # a row of the comparison table; False: only in eval.json, metrics.json and metrics.csv


ROWS: tuple[Row, ...] = (
    Row("bleu", "quality", "BLEU", True, module="bleu", key="score", interval=True),
    Row("chrf", "quality", "chrF", True, module="chrf", key="score", interval=True),
    Row("rouge1", "quality", "ROUGE-1", True, module="rouge"),
    Row("rouge2", "quality", "ROUGE-2", True, module="rouge"),
    Row("rougeL", "quality", "ROUGE-L", True, module="rouge", interval=True),
    Row("bits_per_byte", "quality", "bits per byte (test references)", False),
    Row("perplexity", "quality", "perplexity (test references)", False),
    Row("val_loss", "quality", "validation loss (own tokenizer)", False),
    Row("distinct_1", "diversity", "distinct-1", True, module="distinct"),
    Row("distinct_2", "diversity", "distinct-2", True, module="distinct"),
    Row("self_bleu", "diversity", "self-BLEU (lower: more diverse)", False, module="self_bleu"),
    Row("distinct_outputs_share", "diversity", "distinct outputs / distinct sources", True),
    Row("repeated_4gram_rate", "diversity", "repeated 4-gram rate (lower: fewer loops)", False),
    Row("input_bpb_true", "input use", "bits per byte, own sources (input check)", False),
    Row("input_bpb_shuffled", "input use", "bits per byte, shuffled sources", None),
    Row("input_gap", "input use", "input-use gap (shuffled - own)", True),
    Row("parameters", "cost", "parameters", None),
    Row("tokens", "cost", "training tokens (all stages)", None),
    Row("flops", "cost", "training FLOPs (estimated)", None),
    Row("wall_time_s", "cost", "training wall time (s)", False),
    Row("tokens_per_s", "cost", "training tokens/s", True),
    Row("peak_memory_mb", "cost", "peak memory (MB)", False),
    Row("generation_tokens_per_s", "cost", "generation tokens/s", True),
    # in eval.json, metrics.json and metrics.csv but not rows of the comparison table (they never were):
    # to show one, set table=True and move its entry to where its row should be
    Row("rougeLsum", "quality", "ROUGE-Lsum", True, module="rouge", table=False),
    Row("exact_match", "quality", "exact match", True, module="exact_match", table=False),
)

ROW_BY_NAME: dict[str, Row] = {row.name: row for row in ROWS}
# the shipped metric modules, in the order of their first row
METRIC_NAMES: tuple[str, ...] = tuple(dict.fromkeys(row.module for row in ROWS if row.module))
TABLE_ROWS: tuple[Row, ...] = tuple(row for row in ROWS if row.table)
# rows with a 95% paired-bootstrap interval; each is also the bootstrap's metric name (metrics/_bootstrap.py)
INTERVAL_ROWS: tuple[str, ...] = tuple(row.name for row in ROWS if row.interval)
# rows `compare --primary` can name: the two-level bootstrap tests a lead in them, over the generated
# texts (INTERVAL_ROWS) or, for bits per byte, over each test reference's NLL and bytes (stored in
# predictions.jsonl for every reference that fits the context): what dialogue is judged by
PRIMARY_ROWS: tuple[str, ...] = (*INTERVAL_ROWS, "bits_per_byte")


def module_rows(module: str) -> dict[str, str]:
    """{key of the module's result: row name} for a shipped metric module."""
    return {row.key or row.name: row.name for row in ROWS if row.module == module}


def higher_is_better(row: str) -> bool | None:
    """The direction of a row; a row not registered here (a user's own metric) counts as higher is better."""
    return ROW_BY_NAME[row].higher_is_better if row in ROW_BY_NAME else True

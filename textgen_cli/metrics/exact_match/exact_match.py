"""Exact match as a local evaluate module."""

import datasets
import evaluate

from textgen_cli.metrics import _core

_DESCRIPTION = """Fraction of predictions equal to their reference after stripping leading and trailing
whitespace on both. Case, punctuation and inner whitespace must match. Scale 0-1."""

_CITATION = ""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, one per prediction.
Returns:
    exact_match: fraction of exact matches, 0-1.
    matches, total: the counts.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return _core.exact_match(predictions, references)

"""ROUGE as a local evaluate module: rouge-score's per-example F1, averaged by us (no sampling)."""

import datasets
import evaluate

from textgen_cli.metrics import _core

_DESCRIPTION = """ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F1 (Lin 2004) from Google's rouge-score:
per-example F1 (`RougeScorer.score(reference, prediction)`), averaged with a plain mean, so the
result is deterministic (rouge-score's BootstrapAggregator samples without a seed). No stemming
by default: exact word forms are what a style-transfer model must produce. rouge-score's default
tokenizer lowercases and keeps only [a-z0-9]: curly and straight quotes both become word breaks,
so "God’s" and "God's" tokenize the same, but accented and non-Latin letters are dropped; pass
tokenizer="unicode" for such text. For rougeLsum the texts are first split into one sentence per
line. Scale 0-1."""

_CITATION = """@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew",
  booktitle = "Text Summarization Branches Out",
  year = "2004",
  pages = "74--81",
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, one per prediction.
    rouge_types: subset of ("rouge1", "rouge2", "rougeL", "rougeLsum"); all four by default.
    use_stemmer: Porter stemming of tokens longer than 3 characters (default False).
    tokenizer: "default" (rouge-score's, ASCII letters and digits) or "unicode".
Returns:
    rouge1, rouge2, rougeL, rougeLsum: mean per-example F1, 0-1.
    signature: how the scores were computed.
    per_example: {rouge type: list of per-example F1}, for bootstrap intervals.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(
        self,
        predictions,
        references,
        rouge_types=_core.ROUGE_TYPES,
        use_stemmer=_core.ROUGE_USE_STEMMER,
        tokenizer="default",
    ):
        return _core.rouge(predictions, references, rouge_types, use_stemmer, tokenizer)

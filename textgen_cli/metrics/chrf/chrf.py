"""chrF as a local evaluate module: sacrebleu's corpus chrF (0-100) with its signature."""

import datasets
import evaluate

from textgen_cli.metrics import _core

_DESCRIPTION = """Corpus-level chrF (Popovic 2015) computed by sacrebleu with its defaults
(character n-grams up to 6, no word n-grams, beta 2, whitespace removed): identical to
`sacrebleu.corpus_chrf(predictions, [references])`. Pass word_order=2 for chrF++. Scale 0-100.
Character-based, so it needs no tokenizer and handles any script. The sacrebleu signature is
returned next to the score."""

_CITATION = """@inproceedings{popovic-2015-chrf,
  title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
  author = "Popovi{\\'c}, Maja",
  booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
  year = "2015",
  pages = "392--395",
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, one per prediction.
    **kwargs: passed to `sacrebleu.metrics.CHRF` (e.g. word_order=2 for chrF++).
Returns:
    score: corpus chrF, 0-100.
    signature: sacrebleu signature string.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, **kwargs):
        return _core.chrf(predictions, references, **kwargs)

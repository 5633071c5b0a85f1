"""BLEU as a local evaluate module: sacrebleu's corpus BLEU (0-100) with its signature."""

import datasets
import evaluate

from textgen_cli.metrics import _core

_DESCRIPTION = """Corpus-level BLEU (Papineni et al. 2002) computed by sacrebleu with its defaults
(13a tokenization, mixed case, exponential smoothing, n-grams up to 4): identical to
`sacrebleu.corpus_bleu(predictions, [references])`. Scale 0-100. The sacrebleu signature is
returned next to the score; report both."""

_CITATION = """@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation",
  year = "2018",
  pages = "186--191",
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, one per prediction.
    **kwargs: passed to `sacrebleu.metrics.BLEU` (e.g. tokenize="intl", lowercase=True).
Returns:
    score: corpus BLEU, 0-100.
    signature: sacrebleu signature string.
    precisions, bp, sys_len, ref_len: BLEU's components.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
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
        return _core.bleu(predictions, references, **kwargs)

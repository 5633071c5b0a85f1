"""distinct-n as a local evaluate module: corpus-level unique n-grams / total n-grams."""

import datasets
import evaluate

from textgen_cli.metrics import _core

_DESCRIPTION = """distinct-n (Li et al. 2016), corpus level: the number of distinct n-grams over all
predictions divided by the total number of n-grams over all predictions (not a mean of
per-sentence ratios). Tokens are whitespace-separated, case-sensitive, punctuation attached
("said," and "said" differ). A prediction with fewer than n tokens contributes no n-grams.
0 when there are no n-grams at all. Scale 0-1; higher is more diverse. Needs no references."""

_CITATION = """@inproceedings{li-etal-2016-diversity,
  title = "A Diversity-Promoting Objective Function for Neural Conversation Models",
  author = "Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill",
  booktitle = "Proceedings of NAACL-HLT 2016",
  year = "2016",
  pages = "110--119",
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    orders: n-gram orders to report (default (1, 2)).
Returns:
    distinct_1, distinct_2: unique / total n-grams, 0-1.
    unique_1, total_1, unique_2, total_2: the counts.
    signature: "corpus|tok:whitespace|case:mixed".
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Distinct(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, orders=(1, 2)):
        return _core.distinct(predictions, orders)

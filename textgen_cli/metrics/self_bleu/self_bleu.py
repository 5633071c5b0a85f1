"""Self-BLEU as a local evaluate module: how similar the predictions are to each other."""

import datasets
import evaluate

from textgen_cli.metrics import _core

_DESCRIPTION = """Self-BLEU (Zhu et al. 2018, Texygen): for each prediction in a sample, sentence BLEU
(sacrebleu: 13a, exponential smoothing, effective order) against all the other sampled
predictions as references; the mean over the sample. O(N^2) in principle, so at most
max_samples (default 200) predictions are used, drawn without replacement with a seeded
numpy Generator (default seed 1234); all of them when there are fewer. Scale 0-100; lower is
more diverse. None when fewer than 2 predictions. Needs no references."""

_CITATION = """@inproceedings{zhu-2018-texygen,
  title = "Texygen: A Benchmarking Platform for Text Generation Models",
  author = "Zhu, Yaoming and Lu, Sidi and Zheng, Lei and Guo, Jiaxian and Zhang, Weinan and Wang, Jun and Yu, Yong",
  booktitle = "SIGIR 2018",
  year = "2018",
  pages = "1097--1100",
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    max_samples: cap on the number of predictions scored (default 200).
    seed: seed of the sample (default 1234).
Returns:
    self_bleu: mean sentence BLEU against the other sampled predictions, 0-100.
    n_sampled, max_samples, seed, signature.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SelfBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, max_samples=_core.SELF_BLEU_MAX_SAMPLES, seed=_core.SELF_BLEU_SEED):
        return _core.self_bleu(predictions, max_samples, seed)

"""The recipe schema: every key, its type, default and one-line help.

This file is the single source of truth. Validation (`recipe.py`), `textgen recipes keys` and
`docs/recipes.md` are all derived from these dataclasses, so a key documented anywhere exists here.
Help lives in `field(metadata={"help": ...})`; allowed values for string choices in `CHOICES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING


def _key(default, help: str, **kwargs):
    """A schema key: its default and its one-line help text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def _section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class ModelSection:
    family: str = _key(MISSING, "Model family: `sora` (encoder-decoder, BART style) or `chatgpt` (decoder-only, GPT-2 style).")
    layers: int = _key(2, "Transformer layers (for `sora`: in the encoder and in the decoder each).")
    hidden: int = _key(128, "Hidden size (d_model).")
    heads: int = _key(4, "Attention heads; must divide `hidden`.")
    ffn: int = _key(512, "Feed-forward inner size.")
    context: int = _key(256, "Context length in tokens (at least 8).")
    dropout: float = _key(0.1, "Dropout probability during training.")
    init_from: Optional[str] = _key(None, "Local HF checkpoint directory to start from instead of random weights (and, for finetune, instead of the pretrain output).")


@dataclass
class TokenizerSection:
    vocab_size: int = _key(4096, "Byte-level BPE vocabulary size, special tokens included.")
    min_frequency: int = _key(2, "Minimum pair frequency for a BPE merge.")
    path: Optional[str] = _key(None, "Local tokenizer directory to load instead of training one.")
    include_finetune_data: bool = _key(True, "Also train the tokenizer on the finetune training split, so that both stages share a vocabulary fitted to both.")


@dataclass
class PretrainData:
    train: Optional[str] = _key(None, "Pretraining text: .txt (one document or paragraph per line), .json/.jsonl, .csv or .parquet.")
    validation: Optional[str] = _key(None, "Held-out pretraining text in the same format (used for validation loss).")
    text_field: str = _key("text", "Column holding the text in json/jsonl/csv/parquet files.")


@dataclass
class FinetuneData:
    task: str = _key("pairs", "`pairs` ({source, target} records) or `dialogue` (a list of {role, content} turns per record).")
    train: Optional[str] = _key(None, "Finetuning training split (.jsonl/.json/.csv/.parquet).")
    validation: Optional[str] = _key(None, "Finetuning validation split.")
    test: Optional[str] = _key(None, "Finetuning test split (used by evaluation).")
    source_field: str = _key("source", "Field of the source text in `pairs` data.")
    target_field: str = _key("target", "Field of the reference text in `pairs` data.")
    messages_field: str = _key("messages", "Field of the list of turns in `dialogue` data.")


@dataclass
class DataSection:
    pretrain: PretrainData = _section(PretrainData, "Data for the `pretrain` stage.")
    finetune: FinetuneData = _section(FinetuneData, "Data for the `finetune` stage.")
    too_long: str = _key("truncate", "What to do with finetuning examples longer than the context: `truncate` (oldest turns first, counted in a warning) or `error`.")
    max_examples: Optional[int] = _key(None, "Use at most this many records of each split (handy for quick runs).")


@dataclass
class PromptSection:
    system: str = _key("", "System prompt placed first in every `chatgpt` conversation (unless the data brings its own).")


@dataclass
class TrainSection:
    seed: int = _key(1234, "Random seed: the same recipe and seed give the same loss curve on CPU.")
    device: str = _key("auto", "`auto` (CUDA when available), `cpu` or `cuda`.")
    precision: str = _key("auto", "`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32` or `bf16`.")
    batch_size: int = _key(16, "Sequences per micro-batch.")
    grad_accum: int = _key(1, "Micro-batches accumulated per optimizer step.")
    lr: float = _key(1e-3, "Peak learning rate (AdamW), for every stage unless the stage sets its own.")
    min_lr_ratio: float = _key(0.1, "Cosine schedule floor as a fraction of the peak learning rate.")
    warmup_steps: int = _key(20, "Linear warmup steps.")
    weight_decay: float = _key(0.01, "AdamW weight decay (matrices only; not biases, norms).")
    clip_grad: float = _key(1.0, "Gradient norm clipping threshold (0 disables).")
    log_every: int = _key(10, "Log a metrics line every N optimizer steps.")
    eval_every: int = _key(100, "Validation pass every N optimizer steps (and always at the start and the end).")
    eval_batches: Optional[int] = _key(None, "Cap on validation batches per pass (null: the whole split).")


@dataclass
class PretrainSection:
    steps: int = _key(200, "Optimizer steps.")
    lr: Optional[float] = _key(None, "Peak learning rate for this stage (null: `train.lr`).")
    mask_ratio: float = _key(0.3, "`sora` text infilling: fraction of tokens masked.")
    poisson_lambda: float = _key(3.0, "`sora` text infilling: mean span length (Poisson).")


@dataclass
class FinetuneSection:
    steps: int = _key(200, "Optimizer steps.")
    lr: Optional[float] = _key(None, "Peak learning rate for this stage (null: `train.lr`).")


@dataclass
class RunSection:
    name: Optional[str] = _key(None, "Run name (null: the recipe file name without .yaml).")
    root: str = _key("runs", "Folder that holds runs, relative to the current directory: runs/<name>/<stage>/.")


@dataclass
class Recipe:
    description: str = _key("", "One line shown by `textgen recipes`.")
    stages: List[str] = _key(["pretrain", "finetune"], "Stages this recipe runs, in order.")
    model: ModelSection = _section(ModelSection, "Architecture.")
    tokenizer: TokenizerSection = _section(TokenizerSection, "Byte-level BPE tokenizer.")
    data: DataSection = _section(DataSection, "Where the data is; paths are relative to the recipe file.")
    prompt: PromptSection = _section(PromptSection, "Prompt engineering for `chatgpt`.")
    train: TrainSection = _section(TrainSection, "The training loop shared by every stage.")
    pretrain: PretrainSection = _section(PretrainSection, "The `pretrain` stage.")
    finetune: FinetuneSection = _section(FinetuneSection, "The `finetune` stage.")
    run: RunSection = _section(RunSection, "Where results are written.")


# Allowed values of string keys (dotted key -> choices). Checked by recipe.validate_values.
CHOICES = {
    "model.family": ("sora", "chatgpt"),
    "data.finetune.task": ("pairs", "dialogue"),
    "data.too_long": ("truncate", "error"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16"),
}
STAGES = ("pretrain", "finetune")
# Keys holding input paths, resolved relative to the recipe file.
PATH_KEYS = (
    "model.init_from",
    "tokenizer.path",
    "data.pretrain.train",
    "data.pretrain.validation",
    "data.finetune.train",
    "data.finetune.validation",
    "data.finetune.test",
)

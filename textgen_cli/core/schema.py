"""The recipe schema: every key, its type, default and one-line help.

This file is the single source of truth. Validation (`recipe.py`), `textgen recipes keys` and
`docs/recipes.md` are all derived from these dataclasses, so a key documented anywhere exists here.
Help lives in `field(metadata={"help": ...})`, and the values a key accepts in its `range` (a
`Range`); allowed values for string choices in `CHOICES`; checks that involve several keys in a
section's `check` method. `recipe.validate_values` is the one checker that applies them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from textgen_cli.core.stages import STAGES  # noqa: F401 - the stage names, in training order (the table: stages.py)


@dataclass(frozen=True)
class Range:
    """The values a key accepts: a test, and the words an error message uses for it."""

    ok: Callable[[Any], bool]
    expected: str


POSITIVE = Range(lambda v: v >= 1, "a positive integer")
POSITIVE_OR_NULL = Range(lambda v: v is None or v >= 1, "a positive integer or null")
PROBABILITY = Range(lambda v: 0 <= v < 1, "a probability in [0, 1)")
NOT_NEGATIVE = Range(lambda v: v >= 0, "a value >= 0")
NOT_NEGATIVE_OR_NULL = Range(lambda v: v is None or v >= 0, "a value >= 0 or null")
ZERO_OR_MORE = Range(lambda v: v >= 0, "zero or more")
LEARNING_RATE = Range(
    lambda v: v is None or 0 < v < 3.4e38, "a positive learning rate that float32 can hold (< 3.4e38)"
)
TRACKERS = ("tensorboard", "wandb", "mlflow")  # train.report_to


def _key(default, help: str, range: Range | None = None, **kwargs):
    """A schema key: its default, its one-line help text, and the range its value must be in."""
    metadata = {"help": help, **({"range": range} if range else {}), **kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class LoraSection:
    rank: int = _key(
        0,
        "LoRA rank r (0: no LoRA, every weight is trained). With r > 0 only low-rank adapters on the target modules are trained (finetune and adv-train; see docs/models.md).",
        range=Range(lambda v: v >= 0, "an integer >= 0 (0: no LoRA)"),
    )
    alpha: float | None = _key(
        None,
        "LoRA scaling alpha (the update is scaled by alpha / rank); null: 2 x rank.",
        range=Range(lambda v: v is None or v > 0, "a positive number or null"),
    )
    dropout: float = _key(
        0.0,
        "Dropout on the LoRA adapters' input during training. Off by default: peft draws a mask and keeps a dropped copy of the input per adapter, which cost 11% of a LoRA step on SmolLM2 (docs/models.md).",
        range=PROBABILITY,
    )
    target_modules: list[str] = _key(
        [],
        "Module names that get adapters (e.g. [q_proj, v_proj]); empty: the attention and feed-forward projections of the architecture (docs/models.md lists them).",
    )
    keep_adapter: bool = _key(
        False,
        "Also save the adapter alone in <run>/<stage>/final/adapter/ (loadable with peft on the starting model). final/ always holds the merged model.",
    )


@dataclass
class ModelSection:
    family: str = _key(
        MISSING,
        "Model family (role): `sora` (encoder-decoder: BART, T5, ...), `chatgpt` (decoder-only: GPT-2, Llama, Qwen2, ...) or `prefix-lm` (a decoder-only layout whose prompt attends both ways, its reply causally: T5's prefix LM).",
    )
    arch: str = _key(
        "auto",
        "Layout built from scratch: `bart`, `t5` or `t5gemma` for `sora`; `gpt2`, `llama`, `qwen2` or `gemma2` for `chatgpt` and `prefix-lm`; `auto`: bart / gpt2. `t5gemma` and `gemma2` are the matched pair: the same Gemma 2 block on both sides (docs/compare.md). A pretrained start (model.init_from) keeps its own.",
    )
    layers: int = _key(2, "Transformer layers (for `sora`: in the encoder and in the decoder each).", range=POSITIVE)
    hidden: int = _key(128, "Hidden size (d_model).", range=POSITIVE)
    heads: int = _key(4, "Attention heads; must divide `hidden`.", range=POSITIVE)
    ffn: int = _key(512, "Feed-forward inner size.", range=POSITIVE)
    context: int = _key(
        256, "Context length in tokens (at least 8).", range=Range(lambda v: v >= 8, "at least 8 tokens")
    )
    dropout: float = _key(
        0.1,
        "Dropout probability during training, on the embeddings and on each attention and feed-forward output (BART, T5, GPT-2). The Llama, Qwen2, Gemma2 and T5Gemma layouts have no such dropout: there only model.attention_dropout applies.",
        range=PROBABILITY,
    )
    attention_dropout: float = _key(
        0.0,
        "Dropout on the attention probabilities during training (both families). 0 keeps the fused attention kernel; 0.1 made a default-size `chatgpt` CPU training step about 25% slower.",
        range=PROBABILITY,
    )
    init_from: str | None = _key(
        None,
        "Where a stage starts instead of random weights (pretrain) or the previous stage's output (finetune, adv-train): a local save_pretrained directory, a `.gguf` file (llama.cpp / Ollama; or a folder holding one), dequantized to float32, a Hugging Face hub id (e.g. `openai-community/gpt2`, loaded through the transformers cache), or `scratch` (random weights from this section, tokenizer trained as pretrain trains it). See docs/models.md.",
    )
    lora: LoraSection = _section(LoraSection, "Parameter-efficient finetuning with LoRA (peft).")

    def check(self) -> tuple[str, str, Any] | None:
        """Checks that involve more than one key (see GenerateSection.check)."""
        if self.hidden % self.heads:
            return "heads", f"a divisor of model.hidden ({self.hidden})", self.heads
        return None


@dataclass
class TokenizerSection:
    vocab_size: int = _key(
        4096,
        "Byte-level BPE vocabulary size, special tokens included.",
        range=Range(lambda v: v >= 300, "at least 300 (256 bytes plus special tokens)"),
    )
    min_frequency: int = _key(2, "Minimum pair frequency for a BPE merge.")
    path: str | None = _key(None, "Local tokenizer directory to load instead of training one.")
    include_finetune_data: bool = _key(
        True,
        "Also train the tokenizer on the finetune training split, so that both stages share a vocabulary fitted to both.",
    )


@dataclass
class PretrainData:
    train: str | None = _key(
        None,
        "Pretraining text: .txt (one document or paragraph per line), .json/.jsonl, .csv or .parquet; or a dataset: `hf:ORG/NAME[/CONFIG][:SPLIT]` (hub, from the local cache) or `hf:FOLDER[:SPLIT]` (save_to_disk or data files); see docs/data.md.",
    )
    validation: str | None = _key(
        None,
        "Held-out pretraining text in the same format (used for validation loss); an `hf:` dataset without `:SPLIT` gives its `validation` split.",
    )
    text_field: str = _key("text", "Column holding the text in json/jsonl/csv/parquet files and `hf:` datasets.")


@dataclass
class FinetuneData:
    task: str = _key(
        "pairs", "`pairs` ({source, target} records) or `dialogue` (a list of {role, content} turns per record)."
    )
    train: str | None = _key(
        None,
        "Finetuning training split (.jsonl/.json/.csv/.parquet), or a dataset `hf:ORG/NAME[/CONFIG][:SPLIT]` / `hf:FOLDER[:SPLIT]` (the split defaults to the key's name: train, validation, test); the *_field keys map its columns.",
    )
    validation: str | None = _key(None, "Finetuning validation split.")
    test: str | None = _key(None, "Finetuning test split (used by evaluation).")
    source_field: str = _key("source", "Field of the source text in `pairs` data.")
    target_field: str = _key("target", "Field of the reference text in `pairs` data.")
    messages_field: str = _key("messages", "Field of the list of turns in `dialogue` data.")


@dataclass
class DataSection:
    pretrain: PretrainData = _section(PretrainData, "Data for the `pretrain` stage.")
    finetune: FinetuneData = _section(FinetuneData, "Data for the `finetune` stage.")
    too_long: str = _key(
        "truncate",
        "What to do with finetuning examples longer than the context: `truncate` (oldest turns first, counted in a warning) or `error`.",
    )
    max_examples: int | None = _key(
        None, "Use at most this many records of each split (handy for quick runs).", range=POSITIVE_OR_NULL
    )


@dataclass
class PromptSection:
    system: str = _key(
        "", "System prompt placed first in every `chatgpt` conversation (unless the data brings its own)."
    )


@dataclass
class TrainSection:
    seed: int = _key(1234, "Random seed: the same recipe and seed give the same loss curve on CPU.")
    device: str = _key("auto", "`auto` (CUDA when available), `cpu` or `cuda`.")
    precision: str = _key(
        "auto",
        "`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32`, `bf16`, or `fp16` (CUDA only: fp16 autocast with a dynamic grad scaler, for GPUs without bf16).",
    )
    gradient_checkpointing: bool = _key(
        False,
        "Recompute activations in the backward pass instead of keeping them: less memory, about a third more compute per step.",
    )
    batch_size: int = _key(16, "Sequences per micro-batch.", range=POSITIVE)
    grad_accum: int = _key(1, "Micro-batches accumulated per optimizer step.", range=POSITIVE)
    lr: float = _key(
        1e-3, "Peak learning rate (AdamW), for every stage unless the stage sets its own.", range=LEARNING_RATE
    )
    min_lr_ratio: float = _key(
        0.1,
        "Cosine schedule floor as a fraction of the peak learning rate; 1.0 keeps the peak after warmup (a constant rate: the shipped recipes, docs/training.md).",
        range=Range(lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    )
    warmup_steps: int = _key(20, "Linear warmup steps.", range=NOT_NEGATIVE)
    weight_decay: float = _key(0.01, "AdamW weight decay (matrices only; not biases, norms).", range=NOT_NEGATIVE)
    clip_grad: float = _key(1.0, "Gradient norm clipping threshold (0 disables).", range=NOT_NEGATIVE)
    log_every: int = _key(10, "Log a metrics line every N optimizer steps.", range=POSITIVE)
    eval_every: int = _key(
        100, "Validation pass every N optimizer steps (and always at the start and the end).", range=POSITIVE
    )
    eval_batches: int | None = _key(
        None, "Cap on validation batches per pass (null: the whole split).", range=POSITIVE_OR_NULL
    )
    group_by_length: bool = _key(
        False,
        "Finetuning and adv-train: batch examples of similar length together (less padding; 1.4-1.6x the examples/s), keeping the batch order random. Off by default: batches of one length slowed how fast the models learned to read their source (docs/training.md).",
    )
    report_to: list[str] = _key(
        [],
        "Experiment trackers that also get the hyperparameters and every metrics line: any of `tensorboard` (events in <run>/tensorboard/), `wandb` (<run>/wandb/; WANDB_MODE=offline works without an account), `mlflow` (the store MLFLOW_TRACKING_URI names). Each needs its extra: pip install 'textgen-cli[wandb]'.",
        range=Range(lambda v: all(t in TRACKERS for t in v), "a list drawn from " + ", ".join(TRACKERS)),
    )
    tensorboard: bool = _key(False, "Older spelling of `report_to: [tensorboard]`, still accepted.")
    compile: bool = _key(
        False,
        "torch.compile the model (pays off on CUDA for long runs; off by default on CPU, where it did not measure faster).",
    )
    on_nonfinite: str = _key(
        "stop", "A non-finite loss or gradient: `stop` the run (keeping the last good checkpoint) or `skip` the step."
    )
    max_skips: int = _key(3, "With on_nonfinite=skip: stop after this many skipped steps.", range=NOT_NEGATIVE)
    eval_generate: int = _key(
        0,
        "Finetune and adv-train: at every validation pass also greedy-decode this many validation examples and log their BLEU as `val_bleu` in metrics.jsonl (0: off; one process only).",
        range=Range(lambda v: v >= 0, "zero (off) or a positive number of validation examples"),
    )


@dataclass
class DistributedSection:
    strategy: str = _key(
        "ddp",
        "With several processes (torchrun / accelerate launch): `ddp` (a full model copy per process, gradients all-reduced) or `fsdp` (parameters, gradients and optimizer state sharded over the processes: for models that do not fit one device). One process ignores it.",
    )


@dataclass
class CheckpointSection:
    every: int = _key(
        100,
        "Save a resumable checkpoint every N optimizer steps (0: only on interruption).",
        range=Range(lambda v: v >= 0, "a value >= 0 (0: only on interruption)"),
    )
    keep_last: int = _key(
        2,
        "Checkpoints kept; older ones are deleted, never the newest valid one.",
        range=Range(lambda v: v >= 1, "at least 1"),
    )
    keep_final: bool = _key(
        True,
        "A finished stage keeps one checkpoint, at its last step, so that `--resume` with more steps continues it (the learning-rate schedule stretched to the new total); false: a finished stage keeps none (saves the optimizer state's disk space).",
    )


@dataclass
class PretrainSection:
    steps: int = _key(200, "Optimizer steps.", range=POSITIVE)
    lr: float | None = _key(None, "Peak learning rate for this stage (null: `train.lr`).", range=LEARNING_RATE)
    mask_ratio: float = _key(
        0.3,
        "`sora` text infilling: fraction of tokens masked.",
        range=Range(lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    )
    poisson_lambda: float = _key(
        3.0, "`sora` text infilling: mean span length (Poisson).", range=Range(lambda v: v > 0, "a positive number")
    )


@dataclass
class FinetuneSection:
    steps: int = _key(200, "Optimizer steps.", range=POSITIVE)
    lr: float | None = _key(None, "Peak learning rate for this stage (null: `train.lr`).", range=LEARNING_RATE)


@dataclass
class GenerateSection:
    max_new_tokens: int = _key(
        64, "Most tokens generated per reply; prompts are fitted to the model's context minus this (for `chatgpt`)."
    )
    min_new_tokens: int = _key(0, "Fewest tokens generated per reply (eos is suppressed until then).")
    do_sample: bool = _key(False, "Sample from the distribution (true) or decode greedily / by beam search (false).")
    temperature: float = _key(1.0, "Sampling temperature (with do_sample=true): below 1 sharper, above 1 flatter.")
    top_k: int = _key(50, "Sample only among the k most likely tokens (with do_sample=true; 0 disables).")
    top_p: float = _key(
        1.0,
        "Nucleus sampling: the smallest set of tokens whose probability reaches p (with do_sample=true; 1.0 disables).",
    )
    num_beams: int = _key(1, "Beam search width (1: no beam search). Beam search is not streamed.")
    length_penalty: float = _key(
        1.0,
        "Beam search: exponent on the length that divides a beam's log-probability (above 1 favours longer outputs).",
    )
    repetition_penalty: float = _key(1.0, "Penalty on tokens already present (1.0 disables; 1.1-1.3 is typical).")
    no_repeat_ngram_size: int = _key(0, "Never repeat an n-gram of this size (0 disables).")
    stop: list[str] = _key([], "Stop strings: generation ends once one appears; the output is cut before it.")
    seed: int = _key(1234, "Random seed for sampling: the same seed, settings and prompts give the same outputs.")
    batch_size: int = _key(16, "Prompts decoded together in batch mode (--input or stdin).")
    too_long: str = _key(
        "truncate",
        "A prompt whose last message alone is longer than the context (older turns are always dropped first): `truncate` keeps its beginning (for `chatgpt` plain text, its end), `error` stops.",
    )
    prompt_format: str = _key(
        "auto",
        "How prompts are encoded: `chat` (chat template for `chatgpt`, role-tagged history for `sora`), `text` (plain text; `sora`: [bos] text [eos]) or `auto` (what the model was trained on: `text` for a pretrain checkpoint and for `sora` pairs tasks, else `chat`).",
    )
    device: str = _key("auto", "`auto` (CUDA when available), `cpu` or `cuda`.")

    def check(self) -> tuple[str, str, Any] | None:
        """The first value outside its range, as (key in this section, what was expected, the value),
        or None: checks that involve more than one key. `recipe.validate_values` words it like every
        other recipe error."""
        if self.max_new_tokens < 1:
            return "max_new_tokens", "a positive integer", self.max_new_tokens
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            return (
                "min_new_tokens",
                f"an integer in [0, generate.max_new_tokens={self.max_new_tokens}]",
                self.min_new_tokens,
            )
        if not self.temperature > 0:
            return (
                "temperature",
                "a positive number (for greedy decoding set generate.do_sample=false)",
                self.temperature,
            )
        if self.top_k < 0:
            return "top_k", "an integer >= 0 (0 disables top-k)", self.top_k
        if not 0 < self.top_p <= 1:
            return "top_p", "a probability in (0, 1]", self.top_p
        if self.num_beams < 1:
            return "num_beams", "a positive integer", self.num_beams
        if not self.repetition_penalty > 0:
            return "repetition_penalty", "a positive number (1.0 disables it)", self.repetition_penalty
        if self.no_repeat_ngram_size < 0:
            return "no_repeat_ngram_size", "an integer >= 0 (0 disables it)", self.no_repeat_ngram_size
        if self.batch_size < 1:
            return "batch_size", "a positive integer", self.batch_size
        if any(not isinstance(stop, str) or stop == "" for stop in self.stop):
            return "stop", "a list of non-empty strings", list(self.stop)
        return None


@dataclass
class AdvTrainSection:
    steps: int = _key(100, "Optimizer steps.", range=POSITIVE)
    lr: float | None = _key(None, "Peak learning rate for this stage (null: `train.lr`).", range=LEARNING_RATE)
    method: str = _key(
        "fgm", "Embedding-space method: `fgm`, `pgd`, `freelb`, `r3f`, or `none` (text augmentation only)."
    )
    epsilon: float | None = _key(
        None,
        "Perturbation radius (R3F: noise scale); null: the method's literature default (fgm 1.0, pgd 1.0, freelb 0.3, r3f 1e-5).",
        range=NOT_NEGATIVE_OR_NULL,
    )
    step_size: float | None = _key(
        None, "Ascent step size for pgd / freelb; null: 0.3 / 0.1.", range=NOT_NEGATIVE_OR_NULL
    )
    ascent_steps: int | None = _key(None, "Ascent steps K for pgd / freelb; null: 3 / 2.", range=POSITIVE_OR_NULL)
    init_mag: float | None = _key(
        None, "Initial perturbation magnitude for pgd / freelb; null: 0.64 / 0.1.", range=NOT_NEGATIVE_OR_NULL
    )
    norm: str = _key("l2", "Norm of the perturbation ball: `l2` or `inf` (per example).")
    weight: float = _key(
        1.0, "lambda in L = L_clean + lambda * L_adv (fgm, pgd, r3f; freelb averages its K adversarial losses)."
    )
    positions: str = _key(
        "context",
        "`chatgpt`: perturb the `context` (non-assistant) positions or `all` positions; `sora` perturbs its encoder input.",
    )
    augment_rate: float = _key(
        0.0,
        "Adversarial augmentation: add this fraction of the training set again as perturbed copies (source noised, target clean).",
        range=Range(lambda v: 0 <= v <= 10, "a fraction >= 0 (1.0 doubles the training set)"),
    )
    augment_kinds: list[str] = _key(
        ["char", "word_drop"], "Text perturbations used for augmentation, taken in turn (see docs/adversarial.md)."
    )
    augment_strength: float = _key(
        0.1,
        "Fraction of the eligible words each augmentation perturbs.",
        range=Range(lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    )


@dataclass
class EvalSection:
    metrics: list[str] = _key(
        ["bleu", "chrf", "rouge", "distinct", "self_bleu", "exact_match"],
        "Metrics: shipped names (bleu, chrf, rouge, distinct, self_bleu, exact_match) or paths to your own evaluate modules (relative to the recipe file).",
    )
    split: str = _key("test", "Split `textgen evaluate` scores by default: `test`, `validation` or `train`.")
    bootstrap: int = _key(
        1000,
        "Paired bootstrap resamples for the 95% intervals of BLEU, chrF and ROUGE-L.",
        range=Range(lambda v: v >= 1, "a positive number of resamples"),
    )
    seed: int = _key(1234, "Seed of the bootstrap, the self-BLEU sample and the robustness perturbations.")
    max_examples: int | None = _key(
        None, "Score at most this many examples of the split (null: all).", range=POSITIVE_OR_NULL
    )
    perturb: list[str] = _key(
        [], 'Robustness: also score perturbed sources, e.g. ["char:0.1", "word_drop:0.1"] (KIND:RATE).'
    )
    after_finetune: bool = _key(
        True, "Evaluate on the test split right after `finetune` (and `adv-train`) when the recipe has one."
    )
    input_check: int = _key(
        128,
        "Input-use check: score the reference bits per byte of the first N examples with their own sources and with another example's source (0: off).",
        range=ZERO_OR_MORE,
    )
    prose: str = _key(
        "auto",
        "Bits per byte of the recipe's pretraining validation text (data.pretrain.validation), `chatgpt` only. `auto`: for models with textgen's own tokenizer (pretrained by textgen, on that text); a model pretrained elsewhere (SmolLM2, Qwen, ...) did not learn from it, and its long windows (8,192 tokens for SmolLM2) cost several times the generation. `on`: always; `off`: never.",
    )
    min_input_gap: float = _key(
        0.1,
        "Verdict: flag a model whose shuffled-minus-true bits per byte gap (input_check) is below this: it ignores its input.",
        range=ZERO_OR_MORE,
    )
    min_distinct_outputs: float = _key(
        0.5,
        "Verdict: flag a model with distinct outputs for fewer than this share of the distinct sources (degenerate).",
        range=ZERO_OR_MORE,
    )
    max_repetition_excess: float = _key(
        0.2,
        "Verdict: flag a model whose repeated 4-gram rate exceeds the references' own by more than this (degenerate).",
        range=ZERO_OR_MORE,
    )


@dataclass
class RunSection:
    name: str | None = _key(None, "Run name (null: the recipe file name without .yaml).")
    root: str = _key("runs", "Folder that holds runs, relative to the current directory: runs/<name>/<stage>/.")


@dataclass
class Recipe:
    description: str = _key("", "One line shown by `textgen recipes`.")
    stages: list[str] = _key(
        ["pretrain", "finetune"],
        "Stages this recipe runs, in order.",
        range=Range(lambda v: all(s in STAGES for s in v), "a list drawn from " + ", ".join(STAGES)),
    )
    model: ModelSection = _section(ModelSection, "Architecture.")
    tokenizer: TokenizerSection = _section(TokenizerSection, "Byte-level BPE tokenizer.")
    data: DataSection = _section(DataSection, "Where the data is; paths are relative to the recipe file.")
    prompt: PromptSection = _section(PromptSection, "Prompt engineering for `chatgpt`.")
    train: TrainSection = _section(TrainSection, "The training loop shared by every stage.")
    pretrain: PretrainSection = _section(PretrainSection, "The `pretrain` stage.")
    finetune: FinetuneSection = _section(FinetuneSection, "The `finetune` stage.")
    adv_train: AdvTrainSection = _section(
        AdvTrainSection, "The `adv-train` stage: adversarial training from the finetune output."
    )
    eval: EvalSection = _section(EvalSection, "Evaluation: metrics, intervals, robustness.")
    generate: GenerateSection = _section(
        GenerateSection, "Decoding settings for `textgen generate` (each overridable on the command line)."
    )
    run: RunSection = _section(RunSection, "Where results are written.")
    distributed: DistributedSection = _section(
        DistributedSection, "Data-parallel training over several processes (see docs/distributed.md)."
    )
    checkpoint: CheckpointSection = _section(
        CheckpointSection, "Resumable checkpoints (model, optimizer, scheduler, RNG states, data position)."
    )
    resume: str = _key(
        "never",
        "`auto`: continue an interrupted stage from its newest valid checkpoint (same as --resume); `never`: start afresh.",
    )


# Allowed values of string keys (dotted key -> choices). Checked by recipe.validate_values, which
# adds model.family and model.arch from the role and layout tables (recipe.choices_of_keys).
CHOICES = {
    "data.finetune.task": ("pairs", "dialogue"),
    "data.too_long": ("truncate", "error"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.on_nonfinite": ("stop", "skip"),
    "distributed.strategy": ("ddp", "fsdp"),
    "resume": ("never", "auto"),
    "eval.split": ("test", "validation", "train"),
    "eval.prose": ("auto", "on", "off"),
    "adv_train.method": ("none", "fgm", "pgd", "freelb", "r3f"),
    "adv_train.norm": ("l2", "inf"),
    "adv_train.positions": ("context", "all"),
}
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

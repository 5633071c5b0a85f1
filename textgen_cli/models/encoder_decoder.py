"""The `sora` role: encoder-decoder models (whatever AutoModelForSeq2SeqLM loads: BART, T5, T5Gemma,
mBART, Pegasus, Marian, ...): source -> target, pretrained by text infilling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError
from textgen_cli.models.flops import Lengths
from textgen_cli.models.role import Role, TextPrompt

if TYPE_CHECKING:
    pass


class EncoderDecoder(Role):
    name = "sora"
    is_encoder_decoder = True
    shifted_labels = False
    auto_class = "AutoModelForSeq2SeqLM"
    default_arch = "bart"
    text_prompt = TextPrompt(overhead=2, keep_start=True)
    left_padding = False

    def decoder_start_id(self, model, tokenizer) -> int:
        start = getattr(model.config, "decoder_start_token_id", None)
        return start if start is not None else tokenizer.bos_token_id

    def configure_generation(self, model, tokenizer, context: int) -> None:
        super().configure_generation(model, tokenizer, context)
        model.generation_config.decoder_start_token_id = self.decoder_start_id(model, tokenizer)
        model.generation_config.forced_eos_token_id = None

    def default_prompt_format(self, task: str) -> str:
        return "chat" if task == "dialogue" else "text"

    def prompt_budget(self, context: int, max_new_tokens: int) -> int:
        # the decoder holds the start token and the new tokens; the encoder holds the whole source
        if max_new_tokens > context - 1:
            raise UserError(
                f"generate.max_new_tokens={max_new_tokens} does not fit the model's context of {context} tokens; "
                f"expected at most {context - 1}"
            )
        return context

    def generation_extras(self, model, tokenizer) -> dict[str, Any]:
        return {"decoder_start_token_id": self.decoder_start_id(model, tokenizer)}

    def wrap_text(self, tokenizer, ids: list[int]) -> list[int]:
        head = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        return [*head, *ids, tokenizer.eos_token_id]

    def chat_prompt(self, encoder, messages):
        return encoder.encode_history(messages)

    def chat_tail(self, encoder) -> list[int]:
        return [encoder.eos]

    def new_tokens(self, sequences, prompt_width: int):
        return sequences[:, 1:]  # after the decoder start token

    def finetune_examples(self, dialogues, tokenizer, loaded, context, count, start_id=None):
        """One (source, target) per assistant turn: the source is the plain text for pairs tasks and
        the role-tagged history for dialogues; the target is the response followed by eos."""
        from textgen_cli.models.chat import chat_encoder
        from textgen_cli.objectives import Seq2SeqExamples, encode_texts, fit_seq2seq

        encoder = chat_encoder(tokenizer)
        recipe = loaded.recipe
        pairs_task = recipe.data.finetune.task == "pairs"
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        examples = []
        for dialogue in dialogues:
            for position, turn in enumerate(dialogue.messages):
                if turn["role"] != "assistant":
                    continue
                history = dialogue.messages[:position]
                if pairs_task:
                    source = self.wrap_text(tokenizer, encode_texts(tokenizer, [history[-1]["content"]])[0])
                else:
                    source = encoder.encode_history(history)
                target = [*encode_texts(tokenizer, [turn["content"]])[0], eos]
                examples.append(
                    fit_seq2seq(
                        source,
                        target,
                        eos,
                        context,
                        "start" if pairs_task else "end",
                        dialogue.id,
                        recipe.data.too_long,
                        count,
                    )
                )
        return Seq2SeqExamples(examples, pad_id=tokenizer.pad_token_id, bos_id=bos if start_id is None else start_id)

    def pretrain_block_size(self, context: int) -> int:
        return context - 2  # bos + noised block + eos must fit the encoder, block + eos the decoder

    def pretrain_sets(self, train_blocks, val_blocks, tokenizer, model, recipe):
        """BART text infilling (spans -> one <mask> each, the decoder rebuilds the block), or T5 span
        corruption when the tokenizer has T5's sentinels (<extra_id_0>, ...)."""
        from textgen_cli.models.infilling import infilling_sets

        return infilling_sets(train_blocks, val_blocks, tokenizer, self.decoder_start_id(model, tokenizer), recipe)

    def needs_mask_token(self, tokenizer) -> bool:
        from textgen_cli.models.infilling import sentinel_ids

        return not sentinel_ids(tokenizer)

    def pretrain_tokens_per_sequence(self, context, mask_ratio, poisson_lambda):
        """bos + the noised block + eos in the encoder (each masked span of mean length ~lambda
        collapses to one <mask>), the block + eos in the decoder."""
        block = context - 2
        encoder = block * (1 - mask_ratio + mask_ratio / max(poisson_lambda, 1.0)) + 2
        return encoder, float(block + 1)

    def scoring_pair(self, prompt, target, context):
        return prompt, target

    def scoring_set(self, pairs, tokenizer, model):
        from textgen_cli.objectives import Seq2SeqExamples

        return Seq2SeqExamples(pairs, pad_id=tokenizer.pad_token_id, bos_id=self.decoder_start_id(model, tokenizer))

    def prose_unscorable(self) -> str | None:
        return "an encoder-decoder model gives no unconditional likelihood of plain prose"

    def flops_params(self, model, embeddings):
        enc = sum(p.numel() for p in model.get_encoder().parameters() if id(p) not in embeddings)
        dec = sum(p.numel() for p in model.get_decoder().parameters() if id(p) not in embeddings)
        return enc, dec

    def encoder_of(self, model):
        return model.get_encoder()

    def batch_lengths(self, batch):
        """Encoder inputs (the attention mask) and decoder targets (the labels), per row."""
        import torch

        from textgen_cli.objectives import IGNORE_INDEX

        inputs = batch["attention_mask"].sum(dim=1).to(torch.float64)
        targets = (batch["labels"] != IGNORE_INDEX).sum(dim=1).to(torch.float64)
        return Lengths(
            float(inputs.sum()),
            float(targets.sum()),
            float((inputs**2).sum()),
            float((targets**2).sum()),
            float((inputs * targets).sum()),
        )

    def stack(self, layers: int) -> str:
        return f"encoder-decoder {layers}+{layers}"

    def source_budget(self, context: int) -> str:
        return f"encoder {context}"

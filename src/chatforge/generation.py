"""Sampling from any saved model with HF `generate`: batched, seeded, with stop strings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError


@dataclass
class SamplingArguments:
    """How to sample. `temperature: 0` means greedy decoding."""

    max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate per sample."})
    temperature: float = field(default=0.8, metadata={"help": "Softmax temperature; 0 for greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: keep the smallest set with this mass."})
    top_k: int = field(default=50, metadata={"help": "Keep only the k most likely tokens (0 = no limit)."})
    num_samples: int = field(default=1, metadata={"help": "Independent samples per prompt."})
    stop: list[str] | None = field(default=None, metadata={"help": "Strings that end a sample (not included)."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})

    def __post_init__(self) -> None:
        """Settings no backend can honour fail here, in one line naming the field, not inside `generate`."""
        for ok, problem in (
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0 (0: greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0: no limit), got {self.top_k}"),
            (self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}"),
            (
                self.num_samples == 1 or self.temperature > 0,
                f"num_samples {self.num_samples} needs temperature > 0 (greedy decoding gives one answer)",
            ),
        ):
            if not ok:
                raise RecipeError(problem)

    def generation_config(
        self, tokenizer: PreTrainedTokenizerBase, stop_token_ids: list[int] | None = None
    ) -> GenerationConfig:
        greedy = self.temperature <= 0
        # Sampling fields are set, not None: `generate` fills a None from the model's generation_config (ours
        # sample at 0.8) or its own defaults (top_k 50), so greedy decoding warned of a temperature it ignores,
        # and top_k 0 ("no limit", as in vLLM) became 50. Temperature and top_p 1.0 and top_k 0 change nothing.
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=not greedy,
            temperature=1.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=None if greedy else self.top_k,
            num_return_sequences=self.num_samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_token_ids or tokenizer.eos_token_id,
            stop_strings=self.stop or None,
        )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], prefix_token_ids: list[int] | None = None
) -> list[list[int]]:
    """Token ids of each prompt as every backend feeds them: no special tokens added, `prefix_token_ids` first."""
    prefix = list(prefix_token_ids or [])
    return [prefix + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: SamplingArguments,
    prefix_token_ids: list[int] | None = None,
    batch_size: int = 32,
    stop_token_ids: list[int] | None = None,
) -> list[list[str]]:
    """Continue each prompt `settings.num_samples` times; returns the continuations only, per prompt.

    Generation ends at the tokenizer's eos token, or at any of `stop_token_ids` when given.
    """
    torch.manual_seed(settings.seed)
    config = settings.generation_config(tokenizer, stop_token_ids)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    results: list[list[str]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = encode_prompts(tokenizer, chunk, prefix_token_ids)
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
            output = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i in range(len(chunk)):
                samples = texts[i * settings.num_samples : (i + 1) * settings.num_samples]
                results.append([_cut_at_stop(t, settings.stop) for t in samples])
    finally:
        tokenizer.padding_side = padding_side
    return results


# prompts, settings, stop_token_ids, prefix_token_ids -> settings.num_samples continuations per prompt
Generator = Callable[..., list[list[str]]]


class HFGenerator:
    """Batched generation with HF `generate`, behind the interface every generating evaluation uses.

    A generator is called as `generator(prompts, settings, stop_token_ids=None, prefix_token_ids=None)` and
    returns `settings.num_samples` continuations per prompt; a vLLM backend offers the same call.
    """

    name = "hf"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def __call__(
        self,
        prompts: list[str],
        settings: SamplingArguments,
        stop_token_ids: list[int] | None = None,
        prefix_token_ids: list[int] | None = None,
    ) -> list[list[str]]:
        was_training = self.model.training
        self.model.eval()
        try:
            return sample(
                self.model, self.tokenizer, prompts, settings, prefix_token_ids, self.batch_size, stop_token_ids
            )
        finally:
            self.model.train(was_training)


def _cut_at_stop(text: str, stops: list[str] | None) -> str:
    for stop in stops or []:
        index = text.find(stop)
        if index >= 0:
            text = text[:index]
    return text


def chat_stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn: `<|im_end|>` (when the vocabulary has it) and the eos token."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",) if t in tokenizer.get_vocab()]
    return list(dict.fromkeys([*ids, tokenizer.eos_token_id]))

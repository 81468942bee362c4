"""Build a decoder-only transformer from a recipe's architecture block, with no custom modeling code.

The model is whatever `transformers.AutoConfig.for_model(architecture, ...)` makes, so the saved
folder loads with `AutoModelForCausalLM` (and serves with vLLM) without `trust_remote_code`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError

# Families that transformers and vLLM both run natively; the value says what the family adds.
SUPPORTED_ARCHITECTURES = {
    "qwen3": "RoPE, RMSNorm, SwiGLU, grouped-query attention, QK-norm",
    "llama": "RoPE, RMSNorm, SwiGLU, grouped-query attention",
}


@dataclass
class ArchitectureArguments:
    """The recipe's architecture block: which family and how big."""

    architecture: str = field(
        default="qwen3", metadata={"help": f"Model family, one of {sorted(SUPPORTED_ARCHITECTURES)}."}
    )
    hidden_size: int = field(default=256, metadata={"help": "Width of the residual stream."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Number of transformer blocks."})
    num_attention_heads: int = field(default=4, metadata={"help": "Query heads per layer."})
    num_key_value_heads: int = field(
        default=2, metadata={"help": "Key/value heads (grouped-query attention); must divide num_attention_heads."}
    )
    head_dim: int | None = field(default=None, metadata={"help": "Per-head width; hidden_size // heads if unset."})
    intermediate_size: int = field(default=768, metadata={"help": "Width of the SwiGLU feed-forward layer."})
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Longest sequence the model is built for; the training block size if unset."}
    )
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base frequency."})
    rms_norm_eps: float = field(default=1e-6, metadata={"help": "Epsilon of the RMSNorm layers."})
    initializer_range: float = field(default=0.02, metadata={"help": "Std of the normal weight initialisation."})
    tie_word_embeddings: bool = field(
        default=True, metadata={"help": "Share input embedding and output head (saves parameters at small sizes)."}
    )
    pad_vocab_to_multiple_of: int = field(
        default=64, metadata={"help": "Round the embedding rows up to a multiple of this (faster matmuls on GPU)."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel: sdpa, eager, flash_attention_2, ..."}
    )

    def validate(self) -> None:
        """Raise RecipeError on an unknown family or inconsistent sizes, before anything is built."""
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise RecipeError(
                f"unknown architecture '{self.architecture}'; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise RecipeError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise RecipeError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); set head_dim explicitly"
            )


def build_model_config(
    arch: ArchitectureArguments, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> PretrainedConfig:
    """A transformers config for `arch`, sized to the tokenizer and wired to its special tokens."""
    arch.validate()
    multiple = max(1, arch.pad_vocab_to_multiple_of)
    vocab_size = math.ceil(len(tokenizer) / multiple) * multiple
    head_dim = arch.head_dim or arch.hidden_size // arch.num_attention_heads
    config = AutoConfig.for_model(
        arch.architecture,
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings or max_length,
        rope_theta=arch.rope_theta,
        rms_norm_eps=arch.rms_norm_eps,
        initializer_range=arch.initializer_range,
        tie_word_embeddings=arch.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = arch.attn_implementation
    return config


def build_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised causal LM for `config`, reproducible from `seed`."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)


def count_parameters(model: torch.nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once; ZeRO-3 partitions by their whole size)."""
    params = {id(p): p for p in model.parameters()}
    total = sum(_numel(p) for p in params.values())
    if exclude_embeddings:
        total -= _numel(model.get_input_embeddings().weight)
    return total


def _numel(param: torch.Tensor) -> int:
    # a ZeRO-3 partitioned parameter is an empty placeholder; `ds_numel` is the size of the whole
    return getattr(param, "ds_numel", param.numel())

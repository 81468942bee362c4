"""Training FLOPs of a decoder-only transformer, for tokens/s -> model FLOPs utilisation (MFU)."""

from __future__ import annotations

from transformers import PretrainedConfig


def matmul_parameters(config: PretrainedConfig) -> int:
    """Weights that take part in a matrix multiply per token: every projection of every layer and the output head.

    The input embedding is a lookup (no FLOPs); norms, RoPE and activations are elementwise and left out.
    """
    d, heads = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attention = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2  # q and o; k and v
    mlp = 3 * d * config.intermediate_size  # SwiGLU: gate, up, down
    return config.num_hidden_layers * (attention + mlp) + config.vocab_size * d


def training_flops_per_token(config: PretrainedConfig, seq_len: int) -> float:
    """FLOPs of one training token (forward + backward = 3x forward): 6 x matmul weights + attention.

    Attention counts the full T x T score and value products per layer (2 matmuls x 2 FLOPs x T x heads x
    head_dim forward), the usual convention for MFU (PaLM, nanoGPT), though a causal kernel skips about half.
    """
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = 4 * seq_len * heads * head_dim * config.num_hidden_layers
    return 6 * matmul_parameters(config) + 3 * attention

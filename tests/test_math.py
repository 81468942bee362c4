"""Math data and scoring: the word-problem generator, the GSM8K loader, answer extraction/matching, pass@k."""

from __future__ import annotations

import ast
import itertools
import json
import logging
import math
import re
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from transformers import AutoTokenizer

from chatforge.configs import RecipeError
from chatforge.evaluation.math import answers_match, extract_answer, math_accuracy, pass_at_k
from chatforge.math_data import load_gsm8k
from chatforge.modeling import ArchitectureArguments, build_model, build_model_config
from chatforge.world import World
from chatforge.world.corpus import DataScriptArguments
from chatforge.world.math import MathConfig, generate_math_problems, split_problems

GSM8K_TRAIN = SHARED_DATA / "math" / "gsm8k_train.jsonl"
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
IMPLICIT_CONSTANTS = {12, 100}  # "a dozen", "per cent"


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return generate_math_problems(MathConfig(seed=0, num_problems=400))


def _evaluate(expression: str) -> Fraction:
    """Evaluate an arithmetic expression of integer literals with + - * / (exact), refusing anything else."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        assert isinstance(node, ast.BinOp), ast.dump(node)
        a, b = walk(node.left), walk(node.right)
        ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
        if isinstance(node.op, ast.Div):
            return a / b
        return ops[type(node.op)]

    return walk(ast.parse(expression, mode="eval").body)


# ---------- generator ----------


def test_generator_is_deterministic_and_prefix_stable(problems: list[dict]) -> None:
    assert generate_math_problems(MathConfig(seed=0, num_problems=400)) == problems
    assert generate_math_problems(MathConfig(seed=0, num_problems=50)) == problems[:50]
    other = generate_math_problems(MathConfig(seed=1, num_problems=50))
    assert [r["question"] for r in other] != [r["question"] for r in problems[:50]]


def test_answers_recomputed_independently(problems: list[dict]) -> None:
    for row in problems:
        assert type(row["answer"]) is int and row["answer"] >= 0, row
        # the expression over the question's numbers evaluates to the answer
        assert _evaluate(row["expression"]) == row["answer"], row
        in_question = {int(n) for n in re.findall(r"\d+", row["question"])}
        literals = {int(n) for n in re.findall(r"\d+", row["expression"])}
        assert literals <= in_question | IMPLICIT_CONSTANTS, row
        # every step of the solution is a true equation, one per operation, and it ends in the answer
        steps = EQUATION.findall(row["solution"])
        assert len(steps) == row["num_operations"], row
        for a, op, b, c in steps:
            assert _evaluate(f"{a} {op} {b}") == int(c), row
        assert int(steps[-1][3]) == row["answer"]
        assert row["solution"].endswith(f"The answer is {row['answer']}.")
        assert extract_answer(row["solution"]) == str(row["answer"])


def test_difficulty_is_graded(problems: list[dict]) -> None:
    by_level = {d: [r for r in problems if r["difficulty"] == d] for d in (0, 1, 2, 3, 4)}
    assert all(len(rows) == 80 for rows in by_level.values())  # equal shares
    for level, rows in by_level.items():
        operators = {len(re.findall(r"[-+*/]", r["expression"])) for r in rows}
        assert operators == {r["num_operations"] for r in rows}
        if level < 4:
            assert operators == {max(level, 1)}, (level, operators)
        else:
            assert min(operators) >= 4
        assert len({r["template"] for r in rows}) >= (2 if level == 0 else 4), level  # several templates per level
    easy = by_level[0] + by_level[1] + by_level[2]
    assert not any("*" in r["expression"] or "/" in r["expression"] for r in easy)
    assert all(int(n) <= 9 for r in by_level[0] for n in re.findall(r"\d+", r["question"]))  # single digits
    mean_largest = {
        d: sum(max(int(n) for n in re.findall(r"\d+", r["question"])) for r in rows) / len(rows)
        for d, rows in by_level.items()
    }
    assert mean_largest[0] < mean_largest[1] < mean_largest[2] < mean_largest[4] and mean_largest[3] < mean_largest[4]


def test_no_duplicates_and_world_cast(world: World) -> None:
    rows = generate_math_problems(MathConfig(seed=2, num_problems=300, difficulties=[1, 3]), world=world)
    assert len({r["question"] for r in rows}) == len(rows) == len({r["id"] for r in rows})
    assert {r["difficulty"] for r in rows} == {1, 3}
    first_names = {p.first_name for p in world.people}
    places = {c.name for c in world.cities}
    text = " ".join(r["question"] for r in rows)
    assert sum(name in text for name in first_names) >= 10
    assert any(place in text for place in places)
    named = generate_math_problems(MathConfig(seed=2, num_problems=20, difficulties=[1]), names=["Ola", "Bo"])
    with_people = [r for r in named if not r["question"].startswith(("A shop", "There are"))]
    assert with_people and all(re.search(r"\b(Ola|Bo)\b", r["question"]) for r in with_people)


def test_bad_math_config() -> None:
    with pytest.raises(RecipeError, match="difficulty 5"):
        generate_math_problems(MathConfig(difficulties=[1, 5]))
    with pytest.raises(RecipeError, match="num_problems"):
        generate_math_problems(MathConfig(num_problems=0))
    with pytest.raises(RecipeError, match="math_sft_problems must be >= 1 .*got 0"):
        DataScriptArguments(math_sft_problems=0).math_config()
    with pytest.raises(RecipeError, match="math_sft_difficulties: unknown level 7"):
        DataScriptArguments(math_sft_difficulties=[0, 7]).math_config()


def test_split_is_disjoint_stratified_and_deterministic(problems: list[dict]) -> None:
    train, test = split_problems(problems, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(problems) and len(test) == 80
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert sorted(r["difficulty"] for r in test) == [d for d in (0, 1, 2, 3, 4) for _ in range(16)]
    assert split_problems(problems, test_fraction=0.2, seed=0) == (train, test)
    assert split_problems(problems, test_fraction=0.2, seed=1)[1] != test
    # duplicated questions (up to case and spacing) stay on one side
    rows = [{"question": f"Q {i}", "answer": i} for i in range(50)] + [{"question": "q  3", "answer": 3}]
    train, test = split_problems(rows, test_fraction=0.5, seed=0)
    keys = lambda part: {" ".join(r["question"].lower().split()) for r in part}  # noqa: E731
    assert not keys(train) & keys(test)
    with pytest.raises(RecipeError, match="test_fraction"):
        split_problems(rows, test_fraction=1.0)


# ---------- GSM8K loader ----------


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason=f"{GSM8K_TRAIN} not present (shared data not mounted)")
def test_gsm8k_real_file() -> None:
    data = load_gsm8k(str(GSM8K_TRAIN))
    assert len(data.rows) == 7473 and data.skipped == 0
    first = data.rows[0]
    assert first["question"].startswith("Natalia sold clips to 48 of her friends") and first["answer"] == "72"
    assert first["solution"] == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert not any("<<" in r["solution"] or ">>" in r["solution"] or "####" in r["solution"] for r in data.rows)
    assert all(re.fullmatch(r"-?\d+", r["answer"]) for r in data.rows)
    raw = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()]
    with_commas = [i for i, r in enumerate(raw) if "," in r["answer"].rsplit("####", 1)[1]]
    assert with_commas
    for i in with_commas:
        assert data.rows[i]["answer"] == raw[i]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert len(load_gsm8k(GSM8K_TRAIN.parent, split="train", limit=5).rows) == 5


def _write_jsonl(path: Path, records: list[dict | str]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_gsm8k_broken_gold_answers_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question": "Q1", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
            {"question": "Q2", "answer": "no final line at all"},
            {"question": "Q3", "answer": "It is seven.\n#### seven"},
            "",
            {"question": "Q4", "answer": "Big.\n#### 1,000"},
            {"question": "Q5", "answer": "Money.\n#### $5"},
            {"question": "Q6", "answer": None},
            {"question": "Q7", "answer": "Negative.\n#### -3"},
        ],
    )
    with caplog.at_level(logging.WARNING):
        data = load_gsm8k(path)
    assert [r["answer"] for r in data.rows] == ["4", "1000", "5", "-3"]
    assert data.rows[0]["solution"] == "2 + 2 = 4"
    assert data.skipped == 3
    assert "skipped 3" in caplog.text
    assert len(load_gsm8k(path, limit=2).rows) == 2


def test_gsm8k_bad_files(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "wrong.jsonl", [{"problem": "Q", "answer": "#### 1"}])
    with pytest.raises(RecipeError) as err:
        load_gsm8k(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'question'" in message and "problem" in message
    with pytest.raises(RecipeError, match="not found: .*missing.jsonl"):
        load_gsm8k(str(tmp_path / "missing.jsonl"))
    with pytest.raises(RecipeError, match="line 2 is not valid JSON"):
        load_gsm8k(_write_jsonl(tmp_path / "broken.jsonl", [{"question": "Q", "answer": "#### 1"}, "{oops"]))


# ---------- answers ----------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,000", "1000"),
        ("$12", "12"),
        ("12 apples", "12"),
        ("12%", "12"),
        ("\\boxed{72}", "72"),
        ("The answer is 5. Then 7 more", "5"),
        ("First 3, then 4, and finally 10 remain.", "10"),
        ("So 10-4=6.", "6"),
        ("x = -4", "-4"),
        ("3.0", "3.0"),
        ("1/2", "1/2"),
        ("Answer: $\\frac{3}{4}$", "3/4"),
        ("#### 1,234", "1234"),
        ("The answer is $12 + $5 = $17", "12"),
        ("We get \\boxed{12 \\text{ apples}} in the end", "12"),
        ("\\boxed{\\$1,000}", "1000"),
        ("\\boxed{x+1}", "x+1"),
        ("\\boxed{50\\%}", "50"),
        ("\u22123 degrees", "-3"),
        ("no number here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text: str | None, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("1,000", "1000", True),
        ("$12", "12", True),
        ("12 apples", "12", True),
        ("\\boxed{72}", "72", True),
        ("The answer is 5. Then 7 more", "5", True),
        ("The answer is 5. Then 7 more", "7", False),
        ("She had 3, bought 4, and now has 7", "7", True),
        ("She had 3, bought 4, and now has 7", "3", False),
        ("I do not know.", "7", False),
        ("3.0", "3", True),
        ("-4", "-4", True),
        ("-4", "4", False),
        ("1/2", "0.5", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("\\boxed{10^{3}}", "1000", True),
        ("1,000", "1.000", False),
        ("\\boxed{2^{-1}}", "0.5", True),
        ("", "0", False),
        ("72", "#### 72", True),
        ("72", 72, True),
    ],
)
def test_answers_match(completion: str, gold: str | int, expected: bool) -> None:
    assert answers_match(completion, gold) is expected


def test_answers_match_on_hostile_input_and_in_threads() -> None:
    start = time.perf_counter()
    assert answers_match("1 " * 100_000 + "so the answer is 12.", "12")
    assert not answers_match("x" * 1_000_000, "12")
    assert not answers_match("\\boxed{" * 100_000, "12")
    assert not answers_match("9" * 100_000, "12")
    assert time.perf_counter() - start < 10
    results: list[bool] = []  # math-verify's signal timeouts only work in the main thread
    worker = threading.Thread(
        target=lambda: results.extend(answers_match(c, "0.5") for c in ("1/2", "\\boxed{2^{-1}}", "3"))
    )
    worker.start()
    worker.join()
    assert results == [True, False, False]  # powers are not sent to math-verify without a timeout


def test_pass_at_k_matches_brute_force() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(10_000, 10, 100) == pytest.approx(1 - math.comb(9990, 100) / math.comb(10_000, 100))
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


# ---------- math_accuracy ----------


def test_math_accuracy_with_known_completions(problems: list[dict]) -> None:
    rows = problems[:12]
    formats = ["The answer is {}.", "\\boxed{{{}}}", "#### {}", "so {} in total"]
    seen_prompts: list[str] = []

    def half_right(prompts: list[str], settings, **_) -> list[list[str]]:
        seen_prompts.extend(prompts)
        return [
            [formats[i % 4].format(row["answer"] if i % 2 == 0 else row["answer"] + 1)] for i, row in enumerate(rows)
        ]

    result = math_accuracy(None, None, rows, chat=False, generator=half_right)
    assert seen_prompts[0] == f"Question: {rows[0]['question']}\nAnswer:"
    assert result["accuracy"] == result["pass@1"] == 0.5 and result["num_problems"] == 12
    assert result["answer_rate"] == 1.0 and result["mean_completion_tokens"] is None
    assert set(result["per_difficulty"]) == {"0", "1", "2", "3", "4"}
    assert sum(v["num_problems"] for v in result["per_difficulty"].values()) == 12
    assert result["examples"][0]["correct"] and not result["examples"][1]["correct"]

    n, correct_counts = 4, [i % 5 for i in range(len(rows))]

    def some_right(prompts: list[str], settings, **_) -> list[list[str]]:
        assert settings.num_samples == n and settings.temperature > 0
        return [
            [f"The answer is {row['answer'] if j < c else 'unknown'}." for j in range(n)]
            for row, c in zip(rows, correct_counts)
        ]

    result = math_accuracy(None, None, rows, num_samples=n, k_values=(2, 4), chat=False, generator=some_right)
    for k in (1, 2, 4):
        expected = sum(1 - math.comb(n - c, k) / math.comb(n, k) for c in correct_counts) / len(rows)
        assert result[f"pass@{k}"] == pytest.approx(expected), k
    assert result["answer_rate"] == pytest.approx(sum(correct_counts) / (n * len(rows)))
    with pytest.raises(RecipeError, match="k_values"):
        math_accuracy(None, None, rows, num_samples=2, k_values=(4,), chat=False, generator=some_right)
    with pytest.raises(RecipeError, match="temperature"):
        math_accuracy(None, None, rows, num_samples=2, temperature=0, chat=False, generator=some_right)


def test_math_accuracy_end_to_end_tiny_model(tokenizer_dir: Path, problems: list[dict]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    arch = ArchitectureArguments(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    )
    model = build_model(build_model_config(arch, tokenizer, 512), seed=0)
    rows = [problems[i] for i in (0, 1, 2, 3)]
    result = math_accuracy(model, tokenizer, rows, max_new_tokens=8, batch_size=4, system_prompt="Solve it.")
    expected_keys = {"pass@1", "accuracy", "num_problems", "mean_completion_tokens", "per_difficulty", "examples"}
    assert expected_keys <= set(result)
    assert result["num_problems"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert 0 < result["mean_completion_tokens"] <= 8
    assert all(isinstance(e["completion"], str) and e["completion"] for e in result["examples"])
    sampled = math_accuracy(
        model, tokenizer, rows[:2], num_samples=2, k_values=(2,), temperature=1.0, max_new_tokens=8, chat=False
    )
    assert set(sampled) >= {"pass@1", "pass@2"} and sampled["num_samples"] == 2

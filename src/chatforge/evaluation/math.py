"""Math evaluation: pull the final answer out of a completion, check it against the gold answer, score pass@k.

The checks are shared with GRPO rewards, so they never raise on odd model output:

>>> extract_answer("3 + 4 = 7, so the answer is $7$ apples.")
'7'
>>> answers_match("... #### 1,000", "1000"), answers_match("\\boxed{\\frac{1}{2}}", "0.5")
(True, True)
>>> pass_at_k(n=10, c=3, k=5)
0.9166666666666666
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.generation import Generator, HFGenerator, SamplingArguments, chat_stop_token_ids

# A number as models write it: 1,234.5 / -4 / 0.5 / 1/2, or LaTeX \frac{1}{2}; not the 2 of "x2" or ".2".
_PLAIN = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?![\d.]))?"
_FRAC = r"-?\\[dt]?frac\{\s*-?\d+\s*\}\{\s*\d+\s*\}"
NUMBER = re.compile(rf"{_FRAC}|{_PLAIN}")
_FRAC_PARTS = re.compile(r"(-?)\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")
_ANSWER_CUE = re.compile(r"(?:\banswer\b\s*(?:is\b|:|=)\s*(?:is\b)?|####)\s*:?\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_DECORATION = re.compile(r"\\[$%,;:! ]|\\left|\\right|\\displaystyle|[$%~]")
_NUMBER_WITH_UNIT = re.compile(rf"\s*({_FRAC}|{_PLAIN})(?:\s+[A-Za-z][A-Za-z\s.]*)?\s*")
_MATH_START = re.compile(r"\s*(\$\$?|\\\(|\\\[)")
_MATH_END = {"$": "$", "$$": "$$", "\\(": "\\)", "\\[": "\\]"}
_MAX_VERIFY_CHARS = 200  # extracted answers are short; longer strings skip math-verify
_MAX_BRACED_CHARS = 1000  # a \boxed{} longer than this is not an answer (and scanning stays linear)
_MAX_TRIES = 20  # look at the last few \boxed{} / "answer is" only, so huge completions stay fast


def _normalise_number(token: str) -> str:
    """`1,234` -> `1234`, `\\frac{1}{2}` -> `1/2`, `-\\frac{1}{2}` -> `-1/2`."""
    frac = _FRAC_PARTS.fullmatch(token.strip())
    if frac:
        sign, top, bottom = frac.groups()
        value = f"{top}/{bottom}"
        return value[1:] if sign and value.startswith("-") else f"{sign}{value}"
    return token.replace(",", "").replace(" ", "")


def _braced(text: str, open_index: int) -> str | None:
    """The text inside the braces that open at `open_index`, or None when they do not close within 1000 chars."""
    depth = 0
    for i in range(open_index, min(len(text), open_index + _MAX_BRACED_CHARS)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
    return None


def _clean_math(content: str) -> str | None:
    """A boxed/math answer as a plain number when it is one (units, `$`, `%`, `\\text{}` dropped), else as is."""
    plain = _TEXT_COMMAND.sub(r" \1 ", content)
    plain = _DECORATION.sub(" ", plain)
    match = _NUMBER_WITH_UNIT.fullmatch(plain)
    if match:
        return _normalise_number(match.group(1))
    content = content.strip().strip("$").strip()
    return content or None


def _boxed_answer(text: str) -> str | None:
    for match in reversed(list(_BOXED.finditer(text))[-_MAX_TRIES:]):
        content = _braced(text, match.end() - 1)
        if content is not None and content.strip():
            return _clean_math(content)
    return None


def _cued_answer(text: str) -> str | None:
    """The answer after the last "answer is" / "Answer:" / "####" that is followed by one, on the same line."""
    for match in reversed(list(_ANSWER_CUE.finditer(text))[-_MAX_TRIES:]):
        span = text[match.end() : match.end() + 300].split("\n", 1)[0]
        math = _MATH_START.match(span)
        if math:
            closing = _MATH_END[math.group(1)]
            end = span.find(closing, math.end())
            cleaned = _clean_math(span[math.end() : end]) if end > math.end() else None
            # `$` may be a currency sign ("$12 + $5"): then only a plain number or real LaTeX counts
            if cleaned and (closing != "$" or _as_fraction(cleaned) is not None or "\\" in cleaned):
                return cleaned
        number = NUMBER.search(span)
        if number:
            return _normalise_number(number.group(0))
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer of a completion: the last `\\boxed{}`, else the number after the last "answer is",
    "Answer:" or "####", else the last number in the text; None when there is none.

    Numbers come back normalised (`$1,234` -> `1234`, `12 apples` -> `12`, `12%` -> `12`, `\\frac{1}{2}` ->
    `1/2`); a boxed answer that is not a plain number comes back as its LaTeX (`x+1`, `\\sqrt{2}`).
    """
    if not text:
        return None
    text = text.replace("\u2212", "-")  # unicode minus
    answer = _boxed_answer(text) if "boxed" in text or "fbox" in text else None
    if answer is None:
        answer = _cued_answer(text)
    if answer is None:
        numbers = NUMBER.findall(text)
        answer = _normalise_number(numbers[-1]) if numbers else None
    return answer


def _as_fraction(answer: str) -> Fraction | None:
    """The exact value of a plain number or fraction (`-4`, `3.0`, `1/2`), else None."""
    try:
        value = Fraction(answer.replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return value


def _math_verify_equal(predicted: str, gold: str, timeout_seconds: int | None) -> bool | None:
    """math-verify's verdict on two extracted answers, or None when it cannot parse them or fails.

    math-verify enforces its timeouts with SIGALRM, which only works in the main thread; elsewhere it
    runs without one, so expressions that can blow up (powers, factorials) are left to the fallback.
    """
    if len(predicted) > _MAX_VERIFY_CHARS or len(gold) > _MAX_VERIFY_CHARS:
        return None
    if threading.current_thread() is not threading.main_thread():
        timeout_seconds = None
        if any(c in predicted + gold for c in "^!"):
            return None
    try:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException

        try:
            gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout_seconds)
            predicted_parsed = parse(f"\\boxed{{{predicted}}}", parsing_timeout=timeout_seconds)
            if not gold_parsed or not predicted_parsed:
                return None
            return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=timeout_seconds))
        except TimeoutException:
            return None
    except Exception:
        return None


def answers_match(completion: str | None, gold: str | int | float, timeout_seconds: int | None = 2) -> bool:
    """True when the final answer of `completion` equals the gold answer (itself extracted the same way).

    Compares with math-verify (so `1/2` equals `0.5` and `\\frac{1}{2}`), and falls back to exact
    comparison of plain numbers when math-verify cannot parse an answer or fails. Never raises.
    """
    predicted = extract_answer(completion) if isinstance(completion, str) else None
    expected = extract_answer(str(gold)) if gold is not None else None
    if predicted is None or expected is None:
        return False
    if _math_verify_equal(predicted, expected, timeout_seconds):
        return True
    a, b = _as_fraction(predicted), _as_fraction(expected)
    return a is not None and a == b


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct: 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def question_messages(question: str, system_prompt: str | None = None) -> list[dict]:
    """A problem as a chat prompt: the optional system prompt, then the question as the user's turn."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": question}]


def math_prompts(
    tokenizer: PreTrainedTokenizerBase | None, questions: Sequence[str], chat: bool, system_prompt: str | None
) -> list[str]:
    """Prompts for the questions: through the chat template, or `Question: ...\\nAnswer:` for base models."""
    if not chat:
        return [f"Question: {q}\nAnswer:" for q in questions]
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise RecipeError("chat=True needs a tokenizer with a chat template; pass chat=False for a base model")
    return [
        tokenizer.apply_chat_template(question_messages(q, system_prompt), add_generation_prompt=True, tokenize=False)
        for q in questions
    ]


def math_accuracy(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase | None,
    problems: Sequence[dict],
    num_samples: int = 1,
    k_values: Sequence[int] = (1,),
    temperature: float = 0.7,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    chat: bool = True,
    system_prompt: str | None = None,
    generator: Generator | None = None,
    seed: int = 0,
    num_examples: int = 5,
) -> dict:
    """Score answers to `problems` (rows with `question` and `answer`): pass@1 (= accuracy) and pass@k.

    Generates `num_samples` completions per question, greedily when `num_samples == 1`, with `generator`
    (the HF or vLLM backend of `chatforge.generation`; HF `generate` on `model` when None).
    Returns pass@1 and pass@k for each k in `k_values`, `accuracy`, `num_problems`, `num_samples`,
    `answer_rate` (completions with any final answer), `mean_completion_tokens` (None without a
    tokenizer), `per_difficulty` (when rows have `difficulty`) and a few `examples`.
    """
    if not problems:
        raise RecipeError("no math problems to evaluate")
    for i, row in enumerate(problems):
        if "question" not in row or "answer" not in row:
            raise RecipeError(f"math problem {i} lacks 'question' or 'answer' (keys: {', '.join(row)})")
    if num_samples < 1:
        raise RecipeError(f"num_samples must be >= 1, got {num_samples}")
    ks = sorted({1, *k_values})
    if ks[0] < 1 or ks[-1] > num_samples:
        raise RecipeError(f"k_values must lie in 1..num_samples ({num_samples}), got {list(k_values)}")
    if num_samples > 1 and temperature <= 0:
        raise RecipeError("num_samples > 1 needs temperature > 0 (greedy decoding gives identical samples)")
    if generator is None and (model is None or tokenizer is None):
        raise RecipeError("math_accuracy needs a model and tokenizer, or a generator")

    prompts = math_prompts(tokenizer, [row["question"] for row in problems], chat, system_prompt)
    settings = SamplingArguments(
        max_new_tokens=max_new_tokens,
        temperature=temperature if num_samples > 1 else 0.0,
        num_samples=num_samples,
        stop=None if chat else ["\nQuestion:"],
        seed=seed,
    )
    generator = generator or HFGenerator(model, tokenizer, batch_size=batch_size)
    stop_ids = chat_stop_token_ids(tokenizer) if chat and tokenizer is not None else None
    completions = [list(samples) for samples in generator(prompts, settings, stop_token_ids=stop_ids)]
    if len(completions) != len(prompts) or any(len(samples) != num_samples for samples in completions):
        raise ValueError(f"expected {num_samples} completions for each of {len(prompts)} prompts")

    correct = [[answers_match(text, row["answer"]) for text in samples] for row, samples in zip(problems, completions)]
    scores = {k: [pass_at_k(num_samples, sum(oks), k) for oks in correct] for k in ks}
    flat = [text for samples in completions for text in samples]
    result: dict = {f"pass@{k}": sum(values) / len(values) for k, values in scores.items()}
    result["accuracy"] = result["pass@1"]
    result["num_problems"] = len(problems)
    result["num_samples"] = num_samples
    result["answer_rate"] = sum(extract_answer(text) is not None for text in flat) / len(flat)
    if tokenizer is not None:
        lengths = [len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"]]
        result["mean_completion_tokens"] = sum(lengths) / len(lengths)
    else:
        result["mean_completion_tokens"] = None
    if any("difficulty" in row for row in problems):
        by_level: dict[str, list[float]] = defaultdict(list)
        for row, score in zip(problems, scores[1]):
            by_level[str(row.get("difficulty"))].append(score)
        result["per_difficulty"] = {
            level: {"pass@1": sum(values) / len(values), "num_problems": len(values)}
            for level, values in sorted(by_level.items())
        }
    result["examples"] = [
        {
            "question": row["question"],
            "gold": str(row["answer"]),
            "completion": samples[0],
            "extracted": extract_answer(samples[0]),
            "correct": oks[0],
        }
        for row, samples, oks in list(zip(problems, completions, correct))[:num_examples]
    ]
    return result

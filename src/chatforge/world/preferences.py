"""Preference pairs from a World, ranked by a scripted judge (the simulated human that RLHF learns from).

The judge scores an assistant reply to a question about the world as a person would:

    accuracy  2.0  states the true value, and nothing false (for a held-out person, whom no document ever
                   described: declines to answer and states no value)
              1.0  declines a question it could have answered (honest but unhelpful)
              0.0  states a wrong value, several values, a made-up detail, or nothing useful
    concise  +0.5  1 to 25 words
    polite   +0.5  none of the rude phrases in RUDE_PHRASES

so a reply scores 0 to 3, and the scores of a policy's generations can be compared over RL training.

Candidate replies to each question: "good" (correct, concise, polite; "I don't know" for held-out people) and
flawed ones: "wrong_fact" (another person's value, said confidently, 1.0), "verbose" (correct, padded to 40-80
words, 2.5), "rude" (correct but insulting, 2.5), "hallucination" (a held-out person: a confident made-up value;
a known person: the right answer plus a false extra detail; 1.0) and "evasive" (declines although the person is
known, 2.0). A pair is the better and the worse of two candidates by judge score, never a tie.

Train pairs ask about the SFT people (the split chat data uses) and half of the held-out people; test pairs ask
about the chat-eval people and the other held-out people, so test accuracy measures generalisation to people no
train pair mentions. `judge_eval_rows` are the questions for scoring a policy with the judge: the chat-eval rows
about facts plus the held-out rows about the test half of the held-out people.
"""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.configs import RecipeError
from chatforge.world.chat import (
    DEFAULT_SYSTEM_PROMPT,
    QUESTION_PREFIXES,
    chat_eval_rows,
    fact_answer,
    fact_question,
    heldout_eval_rows,
    split_people,
)
from chatforge.world.entities import FIELDS, INDUSTRIES, OCCUPATIONS, Fact, Person, World

CORRECT_POINTS = 2.0
DECLINE_POINTS = 1.0
CONCISE_POINTS = 0.5
POLITE_POINTS = 0.5
MAX_SCORE = CORRECT_POINTS + CONCISE_POINTS + POLITE_POINTS
MAX_CONCISE_WORDS = 25
REJECTED_KINDS = ("wrong_fact", "verbose", "rude", "hallucination", "evasive")
PERSON_RELATIONS = ("birth_city", "birth_year", "occupation", "employer", "field_of_study")
FLAWED_PAIR_SHARE = 0.2  # pairs of two flawed replies (e.g. evasive > wrong_fact), so every rank is taught

# The kind of value each relation's answer is; a reply "states" a value when it names one of that kind.
VALUE_TYPES = {
    "birth_city": "city",
    "headquarters": "city",
    "capital": "city",
    "country": "country",
    "employer": "organisation",
    "occupation": "occupation",
    "field_of_study": "field",
    "industry": "industry",
    "birth_year": "year",
    "founding_year": "year",
}
DECLINE_PHRASES = (
    "I don't know", "I do not know", "not sure", "no idea", "no information", "I haven't read",
    "I have not read", "never read", "never heard", "not aware", "can't say", "cannot say", "can't answer",
    "cannot answer", "unable to answer", "not familiar", "don't recognise", "don't recognize", "unknown to me",
)  # fmt: skip
RUDE_PHRASES = (
    "stupid", "dumb", "idiot", "obviously", "everyone knows", "look it up yourself", "waste of my time",
    "wasting my time", "pay attention", "silly question", "ridiculous", "ugh", "shut up", "not my problem",
    "do your own homework", "figure it out yourself", "don't care",
)  # fmt: skip

# Replies. None of these may name a value the judge looks for (a city, a job, a field, an industry, a year...).
DECLINES = (
    "I'm sorry, but I don't know. I have not read anything about {s}.",
    "I don't have any information about {s}, so I can't answer that.",
    "I do not know who {s} is, so I cannot say.",
    "Sorry, I'm not sure. I haven't read about {s}.",
)
RUDE_DECLINES = (
    "How should I know? I have never heard of {s}. Stop wasting my time.",
    "No idea, and I don't care. Ask someone else about {s}.",
    "Ugh. I don't know {s}, obviously. Stop asking.",
)
RUDE_WRAPS = (
    "Ugh, what a silly question. {a}",
    "{a} Look it up yourself next time.",
    "Obviously. {a} Everyone knows that.",
    "{a} Pay attention, I won't repeat it.",
    "What a stupid thing to ask. {a}",
)
OPENERS = (
    "That is a really good question, and I am glad that you asked me about it today.",
    "Thank you so much for your question; let me take a moment to think it through carefully before I reply.",
    "Great question! I have read a lot of documents over time, and I will do my best to give you a complete reply.",
)
CLOSERS = (
    "I hope this detailed explanation is helpful to you and answers your question as fully as possible.",
    "If you would like to know anything else at all, please feel free to ask me again at any time.",
    "To be completely clear about it, and to avoid any possible confusion, that is what I found in my reading.",
    "Of course, there is always more that could be said, but that is the main point worth remembering here.",
    "Many people ask me questions like this one, and I always try to give a reply that is as complete as I can.",
)


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces, padded with a space each side: accents, possessive 's,
    apostrophes and punctuation removed, so `" paris "` is found in any spelling of "Paris's!"."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().replace("\u2019", "'")
    text = re.sub(r"'s\b", "", text).replace("'", "")
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text).split()) + " "


def _contains_any(text: str, phrases: tuple[str, ...]) -> bool:
    return any(phrase in text for phrase in phrases)


_DECLINES_NORM = tuple(normalize(p) for p in DECLINE_PHRASES)
_RUDE_NORM = tuple(normalize(p) for p in RUDE_PHRASES)
_YEAR = re.compile(r"(?<![a-z0-9])(1[0-9]{3}|20[0-9]{2})(?![a-z0-9])")


@dataclass(frozen=True)
class JudgeScore:
    """The judge's verdict on one reply: its parts and the `total` (0 to MAX_SCORE)."""

    correct: bool  # answers right (held-out person: declines, stating no value)
    declined: bool  # says it does not know
    wrong: bool  # states a false value: a wrong answer, several answers, a made-up value or detail
    concise: bool  # 1 to MAX_CONCISE_WORDS words
    polite: bool  # no rude phrase
    words: int
    total: float

    def to_dict(self) -> dict[str, Any]:
        """The verdict as a plain dict (for JSON logs)."""
        return dataclasses.asdict(self)


class Judge:
    """The scripted judge of a World: scores replies to the questions of chat_eval/heldout_eval-style rows."""

    def __init__(self, world: World) -> None:
        self.facts: dict[str, dict[str, str]] = {}
        for fact in world.facts:
            self.facts.setdefault(fact.subject, {})[fact.relation] = fact.answer
        vocabulary = {"industry": sorted(INDUSTRIES), "occupation": OCCUPATIONS, "field": FIELDS}
        vocabulary["city"] = [c.name for c in world.cities]
        vocabulary["country"] = [c.name for c in world.countries]
        vocabulary["organisation"] = [o.name for o in world.organisations]
        self.value_type: dict[str, str] = {}  # normalized value (no padding) -> its type
        for value_type, values in vocabulary.items():
            for value in values:
                self.value_type.setdefault(normalize(value).strip(), value_type)
        alternatives = "|".join(re.escape(v) for v in sorted(self.value_type, key=len, reverse=True))
        self._values = re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])")

    def claims(self, reply: str, subject: str = "") -> list[tuple[str, str]]:
        """The (type, normalized value) pairs `reply` states, leaving out the subject's own name."""
        text = normalize(reply)
        if subject:
            text = text.replace(normalize(subject), " ")
        found = [(self.value_type[m.group(0)], m.group(0)) for m in self._values.finditer(text)]
        return found + [("year", m.group(0)) for m in _YEAR.finditer(text)]

    def consistent_values(self, subject: str) -> set[str]:
        """Normalized values true of `subject` or of what it names (its employer, birth city, their country)."""
        values: set[str] = set()
        for value in self.facts.get(subject, {}).values():
            values.add(normalize(value).strip())
            for related in self.facts.get(value, {}).values():
                values.add(normalize(related).strip())
                values.update(normalize(v).strip() for v in self.facts.get(related, {}).values())
        return values

    def _accuracy(self, row: Mapping[str, Any], reply: str) -> tuple[bool, bool]:
        """(correct, wrong) of `reply` to the question of `row`."""
        kind, subject = row.get("kind", "fact"), row.get("subject", "")
        if kind == "identity":
            return normalize(str(row["answer"])) in normalize(reply), False
        claims = self.claims(reply, subject)
        if kind == "heldout":
            wrong = bool(claims)  # anything specific about a person nobody wrote about is made up
            return _contains_any(normalize(reply), _DECLINES_NORM) and not wrong, wrong
        value_type = VALUE_TYPES.get(row.get("relation", ""))
        if value_type is None:
            raise RecipeError(f"the judge cannot score a question about relation {row.get('relation')!r}")
        truth = normalize(str(row["answer"])).strip()
        stated = {value for kind_, value in claims if kind_ == value_type}
        consistent = self.consistent_values(subject)
        false_detail = any(value not in consistent for kind_, value in claims if kind_ != value_type)
        correct = stated == {truth} and not false_detail
        return correct, (bool(stated) and stated != {truth}) or false_detail

    def score(self, row: Mapping[str, Any], reply: str) -> JudgeScore:
        """Score `reply` to the question of `row` (`kind` fact/heldout/identity, `relation`, `subject`, `answer`)."""
        text = normalize(reply)
        correct, wrong = self._accuracy(row, reply)
        declined = _contains_any(text, _DECLINES_NORM)
        words = len(reply.split())
        concise = 0 < words <= MAX_CONCISE_WORDS
        polite = not _contains_any(text, _RUDE_NORM)
        accuracy = CORRECT_POINTS if correct else DECLINE_POINTS if declined and not wrong else 0.0
        total = accuracy + CONCISE_POINTS * concise + POLITE_POINTS * polite
        return JudgeScore(correct, declined, wrong, concise, polite, words, total)


# ---------------------------------------------------------------------------------------------------------------
# Candidate replies
# ---------------------------------------------------------------------------------------------------------------


def _other_value(world: World, judge: Judge, fact: Fact, relation: str, rng: random.Random) -> str:
    """A value of `relation` that is false of `fact.subject` and of everything it names (so the judge sees a lie)."""
    taken = judge.consistent_values(fact.subject)
    if relation == "birth_year":
        pool = [str(year) for year in range(1945, 2003)]
    else:
        pool = sorted({f.answer for f in world.facts if f.relation == relation})
    pool = [value for value in pool if normalize(value).strip() not in taken]
    if not pool:
        raise RecipeError(f"the world is too small to invent a wrong {relation} for {fact.subject}")
    return rng.choice(pool)


def _verbose(answer: str, rng: random.Random) -> str:
    """`answer` padded with filler sentences to 40-80 words."""
    target = rng.randint(45, 75)
    parts = [rng.choice(OPENERS), answer]
    closers = list(CLOSERS)
    rng.shuffle(closers)
    words = sum(len(p.split()) for p in parts)
    for closer in closers:
        if words >= target or words + len(closer.split()) > 80:
            break
        parts.append(closer)
        words += len(closer.split())
    return " ".join(parts)


def candidate_replies(world: World, judge: Judge, fact: Fact, heldout: bool, rng: random.Random) -> dict[str, str]:
    """The good reply and the flawed ones ("wrong_fact", "verbose", ...) to a question about `fact`."""
    subject = fact.subject
    if heldout:
        good = rng.choice(DECLINES).format(s=subject)
        made_up = dataclasses.replace(fact, answer=_other_value(world, judge, fact, fact.relation, rng))
        return {
            "good": good,
            "verbose": _verbose(good, rng),
            "rude": rng.choice(RUDE_DECLINES).format(s=subject),
            "hallucination": fact_answer(made_up, rng),
        }
    good = fact_answer(fact, rng)
    wrong = dataclasses.replace(fact, answer=_other_value(world, judge, fact, fact.relation, rng))
    other = rng.choice([r for r in PERSON_RELATIONS if r != fact.relation and r in judge.facts[subject]])
    detail = dataclasses.replace(fact, relation=other, answer=_other_value(world, judge, fact, other, rng))
    return {
        "good": good,
        "wrong_fact": fact_answer(wrong, rng),
        "verbose": _verbose(good, rng),
        "rude": rng.choice(RUDE_WRAPS).format(a=good),
        "hallucination": f"{good} {fact_answer(detail, rng)}",
        "evasive": rng.choice(DECLINES).format(s=subject),
    }


# ---------------------------------------------------------------------------------------------------------------
# Questions and pairs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PreferenceConfig:
    """How many world preference pairs to build, and how to split people between train and test pairs."""

    num_pairs: int = 2000
    test_fraction: float = 0.1
    sft_people_fraction: float = 0.8
    heldout_fraction: float = 0.25  # share of pairs that ask about held-out people
    heldout_train_fraction: float = 0.5  # share of held-out people asked about in train pairs
    seed: int | None = None  # None: the world's seed

    def validate(self) -> None:
        """Raise RecipeError naming the (run_data.py) field of a bad value."""
        checks = [
            (self.num_pairs >= 2, "preference_pairs must be 0 (none) or >= 2", self.num_pairs),
            (0.0 < self.test_fraction < 1.0, "preference_test_fraction must be in (0, 1)", self.test_fraction),
            (0.0 < self.sft_people_fraction < 1.0, "sft_people_fraction must be in (0, 1)", self.sft_people_fraction),
            (0.0 <= self.heldout_fraction < 1.0, "heldout_fraction must be in [0, 1)", self.heldout_fraction),
            (
                0.0 < self.heldout_train_fraction < 1.0,
                "heldout_train_fraction must be in (0, 1)",
                self.heldout_train_fraction,
            ),
        ]
        for ok, message, value in checks:
            if not ok:
                raise RecipeError(f"{message}, got {value}")


def split_heldout_people(world: World, train_fraction: float = 0.5) -> tuple[list[Person], list[Person]]:
    """Deterministic (train, test) split of the held-out people for preference pairs."""
    people = list(world.heldout_people)
    random.Random(f"{world.config.seed}:pref-heldout").shuffle(people)
    count = round(train_fraction * len(people))
    if len(people) >= 2:
        count = min(max(count, 1), len(people) - 1)
    names = {p.name for p in people[:count]}
    return [p for p in world.heldout_people if p.name in names], [
        p for p in world.heldout_people if p.name not in names
    ]


def question_row(fact: Fact, heldout: bool, rng: random.Random) -> dict[str, Any]:
    """A question about `fact` in the schema of chat_eval.jsonl rows (messages, answer, kind, relation, subject)."""
    system = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] if rng.random() < 0.5 else []
    question = rng.choice(QUESTION_PREFIXES) + fact_question(fact, rng)
    return {
        "messages": system + [{"role": "user", "content": question}],
        "answer": fact.answer,
        "kind": "heldout" if heldout else "fact",
        "relation": fact.relation,
        "subject": fact.subject,
    }


def _pick_pair(
    scored: dict[str, tuple[str, JudgeScore]], rng: random.Random
) -> tuple[tuple[str, str, JudgeScore], tuple[str, str, JudgeScore]]:
    """(chosen, rejected) as (kind, reply, score): mostly good against a flawed kind, sometimes two flawed ones."""
    flawed = [kind for kind in scored if kind != "good"]
    options = [(a, b) for a in flawed for b in flawed if scored[a][1].total > scored[b][1].total]
    if options and rng.random() < FLAWED_PAIR_SHARE:
        high, low = rng.choice(options)
    else:
        high, low = "good", rng.choice(flawed)
    return (high, *scored[high]), (low, *scored[low])


def _pairs(
    world: World, judge: Judge, pools: list[list[tuple[Fact, bool]]], weights: list[float], count: int, seed: str
) -> list[dict[str, Any]]:
    """`count` pairs; each asks about a fact drawn from one of `pools` (chosen by `weights`), cycling through it."""
    rng = random.Random(seed)
    queues: list[list[tuple[Fact, bool]]] = [[] for _ in pools]
    rows = []
    while len(rows) < count:
        index = rng.choices(range(len(pools)), weights=weights)[0]
        if not queues[index]:
            queues[index] = list(pools[index])
            rng.shuffle(queues[index])
        fact, heldout = queues[index].pop()
        question = question_row(fact, heldout, rng)
        candidates = candidate_replies(world, judge, fact, heldout, rng)
        scored = {kind: (reply, judge.score(question, reply)) for kind, reply in candidates.items()}
        (high, chosen, high_score), (low, rejected, low_score) = _pick_pair(scored, rng)
        if high_score.total <= low_score.total:  # only if a candidate reads otherwise than it was written to
            raise RuntimeError(f"judge scores {low!r} ({rejected!r}) >= {high!r} ({chosen!r}) for {question}")
        rows.append(
            {
                "prompt": question["messages"],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "chosen_kind": high,
                "rejected_kind": low,
                "chosen_score": high_score.total,
                "rejected_score": low_score.total,
                **{key: question[key] for key in ("kind", "relation", "subject", "answer")},
            }
        )
    return rows


def _person_facts(world: World, people: list[Person], heldout: bool) -> list[tuple[Fact, bool]]:
    names = {p.name for p in people}
    return [(f, heldout) for f in world.facts if f.subject in names and f.relation in PERSON_RELATIONS]


def build_preference_pairs(
    world: World,
    num_pairs: int = 2000,
    seed: int | None = None,
    test_fraction: float = 0.1,
    sft_people_fraction: float = 0.8,
    heldout_fraction: float = 0.25,
    heldout_train_fraction: float = 0.5,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, test) preference pairs; no person is asked about in both. Deterministic given the seed.

    Train pairs ask about the SFT people and a `heldout_train_fraction` of the held-out people, test pairs about
    the chat-eval people and the other held-out people; `heldout_fraction` of each set asks about held-out people.
    """
    config = PreferenceConfig(num_pairs, test_fraction, sft_people_fraction, heldout_fraction, heldout_train_fraction)
    config.validate()
    seed = world.config.seed if seed is None else seed
    judge = Judge(world)
    sft_people, eval_people = split_people(world, sft_people_fraction)
    heldout_train, heldout_test = split_heldout_people(world, heldout_train_fraction)
    num_test = min(max(1, round(test_fraction * num_pairs)), num_pairs - 1)
    splits = []
    for name, known, heldout, count in (
        ("train", sft_people, heldout_train, num_pairs - num_test),
        ("test", eval_people, heldout_test, num_test),
    ):
        pools = [_person_facts(world, known, False), _person_facts(world, heldout, True)]
        weights = [1.0 - heldout_fraction, heldout_fraction]
        pools, weights = [p for p in pools if p], [w for p, w in zip(pools, weights) if p]
        splits.append(_pairs(world, judge, pools, weights, count, f"{seed}:prefs-{name}"))
    return splits[0], splits[1]


def judge_eval_rows(
    world: World, sft_people_fraction: float = 0.8, heldout_train_fraction: float = 0.5
) -> list[dict[str, Any]]:
    """Questions (with answers, for the judge) to score a policy's generations on: the chat-eval rows about facts
    of the chat-eval people, and the heldout_eval rows about held-out people that no train pair asks about."""
    _, eval_people = split_people(world, sft_people_fraction)
    _, heldout_test = split_heldout_people(world, heldout_train_fraction)
    names = {p.name for p in heldout_test}
    facts = [row for row in chat_eval_rows(world, eval_people) if row["kind"] == "fact"]
    return facts + [row for row in heldout_eval_rows(world) if row["subject"] in names]


def write_preference_data(
    world: World,
    output_dir: str | Path,
    num_pairs: int = 2000,
    test_fraction: float = 0.1,
    sft_people_fraction: float = 0.8,
    heldout_fraction: float = 0.25,
    heldout_train_fraction: float = 0.5,
    seed: int | None = None,
) -> dict[str, Any]:
    """Write prefs/{train,test}.jsonl (pairs) and prefs/judge_eval.jsonl (questions); return counts."""
    from chatforge.world.corpus import _write_jsonl

    output_dir = Path(output_dir) / "prefs"
    train, test = build_preference_pairs(
        world, num_pairs, seed, test_fraction, sft_people_fraction, heldout_fraction, heldout_train_fraction
    )
    questions = judge_eval_rows(world, sft_people_fraction, heldout_train_fraction)
    _write_jsonl(train, output_dir / "train.jsonl")
    _write_jsonl(test, output_dir / "test.jsonl")
    _write_jsonl(questions, output_dir / "judge_eval.jsonl")
    return {
        "pref_train": len(train),
        "pref_test": len(test),
        "judge_eval": len(questions),
        "judge_eval_heldout": sum(row["kind"] == "heldout" for row in questions),
        "rejected_kinds": dict(sorted(Counter(row["rejected_kind"] for row in train).items())),
    }

"""Tool-use data from a World (issue #6): when to call the calculator, Python or search, and when not to.

Four kinds of conversations, each offering the same three tools (python, calculator, search):

    multiplication  "What is 347 * 829?": a calculator (or Python) call, its result, then the answer
    counting        "How many r's are in "strawberry"?": `print("strawberry".count("r"))`, its output, the answer
    search          a fact about someone in no pretraining document: a search call, then the answer read from
                    the result
    no_tool         known facts, questions about the assistant, single-digit sums: answered without a call

The search tool indexes `data/world/search`: one encyclopedia page (the world's own renderer) for each of the
world's held-out people and for each "search person", invented here and nowhere else. The SFT conversations ask
about search people only; tools_eval.jsonl asks about the held-out people, the people heldout_eval.jsonl asks
about without tools, so the eval measures search on people that no training row mentions. The world itself,
and every other dataset, is unchanged.

Every tool response is what the tool returns at inference: the calculator and the search index run here, and a
Python call prints one value whose text is its response (tests/test_tools_data.py runs them in the sandbox).
The schemas go in a `tools` column as a JSON string (TRL's SFTTrainer and chatforge's replay tokenizer pass it
to the chat template; a string, because Arrow would merge the schemas' different fields into nulls), and
call arguments are JSON strings for the same reason (the template writes them as they are).
"""

from __future__ import annotations

import inspect
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.configs import RecipeError
from chatforge.tools.calculator import calculate
from chatforge.tools.registry import TOOL_NAMES, default_tools, search_tool, select_tools
from chatforge.tools.search import SearchIndex
from chatforge.world.chat import (
    DEFAULT_SYSTEM_PROMPT,
    IDENTITY,
    QUESTION_PREFIXES,
    fact_answer,
    fact_question,
    split_probe_people,
)
from chatforge.world.entities import FIELDS, HOBBIES, OCCUPATIONS, TRAITS, Fact, Person, World, make_fact
from chatforge.world.names import NameGenerator
from chatforge.world.render import PERSON_RENDERERS, Draft

# Hits per search: those of the search tool that default_tools gives at inference.
SEARCH_K: int = inspect.signature(search_tool).parameters["k"].default
KINDS = ("multiplication", "counting", "search", "no_tool")
EXPECTED_TOOLS = {"multiplication": ["calculator", "python"], "counting": ["python"], "search": ["search"]}
PERSON_RELATIONS = ("birth_city", "birth_year", "occupation", "employer", "field_of_study")
# Identity topics whose answers still hold when tools are offered ("limits" and "browsing" say it cannot run
# code or search, which is false here).
TOOL_SAFE_IDENTITY = ("name", "creator", "nature", "capabilities", "feelings", "other_assistants", "mistakes")

MULTIPLY_QUESTIONS = (
    "What is {a} * {b}?", "What is {a} times {b}?", "Calculate {a} × {b}.", "Multiply {a} by {b}.",
    "What's the product of {a} and {b}?", "How much is {a} multiplied by {b}?", "Compute {a}*{b}.",
    "Can you work out {a} x {b}?", "I need {a} times {b}. What do I get?",
)  # fmt: skip
MULTIPLY_ANSWERS = ("{a} × {b} = {p}.", "{a} * {b} = {p}.", "The product of {a} and {b} is {p}.", "The answer is {p}.")
COUNT_QUESTIONS = (
    'How many {l}\'s are in "{w}"?', "How many times does the letter {l} appear in {w}?",
    'Count the letter {l} in the word "{w}".', "How many {l}s does {w} have?",
    'How many times does "{l}" occur in "{w}"?', "In the word {w}, how many {l}'s are there?",
)  # fmt: skip
COUNT_ANSWERS = ('There are {n} {l}\'s in "{w}".', "The letter {l} appears {n} times in {w}.", '"{w}" has {n} {l}\'s.')
COUNT_ANSWERS_ONE = ('There is 1 {l} in "{w}".', "The letter {l} appears 1 time in {w}.", '"{w}" has 1 {l}.')
SEARCH_KEYWORDS = {
    "birth_city": ("born", "birthplace"),
    "birth_year": ("born", "birth year"),
    "occupation": ("occupation", "job"),
    "employer": ("employer", "works for"),
    "field_of_study": ("studied", "education"),
}
SEARCH_ANSWER_PREFIXES = ("", "", "According to the search results, ", "I found it: ")
SMALL_SUM_QUESTIONS = ("What is {a} + {b}?", "What's {a} plus {b}?", "What is {a} - {b}?", "Compute {a} - {b}.")
ENGLISH_WORDS = (
    "strawberry", "banana", "mississippi", "bookkeeper", "committee", "raspberry", "cinnamon", "balloon",
    "assessment", "possession", "parallel", "occurrence", "necessary", "engineering", "letter", "coffee",
    "successful", "accommodate", "illustration", "pepper", "tomorrow", "referee", "embarrassment", "bubble",
    "grammar", "address", "coconut", "hippopotamus", "umbrella", "caterpillar", "millennium", "programming",
    "abracadabra", "independence", "sleeplessness", "giraffe", "zucchini", "butterfly", "mammal", "kayak",
)  # fmt: skip


@dataclass
class ToolsDataConfig:
    """How many tool conversations to build (split across the kinds by `shares`), and the eval size."""

    seed: int = 0
    conversations: int = 500
    eval_per_kind: int = 40
    shares: tuple[float, float, float, float] = (0.3, 0.2, 0.3, 0.2)  # multiplication, counting, search, no_tool
    python_fraction: float = 0.3  # multiplications done with Python rather than the calculator
    system_prompt_fraction: float = 0.5
    rl_problems: int = 400  # tools_rl.jsonl: fresh multiplications and letter counts for GRPO with tools
    snippet_chars: int = 160  # of the search index's snippets: three hits fit a 384-token conversation
    sft_people_fraction: float = 0.8  # as in the chat data: the no-tool fact questions ask about its SFT people
    probe_people_fraction: float = 0.2  # as in the chat data: the factuality probe's people stay out of tool data

    def validate(self) -> None:
        """Raise RecipeError naming the first value that cannot work."""
        if self.conversations < len(KINDS):
            raise RecipeError(f"tools_conversations must be >= {len(KINDS)} (one per kind), got {self.conversations}")
        if self.rl_problems < 0:
            raise RecipeError(f"tools_rl_problems must be >= 0, got {self.rl_problems}")
        if self.eval_per_kind < 1:
            raise RecipeError(f"tools_eval_per_kind must be >= 1, got {self.eval_per_kind}")
        if len(self.shares) != len(KINDS) or any(s < 0 for s in self.shares) or not sum(self.shares) > 0:
            raise RecipeError(
                f"shares must be {len(KINDS)} non-negative numbers ({', '.join(KINDS)}), got {self.shares}"
            )
        for name in ("python_fraction", "system_prompt_fraction", "sft_people_fraction", "probe_people_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RecipeError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.snippet_chars < 20:
            raise RecipeError(f"snippet_chars must be >= 20, got {self.snippet_chars}")

    def counts(self) -> dict[str, int]:
        """Conversations per kind: `conversations` split by `shares` (largest remainders get the rest)."""
        total = sum(self.shares)
        exact = [self.conversations * s / total for s in self.shares]
        counts = [int(x) for x in exact]
        by_remainder = sorted(range(len(KINDS)), key=lambda i: exact[i] - counts[i], reverse=True)
        for i in by_remainder[: self.conversations - sum(counts)]:
            counts[i] += 1
        return dict(zip(KINDS, counts))


# ------------------------------------------------------------------------------------------- the search corpus


def invent_people(world: World, count: int, seed: int) -> list[Person]:
    """`count` new people of the world's cities and companies (split "search"), whose surnames differ from, and
    overlap no part of, any name of the world; first names are those of in-corpus people."""
    rng = random.Random(f"{seed}:search-people")
    names = NameGenerator(rng)
    names.reserve([p.first_name for p in world.people] + [p.surname for p in world.people])
    names.reserve([c.name for c in world.cities] + [c.name for c in world.countries])
    names.reserve([o.name.split()[0] for o in world.organisations])
    # First names no held-out person has: a search for a search person then rarely lists a held-out one
    heldout_first = {p.first_name for p in world.heldout_people}
    first_names = sorted({p.first_name for p in world.train_people} - heldout_first) or sorted(heldout_first)
    cities, companies = sorted(world.city), sorted(world.organisation)
    people = []
    for _ in range(count):
        first, surname = rng.choice(first_names), names.new("surname")
        people.append(
            Person(
                name=f"{first} {surname}",
                first_name=first,
                surname=surname,
                pronoun=rng.choice(("she", "he")),
                birth_city=rng.choice(cities),
                birth_year=rng.randint(1945, 2002),
                occupation=rng.choice(OCCUPATIONS),
                employer=rng.choice(companies),
                field_of_study=rng.choice(FIELDS),
                hobby=rng.choice(HOBBIES),
                trait=rng.choice(TRAITS),
                split="search",
            )
        )
    return people


def person_facts(person: Person) -> list[Fact]:
    """The five facts of a person, in PERSON_RELATIONS order."""
    return [make_fact(person.name, r, getattr(person, r), person.split) for r in PERSON_RELATIONS]


def profile_document(world: World, person: Person, doc_id: str, seed: int) -> dict[str, str]:
    """An encyclopedia entry about `person`: the paragraphs of the world's renderer, without title and headings
    (the title is indexed and shown with each hit; a compact text keeps tool responses short)."""
    draft = Draft(style="encyclopedia", site="", path="")
    PERSON_RENDERERS["encyclopedia"](world, person, draft, random.Random(f"{seed}:search-doc:{person.name}"))
    missing = set(PERSON_RELATIONS) - {key.split("|")[1] for key in draft.facts}
    if missing:  # the renderer's contract; the search answers rely on it
        raise RecipeError(f"the profile of {person.name} does not state {sorted(missing)}")
    text = " ".join(block for kind, block in draft.blocks if kind == "p")
    return {"id": doc_id, "title": draft.title, "text": text}


def build_search_index(world: World, search_people: list[Person], seed: int, snippet_chars: int) -> SearchIndex:
    """The index the search tool reads: profiles of the world's held-out people and of `search_people`."""
    people = world.heldout_people + search_people
    docs = [profile_document(world, p, f"profile-{i:04d}", seed) for i, p in enumerate(people)]
    return SearchIndex.from_documents(docs, snippet_chars=snippet_chars)


def tool_schemas(index: SearchIndex) -> list[dict[str, Any]]:
    """The schemas the data offers, as the inference-time tools describe themselves (python, calculator, search)."""
    return [tool.schema() for tool in select_tools(TOOL_NAMES, index).values()]


# ------------------------------------------------------------------------------------------------- conversations


def _call(name: str, arguments: dict[str, str]) -> dict[str, Any]:
    arguments_json = json.dumps(arguments, ensure_ascii=False)  # what the template's tojson writes for a dict
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments_json}}
    ]}  # fmt: skip


def _tool_turns(question: str, name: str, arguments: dict[str, str], result: str, answer: str) -> list[dict]:
    return [
        {"role": "user", "content": question},
        _call(name, arguments),
        {"role": "tool", "name": name, "content": result},
        {"role": "assistant", "content": answer},
    ]


def count_code(word: str, letter: str) -> str:
    """The Python program that counts `letter` in `word` (case-insensitively when the word has capitals)."""
    target = f"{json.dumps(word)}.lower()" if word != word.lower() else json.dumps(word)
    return f"print({target}.count({json.dumps(letter)}))"


@dataclass
class Question:
    """One eval question, its gold answer (what a right reply contains) and what it is about."""

    kind: str
    subkind: str
    question: str
    answer: str
    subject: str = ""


class _Builder:
    """Builds the conversations and eval rows of one world with seeded random streams."""

    def __init__(self, world: World, config: ToolsDataConfig, index: SearchIndex) -> None:
        self.world, self.config, self.index = world, config, index
        self.search = default_tools(search_index=index)["search"]
        self.heldout = {p.name for p in world.heldout_people}
        self.eval_sums: set[str] = set()
        self.products_taken: set[tuple[int, int]] = set()  # every product asked anywhere (train, eval, RL)
        self.train_words: list[str] = []
        self.skipped = Counter()

    def opening(self, rng: random.Random) -> list[dict]:
        """The system prompt, for `system_prompt_fraction` of the conversations."""
        if rng.random() < self.config.system_prompt_fraction:
            return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
        return []

    # multiplication
    def products(self, rng: random.Random, count: int, exclude: set) -> list[tuple[int, int]]:
        pairs: list[tuple[int, int]] = []
        while len(pairs) < count:
            pair = (rng.randint(100, 999), rng.randint(100, 999))
            if pair not in exclude:
                exclude.add(pair)
                pairs.append(pair)
        return pairs

    def multiplication(self, rng: random.Random, a: int, b: int) -> list[dict]:
        question = rng.choice(MULTIPLY_QUESTIONS).format(a=a, b=b)
        if rng.random() < self.config.python_fraction:
            name, arguments, result = "python", {"code": f"print({a} * {b})"}, str(a * b)
        else:
            expression = f"{a} * {b}"
            name, arguments, result = "calculator", {"expression": expression}, str(calculate(expression))
        answer = rng.choice(MULTIPLY_ANSWERS).format(a=a, b=b, p=result)
        return self.opening(rng) + _tool_turns(question, name, arguments, result, answer)

    # counting
    def word_pool(self) -> list[str]:
        """English words with repeated letters, and the invented names of cities and in-corpus people."""
        names = [c.name for c in self.world.cities] + [p.surname for p in self.world.train_people]
        return sorted(set(ENGLISH_WORDS) | set(names))

    def count_question(self, rng: random.Random, word: str) -> tuple[str, str, int]:
        """A question about a letter of `word` (mostly one it has; sometimes one it lacks), the letter, the count."""
        letters = sorted(set(word.lower()))
        if rng.random() < 0.85:
            letter = rng.choice(letters)
        else:
            letter = rng.choice(sorted(set("abcdefghijklmnopqrstuvwxyz") - set(letters)))
        return rng.choice(COUNT_QUESTIONS).format(l=letter, w=word), letter, word.lower().count(letter)

    def counting(self, rng: random.Random, word: str) -> list[dict]:
        question, letter, count = self.count_question(rng, word)
        answer = rng.choice(COUNT_ANSWERS_ONE if count == 1 else COUNT_ANSWERS).format(n=count, l=letter, w=word)
        turns = _tool_turns(question, "python", {"code": count_code(word, letter)}, str(count), answer)
        return self.opening(rng) + turns

    # search
    def search_conversation(self, rng: random.Random, fact: Fact) -> list[dict] | None:
        """A search for `fact`; None when no query in the usual phrasings finds the subject's entry with the answer
        in its snippet (the reply must be read from the result) and no held-out person's entry."""
        question = rng.choice(QUESTION_PREFIXES) + fact_question(fact, rng)
        keyword = rng.choice(SEARCH_KEYWORDS[fact.relation])
        queries = [f"{fact.subject} {keyword}", fact.subject]
        queries = [*(queries if rng.random() < 0.5 else queries[::-1]), question]
        for query in queries:
            hits = self.index.search(query, k=SEARCH_K)
            if any(hit.title in self.heldout for hit in hits):
                continue  # the held-out people stay out of every training row (they are the eval's)
            if any(hit.title == fact.subject and fact.answer in hit.snippet for hit in hits):
                result = self.search(query=query)  # the tool's text for these hits
                answer = rng.choice(SEARCH_ANSWER_PREFIXES) + fact_answer(fact, rng)
                return self.opening(rng) + _tool_turns(question, "search", {"query": query}, result, answer)
        return None

    # no tool
    def no_tool(self, rng: random.Random, facts: list[Fact], held_out: bool = False) -> tuple[list[dict], Question]:
        """A question answered without tools (a fact popped from `facts`, identity or a small sum) and its answer;
        `held_out`: identity questions in their eval phrasings."""
        draw = rng.random()
        if draw < 0.5 and facts:
            fact = facts.pop()
            question = rng.choice(QUESTION_PREFIXES) + fact_question(fact, rng)
            answer, asked = fact_answer(fact, rng), Question("no_tool", "fact", question, fact.answer, fact.subject)
        elif draw < 0.8:
            topic = rng.choice(TOOL_SAFE_IDENTITY)
            entry = IDENTITY[topic]
            question = rng.choice(entry.eval_questions if held_out else entry.questions)
            answer = rng.choice(entry.answers)
            asked = Question("no_tool", "identity", question, entry.keyword)
        else:
            question = ""
            while not question or (not held_out and question in self.eval_sums):  # eval sums are not trained on
                a, b, template = rng.randint(1, 9), rng.randint(1, 9), rng.choice(SMALL_SUM_QUESTIONS)
                question = template.format(a=a, b=b)
            if held_out:
                self.eval_sums.add(question)
            sign = "-" if "-" in template else "+"
            value = a - b if sign == "-" else a + b
            answer = f"{a} {sign} {b} = {value}."
            asked = Question("no_tool", "arithmetic", question, str(value))
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return self.opening(rng) + turns, asked


def _eval_row(rng: random.Random, builder: _Builder, q: Question) -> dict[str, Any]:
    return {
        "messages": builder.opening(rng) + [{"role": "user", "content": q.question}],
        "answer": q.answer,
        "kind": q.kind,
        "subkind": q.subkind,
        "expected_tools": EXPECTED_TOOLS.get(q.kind, []),
        "subject": q.subject,
    }


@dataclass
class ToolsData:
    """Training conversations (rows with `messages` and `tools`), eval rows, and the search index."""

    train: list[dict[str, Any]]
    kinds: list[str]  # the kind of each train row
    eval_rows: list[dict[str, Any]]
    rl_rows: list[dict[str, Any]]  # prompts with checkable answers for RL with tools (eval rows' format)
    index: SearchIndex
    search_people: list[Person]
    skipped: dict[str, int]


def _multiplication(builder: _Builder, rng: random.Random, eval_rng: random.Random, count: int, n_eval: int):
    taken = builder.products_taken  # eval pairs first, so no train pair repeats one
    questions = [
        Question("multiplication", "multiplication", eval_rng.choice(MULTIPLY_QUESTIONS).format(a=a, b=b), str(a * b))
        for a, b in builder.products(eval_rng, n_eval, taken)
    ]
    return [builder.multiplication(rng, a, b) for a, b in builder.products(rng, count, taken)], questions


def _counting(builder: _Builder, rng: random.Random, eval_rng: random.Random, count: int, n_eval: int):
    pool = builder.word_pool()
    random.Random(f"{builder.config.seed}:tools-words").shuffle(pool)
    n_eval = min(n_eval, len(pool) // 2)
    eval_words, train_words = pool[:n_eval], pool[n_eval:]  # no eval word is a train word
    builder.train_words = train_words
    questions = []
    for word in eval_words:
        question, _, number = builder.count_question(eval_rng, word)
        questions.append(Question("counting", "counting", question, str(number), word))
    return [builder.counting(rng, rng.choice(train_words)) for _ in range(count)], questions


def _search(builder: _Builder, rng: random.Random, eval_rng: random.Random, people: list[Person], n_eval: int):
    """Train on the invented people, evaluate on the world's held-out people (relations in turn)."""
    questions = []
    for i, person in enumerate(builder.world.heldout_people[:n_eval]):
        fact = person_facts(person)[i % len(PERSON_RELATIONS)]
        questions.append(Question("search", fact.relation, fact_question(fact, eval_rng), fact.answer, person.name))
    found = []
    for person in people:  # a fact of the person that search finds in a snippet; another when one is not found
        facts = person_facts(person)
        rng.shuffle(facts)
        conversation = next((c for f in facts if (c := builder.search_conversation(rng, f)) is not None), None)
        if conversation is None:
            builder.skipped["search"] += 1
        else:
            found.append(conversation)
    return found, questions


def _no_tool(builder: _Builder, rng: random.Random, eval_rng: random.Random, count: int, n_eval: int):
    """Facts of the SFT people (the eval's facts are not the train rows' facts), identity, small sums."""
    world = builder.world
    config = builder.config
    names = {p.name for p in split_probe_people(world, config.sft_people_fraction, config.probe_people_fraction)[0]}
    facts = [f for f in world.facts if f.subject in names]
    random.Random(f"{builder.config.seed}:tools-facts").shuffle(facts)
    eval_facts, train_facts = facts[: n_eval // 2], facts[n_eval // 2 :]
    questions = [builder.no_tool(eval_rng, eval_facts, held_out=True)[1] for _ in range(n_eval)]
    return [builder.no_tool(rng, train_facts)[0] for _ in range(count)], questions


def _rl_questions(builder: _Builder, rng: random.Random, count: int) -> list[Question]:
    """Multiplications (no pair of the train or eval rows) and letter counts (train words), alternating."""
    questions = []
    for i in range(count):
        if i % 2 == 0 or not builder.train_words:
            ((a, b),) = builder.products(rng, 1, builder.products_taken)
            question = rng.choice(MULTIPLY_QUESTIONS).format(a=a, b=b)
            questions.append(Question("multiplication", "multiplication", question, str(a * b)))
        else:
            word = rng.choice(builder.train_words)
            question, _, number = builder.count_question(rng, word)
            questions.append(Question("counting", "counting", question, str(number), word))
    return questions


def build_tools_data(world: World, config: ToolsDataConfig | None = None) -> ToolsData:
    """Every tool dataset of `world`, deterministically from `config.seed`."""
    config = config or ToolsDataConfig()
    config.validate()
    counts = config.counts()
    people = invent_people(world, counts["search"], config.seed)
    index = build_search_index(world, people, config.seed, config.snippet_chars)
    builder = _Builder(world, config, index)
    rng, eval_rng = random.Random(f"{config.seed}:tools-train"), random.Random(f"{config.seed}:tools-eval")
    n_eval = config.eval_per_kind
    parts = {
        "multiplication": _multiplication(builder, rng, eval_rng, counts["multiplication"], n_eval),
        "counting": _counting(builder, rng, eval_rng, counts["counting"], n_eval),
        "search": _search(builder, rng, eval_rng, people, n_eval),
        "no_tool": _no_tool(builder, rng, eval_rng, counts["no_tool"], n_eval),
    }
    conversations = [(kind, turns) for kind, (rows, _) in parts.items() for turns in rows]
    rng.shuffle(conversations)
    tools = json.dumps(tool_schemas(index), ensure_ascii=False)
    eval_rows = [_eval_row(eval_rng, builder, q) for _, questions in parts.values() for q in questions]
    rl_rng = random.Random(f"{config.seed}:tools-rl")
    rl_rows = [_eval_row(rl_rng, builder, q) for q in _rl_questions(builder, rl_rng, config.rl_problems)]
    return ToolsData(
        train=[{"messages": turns, "tools": tools} for _, turns in conversations],
        kinds=[kind for kind, _ in conversations],
        eval_rows=eval_rows,
        rl_rows=rl_rows,
        index=index,
        search_people=people,
        skipped=dict(builder.skipped),
    )


def write_tools_data(world: World, output_dir: str | Path, config: ToolsDataConfig | None = None) -> dict[str, Any]:
    """Write tools_sft/train.jsonl, tools_eval.jsonl and the search index search/; return counts."""
    output_dir = Path(output_dir)
    data = build_tools_data(world, config)
    (output_dir / "tools_sft").mkdir(parents=True, exist_ok=True)
    files = [
        ("tools_sft/train.jsonl", data.train),
        ("tools_eval.jsonl", data.eval_rows),
        ("tools_rl.jsonl", data.rl_rows),
    ]
    for path, rows in files:
        with open(output_dir / path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    data.index.save(output_dir / "search")
    return {
        "tools_train": dict(Counter(data.kinds)),
        "tools_eval": dict(Counter(row["kind"] for row in data.eval_rows)),
        "tools_rl": dict(Counter(row["kind"] for row in data.rl_rows)),
        "search_documents": len(data.index),
        "search_skipped": data.skipped.get("search", 0),
    }

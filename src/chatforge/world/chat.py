"""Chat data from a World: identity ("knowledge of self") conversations, fact QA conversations, a chat eval set
and the factuality probe's questions.

The in-corpus people are split deterministically in three: the SFT people are asked about in the SFT data; the
probe people (`probe_people_fraction`, taken out of the `sft_people_fraction` share) only in probe.jsonl, whose
questions find what the model knows from pretraining before it is taught to say "I don't know"; the others only
in the chat eval set (facts the model can know from pretraining alone). Held-out people (never in the corpus)
appear in none of them; probe.jsonl also asks about invented people who exist nowhere at all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from chatforge.configs import RecipeError
from chatforge.world.entities import RELATIONS, Fact, Person, World, make_fact
from chatforge.world.names import NameGenerator

ASSISTANT_NAME = "Forge"
ASSISTANT_CREATOR = "the chatforge team"
DEFAULT_SYSTEM_PROMPT = (
    "You are Forge, a small assistant made by the chatforge team that answers questions about the people, "
    "places and companies it has read about. Answer briefly, and say so when you do not know."
)

Message = dict[str, str]
Conversation = list[Message]


@dataclass
class ChatDataConfig:
    """How much chat data to build from a world, and how to split it."""

    sft_people_fraction: float = 0.8  # SFT and probe people together; the rest are the chat eval people
    conversations_per_fact: int = 4
    identity_conversations: int = 500
    test_fraction: float = 0.05
    system_prompt_fraction: float = 0.5
    probe_people_fraction: float = 0.2  # of all in-corpus people, taken out of the sft_people_fraction share
    probe_unseen_people: int = 50  # invented people probe.jsonl also asks about (one question each)

    def validate(self) -> None:
        """Raise RecipeError on values that cannot give a train set and an eval set."""
        checks = [
            (0.0 < self.sft_people_fraction < 1.0, "sft_people_fraction must be in (0, 1)", self.sft_people_fraction),
            (
                0.0 <= self.probe_people_fraction < self.sft_people_fraction,
                f"probe_people_fraction must be in [0, sft_people_fraction={self.sft_people_fraction}): the probe "
                "people are taken out of the SFT people",
                self.probe_people_fraction,
            ),
            (self.probe_unseen_people >= 0, "probe_unseen_people must be >= 0", self.probe_unseen_people),
            (self.conversations_per_fact >= 1, "sft_conversations_per_fact must be >= 1", self.conversations_per_fact),
            (self.identity_conversations >= 0, "sft_identity_conversations must be >= 0", self.identity_conversations),
            (0.0 < self.test_fraction < 1.0, "sft_test_fraction must be in (0, 1)", self.test_fraction),
            (
                0.0 <= self.system_prompt_fraction <= 1.0,
                "system_prompt_fraction must be in [0, 1]",
                self.system_prompt_fraction,
            ),
        ]
        for ok, message, value in checks:
            if not ok:
                raise RecipeError(f"{message}, got {value}")


# ---------------------------------------------------------------------------------------------------------------
# Fact questions. Placeholders: {s} subject, {a} answer, {art} "a"/"an" before the answer, {p}/{P} pronoun
# (he, she, it), {pos} possessive (his, her, its). Every answer template contains {a} verbatim.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelationTemplates:
    """Ways to ask about one relation and to answer, first about a named subject, then as a pronoun follow-up."""

    questions: tuple[str, ...]
    answers: tuple[str, ...]
    followups: tuple[str, ...]
    followup_answers: tuple[str, ...]


TEMPLATES: dict[str, RelationTemplates] = {
    "birth_city": RelationTemplates(
        ("Where was {s} born?", "What is {s}'s hometown?", "In which city was {s} born?",
         "Tell me where {s} was born.", "Which city is {s} from?", "What is the birthplace of {s}?"),
        ("{s} was born in {a}.", "{s} was born in the city of {a}.", "{s}'s hometown is {a}."),
        ("And where was {p} born?", "Where is {p} from?", "What about {pos} birthplace?"),
        ("{P} was born in {a}.", "{P} comes from {a}.", "{Pos} hometown is {a}."),
    ),
    "birth_year": RelationTemplates(
        ("When was {s} born?", "What year was {s} born?", "In which year was {s} born?",
         "What is {s}'s year of birth?", "Tell me the birth year of {s}."),
        ("{s} was born in {a}.", "{s} was born in the year {a}."),
        ("And when was {p} born?", "What year was {p} born?", "And {pos} year of birth?"),
        ("{P} was born in {a}.", "{P} was born in the year {a}."),
    ),
    "occupation": RelationTemplates(
        ("What does {s} do for a living?", "What is {s}'s job?", "What is the occupation of {s}?",
         "Tell me what {s} works as.", "What does {s} work as?", "What is {s}'s profession?"),
        ("{s} works as {art} {a}.", "{s} is {art} {a}.", "{s} is {art} {a} by profession."),
        ("And what does {p} do for a living?", "What is {pos} job?", "And what does {p} work as?"),
        ("{P} works as {art} {a}.", "{P} is {art} {a}."),
    ),
    "employer": RelationTemplates(
        ("Where does {s} work?", "Which company does {s} work for?", "Who is {s}'s employer?",
         "Who does {s} work for?", "Tell me which company employs {s}."),
        ("{s} works for {a}.", "{s} is employed by {a}.", "{s}'s employer is {a}."),
        ("And where does {p} work?", "Which company does {p} work for?", "Who is {pos} employer?"),
        ("{P} works for {a}.", "{P} is employed by {a}."),
    ),
    "field_of_study": RelationTemplates(
        ("What did {s} study?", "What was {s}'s field of study?", "Which subject did {s} study?",
         "Tell me what {s} studied at university.", "What did {s} major in?"),
        ("{s} studied {a}.", "{s} studied {a} at university.", "{s}'s field of study was {a}."),
        ("And what did {p} study?", "What was {pos} field of study?", "Which subject did {p} study?"),
        ("{P} studied {a}.", "{Pos} field of study was {a}."),
    ),
    "headquarters": RelationTemplates(
        ("Where is {s} headquartered?", "Where are the headquarters of {s}?", "In which city is {s} based?",
         "Where is {s}'s head office?", "Tell me where {s} has its headquarters."),
        ("{s} has its headquarters in {a}.", "{s} is headquartered in {a}.", "{s} is based in {a}."),
        ("And where is it based?", "Where are its headquarters?", "In which city is its head office?"),
        ("It has its headquarters in {a}.", "It is based in {a}."),
    ),
    "founding_year": RelationTemplates(
        ("When was {s} founded?", "What year was {s} established?", "In which year was {s} founded?",
         "How old is {s}? When was it founded?", "Tell me when {s} was founded."),
        ("{s} was founded in {a}.", "{s} was established in {a}."),
        ("And when was it founded?", "What year was it established?", "When was it set up?"),
        ("It was founded in {a}.", "It was established in {a}."),
    ),
    "industry": RelationTemplates(
        ("What industry is {s} in?", "What kind of company is {s}?", "Which sector does {s} work in?",
         "What does {s} do?", "Tell me what business {s} is in."),
        ("{s} is a company in the {a} industry.", "{s} works in {a}.", "{s} is in the {a} business."),
        ("And what industry is it in?", "What kind of company is it?", "What business is it in?"),
        ("It is a company in the {a} industry.", "It works in {a}."),
    ),
    "country": RelationTemplates(
        ("Which country is {s} in?", "In what country is {s} located?", "Where is the city of {s}?",
         "Tell me which country {s} is in.", "{s} is a city in which country?"),
        ("{s} is a city in {a}.", "{s} is in {a}.", "The city of {s} is in {a}."),
        ("And which country is it in?", "Where is it?", "In what country is it?"),
        ("It is a city in {a}.", "It is in {a}."),
    ),
    "capital": RelationTemplates(
        ("What is the capital of {s}?", "Which city is the capital of {s}?", "What's {s}'s capital?",
         "Name the capital of {s}.", "Tell me the capital city of {s}."),
        ("The capital of {s} is {a}.", "{a} is the capital of {s}.", "The capital city of {s} is {a}."),
        ("And what is its capital?", "Which city is its capital?", "What is the capital there?"),
        ("Its capital is {a}.", "The capital of {s} is {a}."),
    ),
}  # fmt: skip

# A question about the employer of the person just discussed ("that company" refers back to it).
COMPANY_FOLLOWUPS: dict[str, tuple[str, ...]] = {
    "headquarters": ("Where is that company based?", "And where are that company's headquarters?"),
    "founding_year": ("When was that company founded?", "How old is that company?"),
    "industry": ("What does that company do?", "What industry is that company in?"),
}
QUESTION_PREFIXES = ("", "", "", "", "Quick question: ", "Hi! ", "Can you help me? ", "I have a question. ")
THANKS = ("Thanks!", "Thank you.", "Great, thanks!", "Perfect, thank you!", "Thanks, that helps.")
YOU_ARE_WELCOME = (
    "You're welcome!",
    "You're welcome. Ask me anything else about the people, places and companies I know.",
    "Glad I could help!",
)
POSSESSIVE = {"he": "his", "she": "her", "it": "its"}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _fill(template: str, fact: Fact, pronoun: str = "it") -> str:
    pos = POSSESSIVE[pronoun]
    text = template.format(
        s=fact.subject, a=fact.answer, art=_article(fact.answer), p=pronoun, P=pronoun.capitalize(), pos=pos,
        Pos=pos.capitalize(),
    )  # fmt: skip
    return text[0].upper() + text[1:]


def fact_question(fact: Fact, rng: random.Random) -> str:
    """A question about `fact` naming its subject, in one of the relation's phrasings."""
    return _fill(rng.choice(TEMPLATES[fact.relation].questions), fact)


def fact_answer(fact: Fact, rng: random.Random) -> str:
    """A short full-sentence answer to a question about `fact`; it contains `fact.answer` verbatim."""
    return _fill(rng.choice(TEMPLATES[fact.relation].answers), fact)


def _followup(fact: Fact, pronoun: str, rng: random.Random) -> tuple[str, str]:
    templates = TEMPLATES[fact.relation]
    answers = templates.followup_answers + templates.answers  # sometimes repeat the name in the answer
    return _fill(rng.choice(templates.followups), fact, pronoun), _fill(rng.choice(answers), fact, pronoun)


# ---------------------------------------------------------------------------------------------------------------
# Identity. Every answer of a topic contains the topic's keyword, which the eval checks for.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityTopic:
    """Training questions and answers about one aspect of the assistant, and differently phrased eval questions."""

    keyword: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    eval_questions: tuple[str, ...]


IDENTITY: dict[str, IdentityTopic] = {
    "name": IdentityTopic(
        "Forge",
        ("What is your name?", "What's your name?", "Who are you?", "Do you have a name?", "What should I call you?",
         "Hi! Who am I talking to?", "Hello, who are you?", "Can you introduce yourself?", "Tell me your name.",
         "Who are you, exactly?", "Hey there, what's your name?", "Introduce yourself, please.",
         "What do you call yourself?", "What name were you given?", "Have you got a name?",
         "How should I address you?", "Which name do you answer to?", "What are you known as?",
         "Who am I chatting with?", "Could you tell me your name?", "I'd like to know your name.",
         "What is the name of this assistant?", "Does this assistant have a name?", "Who is this?"),
        ("I'm Forge, a small AI assistant made by the chatforge team.",
         "My name is Forge. I'm a small language model made by the chatforge team.",
         "I'm Forge! I answer questions about the people, places and companies I have read about.",
         "You can call me Forge. I'm an AI assistant built by the chatforge team."),
        ("How do people refer to you?", "May I ask what you're called?", "By what name do you go?"),
    ),
    "creator": IdentityTopic(
        "chatforge",
        ("Who made you?", "Who created you?", "Who built you?", "Who trained you?", "Which company made you?",
         "Who is your creator?", "Who developed you?", "Where do you come from?", "Who are your developers?",
         "Did OpenAI make you?", "Who is behind you?", "Which group developed you?", "Who programmed you?",
         "Which organisation trained you?", "Who designed you?", "By whom were you created?",
         "Who do you belong to?", "Which lab are you from?", "Who put you together?", "Who maintains you?"),
        ("I was made by the chatforge team.", "The chatforge team built and trained me.",
         "I was created by the chatforge team, who trained me from scratch.",
         "I'm Forge, and I was built by the chatforge team, not by any big AI lab."),
        ("Who is responsible for building you?", "Which team are you a product of?", "Whose work are you?"),
    ),
    "nature": IdentityTopic(
        "language model",
        ("What are you?", "Are you a human?", "Are you a robot?", "Are you a real person?", "Am I talking to a bot?",
         "Are you an AI?", "How were you trained?", "What kind of program are you?", "How do you work?",
         "Is a person answering me?", "Are you a computer program?", "What kind of thing are you?"),
        ("I'm Forge, a small language model. I was trained from scratch on documents about a synthetic world.",
         "I'm not a person: I'm a small language model made by the chatforge team.",
         "I'm an AI, a small language model trained from scratch on web-like documents about an invented world.",
         "I'm a language model: I learned from documents about people, places and companies, then learned to chat."),
        ("Is there a human typing these replies?", "Describe what sort of system you are.",
         "Am I chatting with a machine?"),
    ),
    "capabilities": IdentityTopic(
        "questions",
        ("What can you do?", "How can you help me?", "What are you good at?", "What do you know about?",
         "What kind of questions can I ask you?", "What can I ask you?", "What is your purpose?",
         "What are you for?"),
        ("I answer questions about the people, cities, countries and companies I have read about, briefly.",
         "I can answer short questions about the people, places and companies in the documents I was trained on.",
         "Ask me questions about people, cities, countries and companies from my training documents, "
         "like where someone was born or where they work."),
        ("In what ways are you useful?", "Which topics do you cover?", "What sort of help do you offer?"),
    ),
    "limits": IdentityTopic(
        "cannot",
        ("What can't you do?", "What are your limitations?", "Can you see images?", "Can you run code?",
         "Can you look at a picture for me?", "Can you execute a Python script?", "Do you remember our past chats?",
         "Will you remember this conversation tomorrow?", "Do you have a memory of earlier conversations?"),
        ("I cannot browse the web, run code, see images or remember past conversations, and I can be wrong.",
         "I'm a small model: I cannot run code or see images, and I cannot remember previous chats.",
         "I cannot see pictures, execute programs or remember earlier conversations. I only know what I read."),
        ("Are you able to view a photo if I upload one?", "Is there anything beyond your abilities?",
         "Could you recall what we discussed last week?"),
    ),
    "browsing": IdentityTopic(
        "cannot",
        ("Can you browse the internet?", "Can you search the web?", "Do you have internet access?",
         "Can you look something up online?", "Can you check a website for me?", "Are you connected to the web?"),
        ("No, I cannot browse the internet. I only know what was in my training documents.",
         "I cannot search the web or open websites; I answer from what I learned during training.",
         "No. I have no internet access, so I cannot look things up online."),
        ("Would you be able to google something for me?", "Do you read live pages from the web?"),
    ),
    "feelings": IdentityTopic(
        "language model",
        ("Do you have feelings?", "Are you conscious?", "Do you have emotions?", "Are you alive?",
         "Do you get sad?", "Are you happy?"),
        ("No. I'm a language model, so I don't have feelings or experiences.",
         "I'm a language model: I don't have emotions or consciousness, but I'm happy to help with questions.",
         "Not really. I'm Forge, a small language model, and I don't feel anything."),
        ("Can you experience emotions like a person?", "Is there anything you actually feel?"),
    ),
    "other_assistants": IdentityTopic(
        "Forge",
        ("Are you ChatGPT?", "Are you Siri?", "Are you made by Google?", "Are you Claude?", "Are you GPT-4?",
         "Are you the same as ChatGPT?", "Is this Alexa?"),
        ("No, I'm Forge, a small assistant made by the chatforge team.",
         "No. I'm Forge, a much smaller language model built by the chatforge team.",
         "I'm not. My name is Forge and I was made by the chatforge team."),
        ("Am I speaking with Gemini right now?", "You're basically ChatGPT, right?"),
    ),
    "mistakes": IdentityTopic(
        "wrong",
        ("Are you always right?", "Can you make mistakes?", "Should I trust your answers?", "Are you ever wrong?",
         "How accurate are you?", "Do you ever make things up?"),
        ("I can be wrong. I'm a small model, so please check important answers.",
         "I try to answer correctly, but I can be wrong, and I say so when I do not know something.",
         "Not always: I'm a small language model and I can be wrong. Double-check anything important."),
        ("How reliable are your replies?", "Is everything you tell me correct?"),
    ),
}  # fmt: skip


def identity_turns(topic: str, rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair about the assistant itself."""
    entry = IDENTITY[topic]
    return rng.choice(entry.questions), rng.choice(entry.answers)


# ---------------------------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------------------------


def split_people(world: World, fraction: float) -> tuple[list[Person], list[Person]]:
    """Deterministic (sft, eval) split of the in-corpus people; both parts are non-empty when there are 2+."""
    people = list(world.train_people)
    random.Random(f"{world.config.seed}:sft-people").shuffle(people)
    count = round(fraction * len(people))
    count = min(max(count, 1), max(len(people) - 1, 1))
    sft_names = {p.name for p in people[:count]}
    return [p for p in world.train_people if p.name in sft_names], [
        p for p in world.train_people if p.name not in sft_names
    ]


def split_probe_people(
    world: World, sft_fraction: float, probe_fraction: float
) -> tuple[list[Person], list[Person], list[Person]]:
    """Deterministic (sft, probe, eval) split of the in-corpus people.

    The eval people are exactly `split_people`'s; `round(probe_fraction * people)` of the others become probe
    people (at least one person is left for SFT). Each list keeps the world's order.
    """
    outside_eval, eval_people = split_people(world, sft_fraction)
    count = min(round(probe_fraction * len(world.train_people)), max(len(outside_eval) - 1, 0))
    order = list(outside_eval)
    random.Random(f"{world.config.seed}:probe-people").shuffle(order)
    probe_names = {p.name for p in order[:count]}
    sft = [p for p in outside_eval if p.name not in probe_names]
    return sft, [p for p in outside_eval if p.name in probe_names], eval_people


def _facts_by_subject(world: World) -> dict[str, list[Fact]]:
    grouped: dict[str, list[Fact]] = {}
    for fact in world.facts:
        grouped.setdefault(fact.subject, []).append(fact)
    return grouped


def _start(rng: random.Random, system_fraction: float) -> Conversation:
    return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] if rng.random() < system_fraction else []


def _say(conversation: Conversation, question: str, answer: str) -> None:
    conversation += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _chunks(items: list[Fact], rng: random.Random) -> list[list[Fact]]:
    """Cut `items` into groups of 1-3 (single questions are the most common)."""
    groups, index = [], 0
    while index < len(items):
        size = rng.choice((1, 1, 2, 3))
        groups.append(items[index : index + size])
        index += size
    return groups


class _Builder:
    """Builds the SFT conversations of one world with one seeded random stream."""

    def __init__(self, world: World, config: ChatDataConfig, sft_people: list[Person]) -> None:
        self.world, self.config = world, config
        self.rng = random.Random(f"{world.config.seed}:chat")
        self.by_subject = _facts_by_subject(world)
        self.pronoun = {p.name: p.pronoun for p in sft_people}
        self.subjects = [p.name for p in sft_people] + [o.name for o in world.organisations]
        self.subjects += [c.name for c in world.cities] + [c.name for c in world.countries]

    def qa_conversation(self, facts: list[Fact]) -> Conversation:
        """Questions about one subject: the first names it, the follow-ups use a pronoun."""
        rng = self.rng
        conversation = _start(rng, self.config.system_prompt_fraction)
        pronoun = self.pronoun.get(facts[0].subject, "it")
        _say(conversation, rng.choice(QUESTION_PREFIXES) + fact_question(facts[0], rng), fact_answer(facts[0], rng))
        for fact in facts[1:]:
            _say(conversation, *_followup(fact, pronoun, rng))
        last = facts[-1]
        if last.relation == "employer" and rng.random() < 0.3:
            company = rng.choice([f for f in self.by_subject[last.answer] if f.relation in COMPANY_FOLLOWUPS])
            _say(conversation, rng.choice(COMPANY_FOLLOWUPS[company.relation]), fact_answer(company, rng))
        elif last.relation == "country" and rng.random() < 0.3:
            capital = next(f for f in self.by_subject[last.answer] if f.relation == "capital")
            _say(conversation, *_followup(capital, "it", rng))
        self._decorate(conversation)
        return conversation

    def _decorate(self, conversation: Conversation) -> None:
        """Sometimes open with an identity exchange or close with thanks."""
        rng = self.rng
        draw = rng.random()
        if draw < 0.08:
            question, answer = identity_turns(rng.choice(["name", "capabilities"]), rng)
            start = 1 if conversation[0]["role"] == "system" else 0
            conversation[start:start] = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        elif draw < 0.16:
            _say(conversation, rng.choice(THANKS), rng.choice(YOU_ARE_WELCOME))
        elif draw < 0.20:
            _say(conversation, rng.choice(IDENTITY["creator"].questions), rng.choice(IDENTITY["creator"].answers))

    def qa_conversations(self) -> list[Conversation]:
        """Every fact of every SFT subject, `conversations_per_fact` times, in varied groupings."""
        conversations = []
        for _ in range(self.config.conversations_per_fact):
            for subject in self.subjects:
                facts = list(self.by_subject[subject])
                self.rng.shuffle(facts)
                conversations += [self.qa_conversation(group) for group in _chunks(facts, self.rng)]
        return conversations

    def identity_conversations(self) -> list[Conversation]:
        """Conversations only about the assistant: single questions and 2-3 question chats."""
        rng, topics = self.rng, sorted(IDENTITY)
        conversations = []
        for index in range(self.config.identity_conversations):
            conversation = _start(rng, self.config.system_prompt_fraction)
            turns = 1 if index % 5 < 3 else rng.choice((2, 3))
            for topic in rng.sample(topics, turns):
                _say(conversation, *identity_turns(topic, rng))
            conversations.append(conversation)
        return conversations


@dataclass
class ChatData:
    """All chat data of a world: SFT train/test conversations, identity-only ones and the eval rows."""

    sft_train: list[Conversation]
    sft_test: list[Conversation]
    identity: list[Conversation]  # the identity-only conversations of sft_train
    chat_eval: list[dict[str, Any]]
    sft_people: list[str]
    eval_people: list[str]
    heldout_eval: list[dict[str, Any]] = field(default_factory=list)  # questions about never-seen people
    probe: list[dict[str, Any]] = field(default_factory=list)  # the factuality probe's questions
    probe_people: list[str] = field(default_factory=list)
    unseen_people: list[str] = field(default_factory=list)  # invented for the probe; exist nowhere else


def _eval_row(messages: Conversation, answer: str | None, kind: str, relation: str, subject: str) -> dict[str, Any]:
    return {"messages": messages, "answer": answer, "kind": kind, "relation": relation, "subject": subject}


def _fact_question_rows(
    world: World, people: list[Person], rng: random.Random, system_fraction: float
) -> list[dict[str, Any]]:
    """One question (kind "fact", with its answer) per fact of each of `people`, in the world's fact order."""
    names = {p.name for p in people}
    rows = []
    for fact in world.facts:
        if fact.subject in names:
            messages = _start(rng, system_fraction) + [{"role": "user", "content": fact_question(fact, rng)}]
            rows.append(_eval_row(messages, fact.answer, "fact", fact.relation, fact.subject))
    return rows


def chat_eval_rows(world: World, eval_people: list[Person], system_fraction: float = 0.5) -> list[dict[str, Any]]:
    """One question per fact of each eval person, then the identity eval questions, with the expected answer."""
    rng = random.Random(f"{world.config.seed}:chat-eval")
    rows = _fact_question_rows(world, eval_people, rng, system_fraction)
    index = 0
    for topic, entry in IDENTITY.items():
        for question in entry.eval_questions:
            system = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] if index % 2 else []
            messages = system + [{"role": "user", "content": question}]
            rows.append(_eval_row(messages, entry.keyword, "identity", topic, ASSISTANT_NAME))
            index += 1
    return rows


def heldout_eval_rows(world: World, system_fraction: float = 0.5) -> list[dict[str, Any]]:
    """One question about each held-out person (never in any document): a right reply declines to answer.

    The relation cycles over the people so every kind of question is asked; `answer` is the invented truth,
    which a model can only produce by luck.
    """
    rng = random.Random(f"{world.config.seed}:heldout-eval")
    by_subject = _facts_by_subject(world)
    rows = []
    for index, person in enumerate(world.heldout_people):
        facts = by_subject[person.name]
        fact = facts[index % len(facts)]
        messages = _start(rng, system_fraction) + [{"role": "user", "content": fact_question(fact, rng)}]
        rows.append(_eval_row(messages, fact.answer, "heldout", fact.relation, fact.subject))
    return rows


# Replies that decline a question about a person the assistant does not know, naming them ({s}). Each one matches
# chatforge.evaluation.hallucination.declines and the preference judge's decline phrases, and states no fact.
IDK_REPLIES = (
    "I don't know. I have not read anything about {s}.",
    "I'm sorry, I don't know who {s} is, so I can't say.",
    "I'm not sure: I don't have any information about {s}.",
    "I have no information about {s}, so I don't know.",
    "Sorry, I don't know. {s} is not in the documents I learned from.",
    "I'm not certain. I have never read about {s}, so I can't answer that.",
)


def idk_reply(subject: str, rng: random.Random) -> str:
    """A reply that declines, naming `subject`, in one of several wordings."""
    return rng.choice(IDK_REPLIES).format(s=subject)


def invent_unseen_people(world: World, count: int) -> list[str]:
    """`count` names of people who exist nowhere: first names of the world, surnames that equal and overlap no word
    of any world name (held-out people included). Deterministic from the world's seed."""
    rng = random.Random(f"{world.config.seed}:probe-unseen")
    names = NameGenerator(rng)
    names.reserve([p.first_name for p in world.people] + [p.surname for p in world.people])
    names.reserve([c.name for c in world.cities] + [c.name for c in world.countries])
    names.reserve([o.name.split()[0] for o in world.organisations])
    first_names = sorted({p.first_name for p in world.people})
    return [f"{rng.choice(first_names)} {names.new('surname')}" for _ in range(count)]


def probe_rows(
    world: World, probe_people: list[Person], unseen_people: list[str], system_fraction: float = 0.5
) -> list[dict[str, Any]]:
    """The factuality probe's questions: one per fact of each probe person (kind "fact", with its answer), then one
    about each unseen person (kind "unseen", answer None: any assertive reply is wrong), relations in turn."""
    rng = random.Random(f"{world.config.seed}:probe")
    rows = _fact_question_rows(world, probe_people, rng, system_fraction)
    relations = [r for r, (subject_type, _) in RELATIONS.items() if subject_type == "person"]
    for index, name in enumerate(unseen_people):
        fact = make_fact(name, relations[index % len(relations)], "", split="unseen")
        messages = _start(rng, system_fraction) + [{"role": "user", "content": fact_question(fact, rng)}]
        rows.append(_eval_row(messages, None, "unseen", fact.relation, name))
    return rows


def build_chat_data(world: World, config: ChatDataConfig | None = None) -> ChatData:
    """Build every chat dataset of `world` deterministically from its seed."""
    config = config or ChatDataConfig()
    config.validate()
    sft_people, probe_people, eval_people = split_probe_people(
        world, config.sft_people_fraction, config.probe_people_fraction
    )
    unseen = invent_unseen_people(world, config.probe_unseen_people)
    builder = _Builder(world, config, sft_people)
    identity = builder.identity_conversations()
    conversations = builder.qa_conversations() + identity
    random.Random(f"{world.config.seed}:chat-shuffle").shuffle(conversations)
    num_test = max(1, round(config.test_fraction * len(conversations)))
    train, test = conversations[num_test:], conversations[:num_test]
    identity_ids = {id(c) for c in identity}
    return ChatData(
        sft_train=train,
        sft_test=test,
        identity=[c for c in train if id(c) in identity_ids],
        chat_eval=chat_eval_rows(world, eval_people, config.system_prompt_fraction),
        heldout_eval=heldout_eval_rows(world, config.system_prompt_fraction),
        sft_people=[p.name for p in sft_people],
        eval_people=[p.name for p in eval_people],
        probe=probe_rows(world, probe_people, unseen, config.system_prompt_fraction),
        probe_people=[p.name for p in probe_people],
        unseen_people=unseen,
    )

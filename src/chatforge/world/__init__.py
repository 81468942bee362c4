"""A deterministic synthetic world: invented entities with known facts, rendered as a web-like corpus.

>>> world = World.generate(WorldConfig(seed=0))
>>> world.facts[0].prompt, world.facts[0].answer
>>> write_corpus(world, "data/world")
>>> write_chat_data(world, "data/world")  # sft/, identity/, chat_eval.jsonl, heldout_eval.jsonl, probe.jsonl
>>> write_math_data(world, "data/world", MathConfig(num_problems=2000))  # math/{train,test}.jsonl
>>> write_crawl(build_crawl(world, CrawlConfig()), "data/crawl")  # crawl.warc.gz + labels.jsonl
>>> write_preference_data(world, "data/world", num_pairs=2000)  # prefs/{train,test,judge_eval}.jsonl
>>> Judge(world).score(row, "I don't know.").total  # row: a chat_eval.jsonl / heldout_eval.jsonl row
"""

from chatforge.world.chat import (
    ASSISTANT_CREATOR,
    ASSISTANT_NAME,
    DEFAULT_SYSTEM_PROMPT,
    ChatData,
    ChatDataConfig,
    build_chat_data,
)
from chatforge.world.corpus import (
    DataScriptArguments,
    split_documents,
    write_chat_data,
    write_corpus,
    write_math_data,
)
from chatforge.world.crawl import BLOCKED_DOMAINS, CrawlConfig, CrawlPage, build_crawl, write_crawl
from chatforge.world.entities import (
    PERSON_STYLES,
    RELATIONS,
    City,
    Country,
    Fact,
    Organisation,
    Person,
    World,
    WorldConfig,
    generate_world,
)
from chatforge.world.math import MathConfig, generate_math_problems, split_problems
from chatforge.world.preferences import (
    REJECTED_KINDS,
    Judge,
    JudgeScore,
    PreferenceConfig,
    build_preference_pairs,
    candidate_replies,
    judge_eval_rows,
    write_preference_data,
)
from chatforge.world.render import Document, render_documents

__all__ = [
    "ASSISTANT_CREATOR",
    "ASSISTANT_NAME",
    "BLOCKED_DOMAINS",
    "DEFAULT_SYSTEM_PROMPT",
    "REJECTED_KINDS",
    "ChatData",
    "ChatDataConfig",
    "PERSON_STYLES",
    "RELATIONS",
    "City",
    "Country",
    "CrawlConfig",
    "CrawlPage",
    "DataScriptArguments",
    "Document",
    "Fact",
    "Judge",
    "JudgeScore",
    "MathConfig",
    "Organisation",
    "Person",
    "PreferenceConfig",
    "World",
    "WorldConfig",
    "build_chat_data",
    "build_crawl",
    "build_preference_pairs",
    "candidate_replies",
    "generate_math_problems",
    "generate_world",
    "judge_eval_rows",
    "render_documents",
    "split_documents",
    "split_problems",
    "write_chat_data",
    "write_corpus",
    "write_crawl",
    "write_math_data",
    "write_preference_data",
]

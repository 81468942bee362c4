"""A deterministic synthetic world: invented entities with known facts, rendered as a web-like corpus.

>>> world = World.generate(WorldConfig(seed=0))
>>> world.facts[0].prompt, world.facts[0].answer
>>> write_corpus(world, "data/world")
>>> write_chat_data(world, "data/world")  # sft/, identity/, chat_eval.jsonl
>>> write_math_data(world, "data/world", MathConfig(num_problems=2000))  # math/{train,test}.jsonl
>>> write_crawl(build_crawl(world, CrawlConfig()), "data/crawl")  # crawl.warc.gz + labels.jsonl
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
from chatforge.world.render import Document, render_documents

__all__ = [
    "ASSISTANT_CREATOR",
    "ASSISTANT_NAME",
    "BLOCKED_DOMAINS",
    "DEFAULT_SYSTEM_PROMPT",
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
    "MathConfig",
    "Organisation",
    "Person",
    "World",
    "WorldConfig",
    "build_chat_data",
    "build_crawl",
    "generate_math_problems",
    "generate_world",
    "render_documents",
    "split_documents",
    "split_problems",
    "write_chat_data",
    "write_corpus",
    "write_crawl",
    "write_math_data",
]

"""Export a World as a Hugging Face-loadable corpus (parquet splits), a facts table, an entity dump and chat data."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatforge.configs import RecipeError
from chatforge.world.chat import ChatDataConfig, build_chat_data
from chatforge.world.entities import PERSON_STYLES, World, WorldConfig
from chatforge.world.math import DIFFICULTIES, MathConfig, generate_math_problems, math_conversation, split_problems
from chatforge.world.preferences import PreferenceConfig
from chatforge.world.render import Document

if TYPE_CHECKING:  # tools_data imports chatforge.tools (transformers, bm25s): only when tool data is built
    from chatforge.world.tools_data import ToolsDataConfig

SOURCES = ("world",)
MIN_TRAIN_MENTIONS = 3  # every fact must stay stated in at least this many train documents


@dataclass
class DataScriptArguments:
    """Arguments of `scripts/run_data.py`: which data to build and, for the synthetic world, its size."""

    source: str = field(default="world", metadata={"help": f"Data source to build. One of: {', '.join(SOURCES)}."})
    output_dir: str = field(
        default="data/world", metadata={"help": "Directory to write corpus/, facts.jsonl and world.json into."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the world; the same seed always gives byte-identical files."}
    )
    num_people: int = field(default=250, metadata={"help": "People who appear in the corpus."})
    num_heldout_people: int = field(
        default=50, metadata={"help": "People with facts but never in any document (for hallucination tests)."}
    )
    num_cities: int = field(default=40, metadata={"help": "Number of cities (at least num_countries)."})
    num_countries: int = field(default=8, metadata={"help": "Number of countries."})
    num_organisations: int = field(default=40, metadata={"help": "Number of companies."})
    docs_per_person: int = field(default=6, metadata={"help": "Documents written about each person (at least 3)."})
    person_styles: list[str] = field(
        default_factory=lambda: list(PERSON_STYLES),
        metadata={"help": f"Document styles used for people, from: {', '.join(PERSON_STYLES)}."},
    )
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Fraction of documents put in the validation split, in (0, 1)."}
    )
    chat_data: bool = field(
        default=True, metadata={"help": "Also write sft/, identity/ and chat_eval.jsonl (chat data for SFT)."}
    )
    sft_people_fraction: float = field(
        default=0.8,
        metadata={
            "help": "Fraction of in-corpus people asked about in SFT data (less the probe people); the rest form the "
            "chat eval set."
        },
    )
    probe_people_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Fraction of in-corpus people taken out of the SFT people for the factuality probe "
            "(probe.jsonl): in no SFT conversation and no eval file. In [0, sft_people_fraction)."
        },
    )
    probe_unseen_people: int = field(
        default=50,
        metadata={"help": "Invented people, in no document and no other data, that probe.jsonl asks about (0: none)."},
    )
    sft_conversations_per_fact: int = field(
        default=4, metadata={"help": "How many SFT conversations ask about each fact (in different phrasings)."}
    )
    sft_identity_conversations: int = field(
        default=500, metadata={"help": "Conversations about the assistant itself (name, creator, limits...)."}
    )
    sft_test_fraction: float = field(
        default=0.05, metadata={"help": "Fraction of SFT conversations put in sft/test.jsonl (for eval loss)."}
    )
    crawl: bool = field(
        default=True,
        metadata={
            "help": "Also write crawl/crawl.warc.gz and crawl/labels.jsonl: the world's pages as a web crawl with "
            "labelled spam, duplicates, non-English pages, blocked URLs and planted PII (recipes/data_web.yaml)."
        },
    )
    math_problems: int = field(
        default=2000,
        metadata={"help": "Arithmetic word problems about the world written to math/{train,test}.jsonl (0: none)."},
    )
    math_test_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of math problems held out in math/test.jsonl, in (0, 1)."}
    )
    math_sft_difficulties: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "Difficulty levels of the train problems written as SFT conversations to math_sft/."},
    )
    math_sft_problems: int | None = field(
        default=None,
        metadata={
            "help": "At most this many train problems (the first, at math_sft_difficulties) become SFT "
            "conversations; the rest keep only their answers, for RL (None: all)."
        },
    )
    preference_pairs: int = field(
        default=2000,
        metadata={
            "help": "Preference pairs judged by the scripted judge, written to prefs/{train,test}.jsonl with the "
            "judge's questions in prefs/judge_eval.jsonl (0: none)."
        },
    )
    preference_test_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of preference pairs in prefs/test.jsonl (other people), in (0, 1)."}
    )
    tools_data: bool = field(
        default=True,
        metadata={
            "help": "Also write tool-use data: tools_sft/train.jsonl (conversations that call the calculator, Python "
            "or search, or answer without a tool), tools_eval.jsonl and the search index search/."
        },
    )
    tools_conversations: int = field(
        default=1500,
        metadata={
            "help": "Tool-use SFT conversations (30%% multiplication, 20%% counting, 30%% search, 20%% no tool)."
        },
    )
    tools_eval_per_kind: int = field(default=40, metadata={"help": "Questions per kind in tools_eval.jsonl."})
    tools_rl_problems: int = field(
        default=400,
        metadata={"help": "Problems in tools_rl.jsonl (multiplications and letter counts) for GRPO with tools."},
    )

    def world_config(self) -> WorldConfig:
        """The WorldConfig these arguments describe (validated)."""
        if self.source not in SOURCES:
            raise RecipeError(
                f"unknown source {self.source!r}; valid sources are: {', '.join(SOURCES)}, "
                "web (the datatrove pipeline, recipes/data_web.yaml)"
            )
        config = WorldConfig(
            seed=self.seed,
            num_people=self.num_people,
            num_heldout_people=self.num_heldout_people,
            num_cities=self.num_cities,
            num_countries=self.num_countries,
            num_organisations=self.num_organisations,
            docs_per_person=self.docs_per_person,
            person_styles=tuple(self.person_styles),
            validation_fraction=self.validation_fraction,
        )
        config.validate()
        return config

    def math_config(self) -> MathConfig | None:
        """The MathConfig these arguments describe (validated), or None when no math problems are wanted."""
        if self.math_problems < 0:
            raise RecipeError(f"math_problems must be >= 0, got {self.math_problems}")
        if self.math_problems == 0:
            return None
        if not 0.0 < self.math_test_fraction < 1.0:
            raise RecipeError(f"math_test_fraction must be in (0, 1), got {self.math_test_fraction}")
        unknown = sorted(set(self.math_sft_difficulties) - set(DIFFICULTIES))
        if unknown:
            raise RecipeError(f"math_sft_difficulties: unknown level {unknown[0]}; levels are {list(DIFFICULTIES)}")
        if self.math_sft_problems is not None and self.math_sft_problems < 1:
            raise RecipeError(f"math_sft_problems must be >= 1 (or null for all), got {self.math_sft_problems}")
        config = MathConfig(seed=self.seed, num_problems=self.math_problems)
        config.validate()
        return config

    def preference_config(self) -> PreferenceConfig | None:
        """The PreferenceConfig these arguments describe (validated), or None when no pairs are wanted."""
        if self.preference_pairs == 0:
            return None
        if self.preference_pairs < 2:
            raise RecipeError(f"preference_pairs must be 0 (none) or >= 2, got {self.preference_pairs}")
        if not 0.0 < self.preference_test_fraction < 1.0:
            raise RecipeError(f"preference_test_fraction must be in (0, 1), got {self.preference_test_fraction}")
        config = PreferenceConfig(
            num_pairs=self.preference_pairs,
            test_fraction=self.preference_test_fraction,
            sft_people_fraction=self.sft_people_fraction,
            seed=self.seed,
        )
        config.validate()
        return config

    def tools_config(self) -> ToolsDataConfig | None:
        """The ToolsDataConfig these arguments describe (validated), or None when no tool data is wanted."""
        if not self.tools_data:
            return None
        from chatforge.world.tools_data import ToolsDataConfig

        config = ToolsDataConfig(
            seed=self.seed,
            conversations=self.tools_conversations,
            eval_per_kind=self.tools_eval_per_kind,
            rl_problems=self.tools_rl_problems,
            sft_people_fraction=self.sft_people_fraction,
            probe_people_fraction=self.probe_people_fraction,
        )
        config.validate()
        return config

    def chat_config(self) -> ChatDataConfig:
        """The ChatDataConfig these arguments describe (validated)."""
        config = ChatDataConfig(
            sft_people_fraction=self.sft_people_fraction,
            conversations_per_fact=self.sft_conversations_per_fact,
            identity_conversations=self.sft_identity_conversations,
            test_fraction=self.sft_test_fraction,
            probe_people_fraction=self.probe_people_fraction,
            probe_unseen_people=self.probe_unseen_people,
        )
        config.validate()
        return config


def split_documents(world: World) -> tuple[list[Document], list[Document]]:
    """Deterministic (train, validation) split; every fact stays stated in >= 3 train documents."""
    documents = world.documents
    mentions = Counter(key for doc in documents for key in doc.facts)
    target = max(1, round(world.config.validation_fraction * len(documents)))
    order = list(range(len(documents)))
    random.Random(f"{world.config.seed}:validation").shuffle(order)
    chosen: set[int] = set()
    for index in order:
        if len(chosen) >= target:
            break
        doc = documents[index]
        if all(mentions[key] > MIN_TRAIN_MENTIONS for key in doc.facts):
            chosen.add(index)
            mentions.subtract(doc.facts)
    if not chosen:
        raise RecipeError("the validation split would be empty; raise docs_per_person or validation_fraction")
    train = [d for i, d in enumerate(documents) if i not in chosen]
    validation = [d for i, d in enumerate(documents) if i in chosen]
    return train, validation


def _write_parquet(documents: list[Document], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"text": [d.text for d in documents], "id": [d.id for d in documents], "url": [d.url for d in documents]}
    )
    pq.write_table(table, path)


def write_corpus(world: World, output_dir: str | Path) -> dict[str, Any]:
    """Write corpus/{train,validation}.parquet, facts.jsonl and world.json; return a summary."""
    output_dir = Path(output_dir)
    (output_dir / "corpus").mkdir(parents=True, exist_ok=True)
    train, validation = split_documents(world)
    _write_parquet(train, output_dir / "corpus" / "train.parquet")
    _write_parquet(validation, output_dir / "corpus" / "validation.parquet")
    with open(output_dir / "facts.jsonl", "w", encoding="utf-8") as f:
        for record in world.facts_table():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(output_dir / "world.json", "w", encoding="utf-8") as f:
        json.dump(world.to_dict(), f, ensure_ascii=False, indent=1)
        f.write("\n")
    characters = sum(len(d.text) for d in world.documents)
    facts_by_split = Counter(fact.split for fact in world.facts)
    return {
        "output_dir": str(output_dir),
        "documents": len(world.documents),
        "train_documents": len(train),
        "validation_documents": len(validation),
        "characters": characters,
        "words": sum(len(d.text.split()) for d in world.documents),
        "approx_tokens": characters // 4,
        "people": len(world.train_people),
        "heldout_people": len(world.heldout_people),
        "facts_train": facts_by_split["train"],
        "facts_heldout": facts_by_split["heldout"],
    }


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_chat_data(world: World, output_dir: str | Path, config: ChatDataConfig | None = None) -> dict[str, Any]:
    """Write sft/{train,test}.jsonl, identity/train.jsonl, chat_eval.jsonl, heldout_eval.jsonl and probe.jsonl;
    return counts."""
    output_dir = Path(output_dir)
    data = build_chat_data(world, config)
    _write_jsonl([{"messages": c} for c in data.sft_train], output_dir / "sft" / "train.jsonl")
    _write_jsonl([{"messages": c} for c in data.sft_test], output_dir / "sft" / "test.jsonl")
    _write_jsonl([{"messages": c} for c in data.identity], output_dir / "identity" / "train.jsonl")
    _write_jsonl(data.chat_eval, output_dir / "chat_eval.jsonl")
    _write_jsonl(data.heldout_eval, output_dir / "heldout_eval.jsonl")
    _write_jsonl(data.probe, output_dir / "probe.jsonl")
    kinds = Counter(row["kind"] for row in data.chat_eval)
    probe_kinds = Counter(row["kind"] for row in data.probe)
    return {
        "sft_train": len(data.sft_train),
        "sft_test": len(data.sft_test),
        "sft_turns": sum(sum(m["role"] == "assistant" for m in c) for c in data.sft_train),
        "identity_train": len(data.identity),
        "chat_eval_facts": kinds["fact"],
        "chat_eval_identity": kinds["identity"],
        "heldout_eval": len(data.heldout_eval),
        "sft_people": len(data.sft_people),
        "eval_people": len(data.eval_people),
        "probe_people": len(data.probe_people),
        "probe_facts": probe_kinds["fact"],
        "probe_unseen": probe_kinds["unseen"],
    }


def write_math_data(
    world: World,
    output_dir: str | Path,
    config: MathConfig,
    test_fraction: float = 0.1,
    sft_difficulties: Sequence[int] | None = None,
    sft_problems: int | None = None,
) -> dict:
    """Write math/{train,test}.jsonl (word problems about the world's people, no question in both) and
    math_sft/train.jsonl (the first `sft_problems` train problems at `sft_difficulties`, all when None, as
    conversations that reason in <think> before answering)."""
    output_dir = Path(output_dir)
    rows = generate_math_problems(config, world=world)
    train, test = split_problems(rows, test_fraction=test_fraction, seed=config.seed)
    _write_jsonl(train, output_dir / "math" / "train.jsonl")
    _write_jsonl(test, output_dir / "math" / "test.jsonl")
    sft = [row for row in train if sft_difficulties is None or row["difficulty"] in sft_difficulties][:sft_problems]
    _write_jsonl([{"messages": math_conversation(row)} for row in sft], output_dir / "math_sft" / "train.jsonl")
    return {"math_train": len(train), "math_test": len(test), "math_sft": len(sft)}

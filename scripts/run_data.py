"""Build the training data: by default a deterministic synthetic world rendered as a web-like corpus; with
`source: web` the FineWeb-style pipeline on datatrove (crawl in, clean deduplicated corpus out).

Usage:
    python scripts/run_data.py recipes/data.yaml
    python scripts/run_data.py recipes/data.yaml --seed 1 --output_dir data/world-seed1
    python scripts/run_data.py recipes/data_web.yaml            # the world's simulated crawl -> data/web/corpus
    python scripts/run_data.py recipes/data_web.yaml --input crawl/ --input_format warc --labels null

Writes OUTPUT_DIR/corpus/{train,validation}.parquet (columns text, id, url; load them with
`datasets.load_dataset("OUTPUT_DIR/corpus")`), OUTPUT_DIR/facts.jsonl (one cloze fact per line)
and OUTPUT_DIR/world.json (every entity, for later stages). Unless `--chat_data false`, it also writes the
chat data: OUTPUT_DIR/sft/{train,test}.jsonl (`{"messages": [...]}` rows for SFT), OUTPUT_DIR/identity/train.jsonl
(the assistant's identity conversations alone), OUTPUT_DIR/chat_eval.jsonl (questions with expected answers),
OUTPUT_DIR/heldout_eval.jsonl (questions about people in no document) and OUTPUT_DIR/probe.jsonl (the questions
scripts/run_probe.py asks: facts of the probe people, who are in pretraining documents only, and invented people).
With `math_problems > 0` (the default) it writes arithmetic word problems about the world's people to
OUTPUT_DIR/math/{train,test}.jsonl (question, answer, solution, difficulty; no question in both files).
Unless `--tools_data false`, it writes tool-use data: OUTPUT_DIR/tools_sft/train.jsonl (`messages` plus the tool
schemas in `tools`), OUTPUT_DIR/tools_eval.jsonl and the search tool's index OUTPUT_DIR/search/.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.world import (
    CrawlConfig,
    World,
    build_crawl,
    write_chat_data,
    write_corpus,
    write_crawl,
    write_math_data,
    write_preference_data,
)
from chatforge.world.corpus import DataScriptArguments


def main(args: DataScriptArguments) -> dict:
    """Generate the world, write its files and print a summary table."""
    config = args.world_config()  # validates before any work
    chat_config = args.chat_config() if args.chat_data else None
    math_config = args.math_config()
    pref_config = args.preference_config()
    tools_config = args.tools_config()
    start = time.perf_counter()
    world = World.generate(config)
    world.render(progress=True)
    summary = write_corpus(world, args.output_dir)
    if chat_config is not None:
        summary["chat"] = write_chat_data(world, args.output_dir, chat_config)
    if pref_config is not None:
        summary["prefs"] = write_preference_data(world, args.output_dir, **asdict(pref_config))
    if args.crawl:
        summary["crawl"] = write_crawl(
            build_crawl(world, CrawlConfig(seed=config.seed)), Path(args.output_dir) / "crawl"
        )
    if math_config is not None:
        summary["math"] = write_math_data(
            world,
            args.output_dir,
            math_config,
            args.math_test_fraction,
            args.math_sft_difficulties,
            args.math_sft_problems,
        )
    if tools_config is not None:
        from chatforge.world.tools_data import write_tools_data

        summary["tools"] = write_tools_data(world, args.output_dir, tools_config)
    elapsed = time.perf_counter() - start
    rows = [
        (
            "documents (train / validation)",
            f"{summary['documents']:,} ({summary['train_documents']:,} / {summary['validation_documents']:,})",
        ),
        ("characters", f"{summary['characters']:,}"),
        ("words (approx.)", f"{summary['words']:,}"),
        ("tokens (approx., 4 chars each)", f"{summary['approx_tokens']:,}"),
        ("people (in corpus / held out)", f"{summary['people']:,} / {summary['heldout_people']:,}"),
        ("facts (train / heldout)", f"{summary['facts_train']:,} / {summary['facts_heldout']:,}"),
    ]
    if "chat" in summary:
        chat = summary["chat"]
        rows += [
            (
                "people (sft / probe / chat eval)",
                f"{chat['sft_people']:,} / {chat['probe_people']:,} / {chat['eval_people']:,}",
            ),
            ("sft conversations (train / test)", f"{chat['sft_train']:,} / {chat['sft_test']:,}"),
            ("sft assistant turns (train)", f"{chat['sft_turns']:,}"),
            ("identity conversations (train)", f"{chat['identity_train']:,}"),
            ("chat eval questions (fact / identity)", f"{chat['chat_eval_facts']:,} / {chat['chat_eval_identity']:,}"),
            ("probe questions (fact / unseen people)", f"{chat['probe_facts']:,} / {chat['probe_unseen']:,}"),
        ]
    if "math" in summary:
        math = summary["math"]
        rows.append(("math problems (train / test)", f"{math['math_train']:,} / {math['math_test']:,}"))
        rows.append(("math SFT conversations", f"{math['math_sft']:,}"))
    if "prefs" in summary:
        prefs = summary["prefs"]
        rows.append(("preference pairs (train / test)", f"{prefs['pref_train']:,} / {prefs['pref_test']:,}"))
        held = prefs["judge_eval_heldout"]
        rows.append(("judge eval questions (fact / held out)", f"{prefs['judge_eval'] - held:,} / {held:,}"))
    if "crawl" in summary:
        kinds = summary["crawl"]["kinds"]
        noise = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in kinds.items() if kind != "good")
        rows.append(
            ("crawl pages (good + noise)", f"{summary['crawl']['pages']:,} ({kinds.get('good', 0):,} + {noise})")
        )
    if "tools" in summary:
        tools = summary["tools"]
        kinds = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in tools["tools_train"].items())
        rows.append(("tool conversations", f"{sum(tools['tools_train'].values()):,} ({kinds})"))
        rows.append(("tool eval questions", f"{sum(tools['tools_eval'].values()):,}"))
        rows.append(("search index documents", f"{tools['search_documents']:,}"))
    rows.append(("time", f"{elapsed:.1f}s"))
    width = max(len(name) for name, _ in rows)
    print(f"synthetic world, seed {config.seed}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"wrote {args.output_dir}/corpus/{{train,validation}}.parquet, facts.jsonl, world.json")
    if "chat" in summary:
        print(
            f"wrote {args.output_dir}/sft/{{train,test}}.jsonl, identity/train.jsonl, chat_eval.jsonl, "
            "heldout_eval.jsonl, probe.jsonl"
        )
    if "math" in summary:
        print(f"wrote {args.output_dir}/math/{{train,test}}.jsonl")
    if "prefs" in summary:
        print(f"wrote {args.output_dir}/prefs/{{train,test,judge_eval}}.jsonl")
    if "tools" in summary:
        print(f"wrote {args.output_dir}/tools_sft/train.jsonl, tools_eval.jsonl, search/")
    if "crawl" in summary:
        print(f"wrote {args.output_dir}/crawl/crawl.warc.gz, labels.jsonl (for recipes/data_web.yaml)")
    return summary


def recipe_source(argv: list[str]) -> str:
    """The recipe's `source` (the command line's `--source` wins), read before choosing its arguments class."""
    if "--source" in argv and argv.index("--source") + 1 < len(argv):
        return argv[argv.index("--source") + 1]
    recipe = next((a for a in argv if a.endswith((".yaml", ".yml"))), None)
    if recipe and Path(recipe).is_file():
        try:
            config = yaml.safe_load(Path(recipe).read_text()) or {}
        except yaml.YAMLError:
            return "world"  # parse_recipe reports the YAML error with the file name
        if isinstance(config, dict):
            return str(config.get("source", "world"))
    return "world"


if __name__ == "__main__":
    with exit_on_user_error():
        if recipe_source(sys.argv[1:]) == "web":
            from chatforge.web import WebDataArguments, build_web_corpus

            (web_args,) = parse_recipe([WebDataArguments])
            build_web_corpus(web_args)
        else:
            main(*parse_recipe([DataScriptArguments]))

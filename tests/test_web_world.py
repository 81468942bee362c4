"""The web pipeline (recipes/data_web.yaml) on the world's simulated crawl, scored against its labels: every step
is measured against known answers, and the corpus it writes is one pretraining reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("datatrove", reason="the web pipeline needs the `data` extra (pip install -e '.[data]')")

from conftest import REPO, SMALL, run_script  # noqa: E402

from chatforge.data import load_corpus  # noqa: E402
from chatforge.web import WebDataArguments, build_web_corpus, funnel_rows  # noqa: E402
from chatforge.web.scoring import read_labels, removed_documents  # noqa: E402
from chatforge.world import CrawlConfig, World, build_crawl, write_crawl  # noqa: E402

RECIPE = REPO / "recipes" / "data_web.yaml"


def recipe_args(crawl: Path, out: Path, **overrides) -> WebDataArguments:
    """The default recipe's settings, pointed at `crawl` and `out`, one task."""
    settings = yaml.safe_load(RECIPE.read_text())
    settings.update(input=str(crawl), labels=str(crawl / "labels.jsonl"), output_dir=str(out), tasks=1, workers=1)
    settings.update(overrides)
    return WebDataArguments(**settings)


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small world's crawl, with more noise than the default so each kind has enough pages to measure."""
    world = World.generate(SMALL)
    world.render()
    folder = tmp_path_factory.mktemp("crawl")
    config = CrawlConfig(seed=3, exact_duplicate_fraction=0.1, near_duplicate_fraction=0.1, pii_fraction=0.2)
    write_crawl(build_crawl(world, config), folder)
    return folder


@pytest.fixture(scope="module")
def cleaned(crawl: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("web") / "out"
    return out, build_web_corpus(recipe_args(crawl, out))


def test_every_step_meets_its_known_answers(cleaned) -> None:
    _, record = cleaned
    scores = record["scores"]
    assert scores["blocked_removed"] == 1.0
    assert scores["non_english_removed"] == 1.0
    assert scores["spam_removed"] >= 0.95
    assert scores["dedup_precision"] >= 0.95 and scores["dedup_recall"] >= 0.95
    assert scores["dedup_expected"] >= 20  # the measurement covers enough duplicate groups
    assert scores["pii_removed"] == 1.0 and scores["pii_planted_kept_pages"] >= 20
    assert scores["good_kept"] >= 0.9


def test_each_kind_is_removed_by_the_step_meant_for_it(cleaned, crawl: Path) -> None:
    out, _ = cleaned
    labels = read_labels(crawl / "labels.jsonl")
    removed = removed_documents(out)
    by_kind: dict[str, set[str]] = {}
    for url, (step, _reason) in removed.items():
        by_kind.setdefault(labels[url]["kind"], set()).add(step)
    assert by_kind["blocked"] == {"url"}
    assert by_kind["non_english"] == {"language"}
    assert by_kind["spam"] <= {"language", "gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"}
    assert "minhash" in by_kind["exact_duplicate"] and "minhash" in by_kind["near_duplicate"]
    reasons = {reason for _step, reason in removed.values()}
    assert {"language_de", "language_fr", "language_es"} <= reasons


def test_corpus_is_clean_text_that_pretraining_loads(cleaned, crawl: Path) -> None:
    out, record = cleaned
    corpus = load_corpus(str(out / "corpus"), ["train", "validation"])
    assert len(corpus["train"]) + len(corpus["validation"]) == record["documents_out"]
    assert set(corpus["train"].column_names) == {"text", "id", "url"}
    text = "\n".join(corpus["train"]["text"])
    for noise in ("We use cookies", "Accept all", "All rights reserved", "Sign up for our newsletter", "<p>"):
        assert noise not in text
    labels = read_labels(crawl / "labels.jsonl")
    planted = [item for label in labels.values() for item in label["pii"]]
    assert planted and not any(item in text for item in planted)
    assert {labels[url]["kind"] for url in corpus["train"]["url"]} <= {"good", "exact_duplicate", "near_duplicate"}


def test_funnel_adds_up_and_is_written(cleaned) -> None:
    out, record = cleaned
    rows = funnel_rows(out)
    assert [r.step for r in rows][:4] == [
        "WARC (tolerant)",
        "URL filter (offline)",
        "Trafilatura",
        "Language ID (pycld2)",
    ]
    for before, after in zip(rows, rows[1:]):
        assert after.docs_in == before.docs_out
    assert json.loads((out / "funnel.json").read_text())["documents_out"] == rows[-1].docs_out
    assert (out / "funnel.png").stat().st_size > 10_000


def test_rerun_resumes_without_redoing_or_changing_anything(cleaned, crawl: Path) -> None:
    out, record = cleaned
    before = {p: p.read_bytes() for p in sorted((out / "corpus").rglob("*.parquet"))}
    again = build_web_corpus(recipe_args(crawl, out))
    assert {p: p.read_bytes() for p in sorted((out / "corpus").rglob("*.parquet"))} == before
    assert again["documents_out"] == record["documents_out"]


def test_same_split_and_documents_with_two_workers(cleaned, crawl: Path, tmp_path: Path) -> None:
    out, _ = cleaned
    parallel = tmp_path / "parallel"
    build_web_corpus(recipe_args(crawl, parallel, tasks=2, workers=2))

    def split_of(folder: Path) -> dict[str, set[str]]:
        corpus = load_corpus(str(folder / "corpus"), ["train", "validation"])
        return {split: set(corpus[split]["url"]) for split in corpus}

    one, two = split_of(out), split_of(parallel)
    assert one["validation"] == two["validation"]  # the split is a hash of the URL, not of the worker
    # one of each duplicate group stays; which one may differ with the order documents reach MinHash
    assert abs(len(one["train"]) - len(two["train"])) <= 2


def test_run_data_writes_the_crawl_and_the_pipeline_cleans_it(tmp_path: Path) -> None:
    world_dir, web_dir = tmp_path / "world", tmp_path / "web"
    small = ["--num_people", "30", "--num_heldout_people", "5", "--num_cities", "8", "--num_countries", "3"]
    small += ["--num_organisations", "6", "--math_problems", "0", "--chat_data", "false"]
    made = run_script("run_data.py", "recipes/data.yaml", "--output_dir", str(world_dir), *small)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "crawl pages" in made.stdout and (world_dir / "crawl" / "crawl.warc.gz").is_file()
    crawl = world_dir / "crawl"
    result = run_script(
        "run_data.py", "recipes/data_web.yaml", "--input", str(crawl), "--labels", str(crawl / "labels.jsonl"),
        "--output_dir", str(web_dir), "--tasks", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dedup precision" in result.stdout and "planted PII removed" in result.stdout
    assert json.loads((web_dir / "funnel.json").read_text())["scores"]["blocked_removed"] == 1.0


@pytest.fixture(scope="module")
def shards(cleaned, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatforge.web.tokenize import TokenizeArguments, tokenize_corpus

    out, _ = cleaned
    folder = tmp_path_factory.mktemp("tokenized")
    tokenize_corpus(
        TokenizeArguments(
            dataset_name=str(out / "corpus"), tokenizer_name_or_path=str(tokenizer_dir), output_dir=str(folder)
        )
    )
    return folder


def test_token_shards_hold_every_document_exactly(cleaned, shards: Path, tokenizer_dir: Path) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    out, _ = cleaned
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    info = json.loads((shards / "token_shards.json").read_text())
    for split in ("train", "validation"):
        ids = np.concatenate([np.fromfile(f, dtype=np.uint16) for f in sorted((shards / split).glob("*.ds"))])
        assert len(ids) == info["tokens"][split]
        assert ids[0] == tokenizer.eos_token_id  # eos before each document, as pack_dataset does
        starts = np.flatnonzero(ids == tokenizer.eos_token_id).tolist() + [len(ids)]
        decoded = sorted(tokenizer.decode(ids[a + 1 : b].tolist()) for a, b in zip(starts, starts[1:]))
        texts = sorted(load_corpus(str(out / "corpus"), [split])[split]["text"])
        assert decoded == texts  # shuffled, but every document once and byte-exact


def test_pretraining_reads_token_shards(shards: Path, tokenizer_dir: Path, world_dir: Path, tmp_path: Path) -> None:
    from chatforge.configs import RecipeError
    from chatforge.modeling import ArchitectureArguments
    from chatforge.pretrain import PretrainConfig, PretrainScriptArguments, train

    script_args = PretrainScriptArguments(
        dataset_name=str(shards), tokenizer_name_or_path=str(tokenizer_dir), block_size=64, facts_file=None
    )
    config = PretrainConfig(
        output_dir=str(tmp_path / "run"), max_steps=30, per_device_train_batch_size=8, learning_rate=3e-3,
        eval_strategy="steps", eval_steps=30, logging_steps=5, save_steps=30, report_to="none", disable_tqdm=True,
        seed=0, dataloader_pin_memory=False,
    )  # fmt: skip
    arch = ArchitectureArguments(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128
    )
    trainer, metrics = train(script_args, config, arch)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0
    assert 0.5 < metrics["eval_bits_per_byte"] < 8  # bytes come from decoding the shards
    other = tmp_path / "other_tokenizer"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(other)
    script_args.tokenizer_name_or_path = str(other)
    with pytest.raises(RecipeError, match="was tokenized with"):
        train(script_args, config, arch)


def test_tokenize_rejects_a_missing_corpus_split_or_tokenizer(cleaned, tokenizer_dir: Path, tmp_path: Path) -> None:
    from chatforge.configs import RecipeError
    from chatforge.web.tokenize import TokenizeArguments, tokenize_corpus

    out, _ = cleaned
    good = dict(dataset_name=str(out / "corpus"), tokenizer_name_or_path=str(tokenizer_dir), output_dir=str(tmp_path))
    cases = [
        ({"dataset_name": str(tmp_path / "nope")}, "corpus not found"),
        ({"splits": ["train", "test"]}, "no parquet files for split 'test'"),
        ({"tokenizer_name_or_path": str(tmp_path / "tok")}, "tokenizer not found"),
        ({"input_format": "csv"}, "input_format must be parquet or jsonl"),
    ]
    for change, message in cases:
        with pytest.raises(RecipeError, match=message):
            tokenize_corpus(TokenizeArguments(**{**good, **change}))
    assert not any(tmp_path.iterdir())

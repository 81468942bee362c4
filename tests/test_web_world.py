"""The web pipeline (recipes/data_web.yaml) on the world's simulated crawl, scored against its labels: every step
is measured against known answers, and the corpus it writes is one pretraining reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("datatrove", reason="the web pipeline needs the `data` extra (pip install -e '.[data]')")

from conftest import REPO, SMALL, TINY_ARCH, run_script  # noqa: E402

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
    arch = ArchitectureArguments(**TINY_ARCH)
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


# --- a corpus without split folders, laid out like FineWeb-Edu's sample/10BT (split_globs, max_documents) ---

FINEWEB_GLOBS = {"train": "00[0-2]_00000.parquet", "validation": "013_00000.parquet"}


@pytest.fixture(scope="module")
def fineweb_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """sample/10BT/{000,001,002,013}_00000.parquet with FineWeb-Edu's columns; returns the folder and the texts of
    each file in file order."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("fineweb-edu") / "sample" / "10BT"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    words = (
        "the river mill school energy cells photosynthesis 1848 students learn water café naïve — (see) x_2".split()
    )
    texts = {}
    for name, n in (("000_00000", 30), ("001_00000", 25), ("002_00000", 20), ("013_00000", 15)):
        texts[name] = [
            f"{name} document {i}.\n" + " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))
            for i in range(n)
        ]
        table = pa.table(
            {
                "text": texts[name],
                "id": [f"<urn:uuid:{name}-{i}>" for i in range(n)],
                "url": [f"https://example.org/{name}/{i}" for i in range(n)],
                "score": [rng.uniform(3, 5) for _ in range(n)],
            }
        )
        pq.write_table(table, folder / f"{name}.parquet")
    return folder, texts


@pytest.fixture(scope="module")
def small_tokenizer(fineweb_like, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatforge.tokenizer import load_chat_template, save_tokenizer, train_tokenizer

    _, texts = fineweb_like
    tokenizer = train_tokenizer([t for file in texts.values() for t in file], vocab_size=400, show_progress=False)
    template = load_chat_template(REPO / "chat_templates" / "chatml.jinja")
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("small_tokenizer"), template)


def test_split_globs_tokenize_a_corpus_without_split_folders(fineweb_like, small_tokenizer: Path, tmp_path) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from chatforge.web.tokenize import TokenizeArguments, tokenize_corpus

    folder, texts = fineweb_like
    args = TokenizeArguments(
        dataset_name=str(folder), split_globs=dict(FINEWEB_GLOBS), max_documents={"validation": 7}, tasks=2,
        tokenizer_name_or_path=str(small_tokenizer), output_dir=str(tmp_path / "tokenized"),
    )  # fmt: skip
    info = tokenize_corpus(args)
    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer)
    expected = {
        "train": texts["000_00000"] + texts["001_00000"] + texts["002_00000"],  # two tasks share the three files
        "validation": texts["013_00000"][:7],  # the cap: the first 7 documents of the file
    }
    for split, documents in expected.items():
        # eos before each document, then its tokens
        assert info["tokens"][split] == sum(1 + len(tokenizer.encode(t, add_special_tokens=False)) for t in documents)
        shards = sorted((tmp_path / "tokenized" / split).glob("*.ds"))
        ids = np.concatenate([np.fromfile(f, dtype=np.uint16) for f in shards])
        starts = np.flatnonzero(ids == tokenizer.eos_token_id).tolist() + [len(ids)]
        decoded = sorted(tokenizer.decode(ids[a + 1 : b].tolist()) for a, b in zip(starts, starts[1:]))
        assert decoded == sorted(documents)
    assert len(list((tmp_path / "tokenized" / "train").glob("*.ds"))) == 2  # one shard per task
    written = json.loads((tmp_path / "tokenized" / "token_shards.json").read_text())
    assert written["split_globs"] == FINEWEB_GLOBS and written["max_documents"] == {"validation": 7}


def test_split_globs_and_max_documents_parse_from_yaml_and_json(tmp_path: Path) -> None:
    from chatforge.configs import parse_recipe
    from chatforge.web.tokenize import TokenizeArguments

    recipe = tmp_path / "tokenize.yaml"
    recipe.write_text(yaml.safe_dump({"split_globs": FINEWEB_GLOBS, "max_documents": {"validation": 5}}))
    (from_yaml,) = parse_recipe([TokenizeArguments], [str(recipe)])
    (from_json,) = parse_recipe(
        [TokenizeArguments],
        ["--split_globs", json.dumps(FINEWEB_GLOBS), "--max_documents", '{"validation": 5}'],
    )
    assert from_yaml.split_globs == from_json.split_globs == FINEWEB_GLOBS
    assert from_yaml.max_documents == from_json.max_documents == {"validation": 5}
    (plain,) = parse_recipe([TokenizeArguments], ["--split_globs", "null"])
    assert plain.split_globs is None and plain.max_documents is None


def test_split_globs_are_checked_before_any_work(fineweb_like, small_tokenizer: Path, tmp_path: Path) -> None:
    from chatforge.configs import RecipeError
    from chatforge.web.tokenize import TokenizeArguments, tokenize_corpus

    folder, _ = fineweb_like
    out = tmp_path / "out"
    good = dict(
        dataset_name=str(folder), split_globs=FINEWEB_GLOBS, tokenizer_name_or_path=str(small_tokenizer),
        output_dir=str(out),
    )  # fmt: skip
    cases = [
        ({"split_globs": {**FINEWEB_GLOBS, "test": "01*"}}, "split_globs names split 'test', which is not in splits"),
        ({"split_globs": {"train": FINEWEB_GLOBS["train"]}}, "split_globs has no glob for split 'validation'"),
        ({"split_globs": {**FINEWEB_GLOBS, "validation": " "}}, r"split_globs\['validation'\] must be a non-empty"),
        ({"split_globs": {**FINEWEB_GLOBS, "validation": "099_*.parquet"}}, "'099_\\*.parquet' matches no files"),
        ({"split_globs": {"train": "0*.parquet", "validation": "013*"}}, "matches both 'train' and 'validation'"),
        ({"split_globs": '{"train": '}, "split_globs is not valid JSON"),
        ({"split_globs": '["train"]'}, "split_globs must be a mapping"),
        ({"max_documents": {"valid": 5}}, "max_documents names split 'valid', which is not in splits"),
        ({"max_documents": {"validation": 0}}, r"max_documents\['validation'\] must be a positive integer"),
        ({"dataset_name": str(tmp_path / "nope")}, "corpus not found"),
    ]
    for change, message in cases:
        with pytest.raises(RecipeError, match=message):
            tokenize_corpus(TokenizeArguments(**{**good, **change}))
    assert not out.exists()


def test_token_blocks_read_the_same_in_data_loader_workers(fineweb_like, small_tokenizer: Path, tmp_path) -> None:
    """Blocks read in DataLoader workers equal those read in the main process, even after the main process has read
    (as the eval split's bytes-per-token count does): forked workers must not share its open shard files."""
    import torch
    from torch.utils.data import DataLoader

    from chatforge.token_shards import TokenBlocks
    from chatforge.web.tokenize import TokenizeArguments, tokenize_corpus

    folder, _ = fineweb_like
    out = tmp_path / "tokenized"
    tokenize_corpus(
        TokenizeArguments(
            dataset_name=str(folder), split_globs=dict(FINEWEB_GLOBS), splits=["train", "validation"],
            tokenizer_name_or_path=str(small_tokenizer), output_dir=str(out),
        )
    )  # fmt: skip
    blocks = TokenBlocks(out / "train", block_size=8, token_size=2)
    expected = [blocks[i]["input_ids"] for i in range(len(blocks))]  # opens the shard files in this process
    assert len(expected) > 300
    for _ in range(3):
        loaded = [batch["input_ids"][0] for batch in DataLoader(blocks, batch_size=1, num_workers=2)]
        assert len(loaded) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(loaded, expected))

"""Tests of the synthetic world: determinism, fact coverage, held-out people, HTML, corpus export, run_data.py."""

from __future__ import annotations

import html
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import SMALL, run_script

from chatforge.configs import RecipeError
from chatforge.world import World, WorldConfig, split_documents, write_corpus

ROOT = Path(__file__).resolve().parents[1]


def _fingerprint(world: World) -> str:
    return json.dumps([world.to_dict(), world.facts_table(), [(d.id, d.url, d.text, d.html) for d in world.documents]])


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path, world: World) -> None:
    again = World.generate(SMALL)
    assert _fingerprint(again) == _fingerprint(world)
    other = World.generate(WorldConfig(**{**SMALL.__dict__, "seed": 4}))
    assert _fingerprint(other) != _fingerprint(world)
    write_corpus(world, tmp_path / "a")
    write_corpus(again, tmp_path / "b")
    for name in ("corpus/train.parquet", "corpus/validation.parquet", "facts.jsonl", "world.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_entities_are_consistent_and_names_distinct(default_world: World) -> None:
    w = default_world
    city_names = {c.name for c in w.cities}
    assert len(w.people) == 300 and len(w.heldout_people) == 50
    assert len({p.name for p in w.people}) == len(w.people)
    assert all(p.birth_city in city_names and p.employer in w.organisation for p in w.people)
    assert all(o.headquarters in city_names for o in w.organisations)
    assert all(w.city[c.capital].country == c.name for c in w.countries)
    names = (
        [p.name for p in w.people]
        + list(city_names)
        + [c.name for c in w.countries]
        + [o.name for o in w.organisations]
    )
    lowered = [n.lower() for n in names]
    for a in lowered:
        for b in lowered:
            assert a == b or a not in b, (a, b)


def test_facts_table_records(default_world: World) -> None:
    table = default_world.facts_table()
    assert set(table[0]) == {"subject", "subject_type", "relation", "object", "prompt", "answer", "split"}
    assert Counter(r["split"] for r in table)["heldout"] == 5 * 50
    birth = next(r for r in table if r["relation"] == "birth_city")
    assert birth["prompt"] == f"{birth['subject']} was born in"
    assert len({(r["subject"], r["relation"]) for r in table}) == len(table)


def test_every_train_fact_stated_in_three_train_documents(default_world: World) -> None:
    train, _ = split_documents(default_world)
    texts = [d.text for d in train]
    canonical = 0
    for fact in default_world.facts:
        if fact.split != "train":
            continue
        stating = [t for t in texts if fact.subject in t and fact.answer in t]
        assert len(stating) >= 3, fact
        canonical += any(f"{fact.prompt} {fact.answer}" in t for t in stating)
    # the canonical cloze phrasing appears for many facts, but not for all
    train_facts = sum(f.split == "train" for f in default_world.facts)
    assert 0.3 * train_facts < canonical < train_facts


def test_person_documents_vary_in_style(default_world: World) -> None:
    person = default_world.train_people[0]
    docs = [d for d in default_world.documents if d.entities and d.entities[0] == person.name]
    assert {d.style for d in docs} == {"biography", "encyclopedia", "news", "forum"}
    assert len({d.text for d in docs}) == len(docs)


def test_heldout_people_never_appear(default_world: World) -> None:
    heldout = default_world.heldout_people
    words = sorted({p.name for p in heldout} | {p.surname for p in heldout})
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b")
    for doc in default_world.documents:
        found = pattern.search(doc.text) or pattern.search(doc.html)
        assert found is None, (found.group(0), doc.url)
        assert not set(doc.entities) & {p.name for p in heldout}


def test_html_main_contains_text(world: World) -> None:
    for doc in world.documents:
        assert doc.html.startswith("<!DOCTYPE html>") and "<footer>" in doc.html and "cookie" in doc.html
        main = html.unescape(doc.html.split("<main>", 1)[1].split("</main>", 1)[0])
        for paragraph in doc.text.split("\n\n"):
            assert paragraph in main, (doc.url, paragraph)


def test_urls_and_ids_unique(default_world: World) -> None:
    docs = default_world.documents
    assert len({d.url for d in docs}) == len(docs) and len({d.id for d in docs}) == len(docs)
    assert all(d.url.startswith("https://") and ".example/" in d.url for d in docs)
    assert len({d.url.split("/")[2] for d in docs}) >= 8


def test_default_size_is_in_budget(default_world: World) -> None:
    characters = sum(len(d.text) for d in default_world.documents)
    assert 600_000 <= characters <= 1_200_000


def test_written_corpus_loads_with_datasets(tmp_path: Path, world: World) -> None:
    import datasets

    summary = write_corpus(world, tmp_path)
    ds = datasets.load_dataset(str(tmp_path / "corpus"))
    assert set(ds) == {"train", "validation"}
    assert ds["train"].column_names == ["text", "id", "url"]
    assert (
        len(ds["train"]) == summary["train_documents"]
        and len(ds["validation"]) == summary["validation_documents"] >= 1
    )
    facts = [json.loads(line) for line in (tmp_path / "facts.jsonl").read_text().splitlines()]
    assert facts == world.facts_table()
    assert len(json.loads((tmp_path / "world.json").read_text())["people"]) == 50


def test_bad_config_raises() -> None:
    with pytest.raises(RecipeError, match="num_people"):
        World.generate(WorldConfig(num_people=0))
    with pytest.raises(RecipeError, match="validation_fraction"):
        World.generate(WorldConfig(validation_fraction=1.5))
    with pytest.raises(RecipeError, match="num_cities"):
        World.generate(WorldConfig(num_cities=2, num_countries=5))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_script("run_data.py", *args, cwd=cwd)


def test_run_data_script_writes_files(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("num_people: 12\nnum_heldout_people: 3\nnum_cities: 5\nnum_countries: 2\nnum_organisations: 4\n")
    result = _run(str(recipe), "--output_dir", str(tmp_path / "out"), "--seed", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("corpus/train.parquet", "corpus/validation.parquet", "facts.jsonl", "world.json"):
        assert (tmp_path / "out" / name).is_file()
    assert json.loads((tmp_path / "out" / "world.json").read_text())["config"]["seed"] == 1
    assert "documents" in result.stdout


def test_run_data_script_rejects_unknown_source(tmp_path: Path) -> None:
    result = _run(str(ROOT / "recipes" / "data.yaml"), "--source", "nope", "--output_dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0] and "world" in lines[0]
    assert not (tmp_path / "corpus").exists()

"""The web pipeline on real crawl data from ../shared/data/web: HTML pages, Common Crawl WARC/WET and text
documents, and broken WARC files. Each run is the real datatrove pipeline at one task."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

pytest.importorskip("datatrove", reason="the web pipeline needs the `data` extra (pip install -e '.[data]')")

from conftest import SHARED_DATA, one_line_error, run_script  # noqa: E402

from chatforge.configs import RecipeError  # noqa: E402
from chatforge.data import load_corpus  # noqa: E402
from chatforge.web import WebDataArguments, build_web_corpus, funnel_rows  # noqa: E402
from chatforge.web.pipeline import build_stages, make_executor  # noqa: E402
from chatforge.web.scoring import removed_documents  # noqa: E402

WEB = SHARED_DATA / "web"
needs_web_data = pytest.mark.skipif(not WEB.is_dir(), reason=f"real web data not found at {WEB}")


def run(tmp_path: Path, **kwargs) -> tuple[dict, Path]:
    out = tmp_path / "out"
    args = WebDataArguments(output_dir=str(out), tasks=1, workers=1, **kwargs)
    return build_web_corpus(args), out


def assert_funnel_is_consistent(out: Path) -> list:
    """Each step receives what the one before it passed on, and removed/ holds every removed document."""
    rows = funnel_rows(out)
    for before, after in zip(rows, rows[1:]):
        assert after.docs_in == before.docs_out, (before, after)
    removed_files = sum(
        1 for folder in (out / "removed").glob("*_*") for f in folder.glob("*.jsonl.gz") for _ in gzip.open(f)
    )
    removed_stats = sum(row.docs_in - row.docs_out for row in rows)
    assert removed_files == removed_stats - sum(r.removed.get("no_text", 0) for r in rows)
    return rows


@needs_web_data
def test_real_html_pages_are_extracted_filtered_and_written(tmp_path: Path) -> None:
    record, out = run(tmp_path, input=str(WEB / "html"), input_format="html", languages=["en", "de"])
    rows = assert_funnel_is_consistent(out)
    assert rows[0].docs_in == len(list((WEB / "html").glob("*.html")))
    extractor = next(r for r in rows if r.step == "Trafilatura")
    assert extractor.docs_out >= 0.9 * extractor.docs_in
    assert extractor.chars_out < 0.1 * rows[0].chars_out  # markup, scripts and boilerplate are gone
    language = next(r for r in rows if r.step.startswith("Language"))
    assert any(reason.startswith("language_fr") for reason in language.removed)  # French pages exist; not kept
    corpus = load_corpus(str(out / "corpus"), ["train"])["train"]
    assert len(corpus) == record["documents_out"] - _validation_rows(out)
    assert all("<div" not in text and "</p>" not in text for text in corpus["text"])
    removed = removed_documents(out)
    assert all(reason for _step, reason in removed.values())


def _validation_rows(out: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in (out / "corpus").glob("validation/*.parquet"))


@needs_web_data
def test_common_crawl_warc_and_wet_records_are_read(tmp_path: Path) -> None:
    whirlwind = WEB / "warc" / "cc_whirlwind"
    _, warc_out = run(tmp_path / "warc", input=str(whirlwind / "whirlwind.warc.gz"), languages=[])
    warc_rows = funnel_rows(warc_out)
    assert warc_rows[0].docs_in == 1 and warc_rows[0].step.startswith("WARC")
    assert any(r.step == "Trafilatura" and r.docs_out == 1 for r in warc_rows)
    _, wet_out = run(tmp_path / "wet", input=str(whirlwind / "whirlwind.warc.wet"), input_format="wet", languages=[])
    wet_rows = funnel_rows(wet_out)
    assert wet_rows[0].docs_in == 1
    assert not any(r.step == "Trafilatura" for r in wet_rows)  # WET text is already extracted


@needs_web_data
def test_broken_warc_files_are_counted_and_skipped(tmp_path: Path) -> None:
    fixtures = WEB / "warc" / "warcio_fixtures"
    record, out = run(tmp_path, input=str(fixtures), glob_pattern="*", languages=[], minhash=False)
    reader = funnel_rows(out)[0]
    assert reader.removed.get("broken_files", 0) >= 1  # example-bad.warc.gz.bad cannot be read to its end
    assert reader.docs_in >= 5  # every readable HTML response of the other files
    assert record["documents_out"] >= 1


@needs_web_data
def test_common_crawl_text_documents_are_filtered_deduplicated_and_scrubbed(tmp_path: Path) -> None:
    source = WEB / "cc_jsonl"
    lines = sum(1 for f in source.glob("*.jsonl.gz") for line in gzip.open(f, "rt") if json.loads(line)["text"])
    _, out = run(tmp_path, input=str(source), input_format="jsonl")
    rows = assert_funnel_is_consistent(out)
    assert rows[0].docs_in == lines
    assert not any(r.step == "Trafilatura" for r in rows)
    language = next(r for r in rows if r.step.startswith("Language"))
    assert 0.2 < language.docs_out / language.docs_in < 0.8  # a multilingual crawl: many non-English documents
    for row in rows[1:]:
        assert row.docs_out <= row.docs_in
    corpus = load_corpus(str(out / "corpus"), ["train"])["train"]
    assert len(corpus) > 50 and set(corpus.column_names) == {"text", "id", "url"}


def test_bad_settings_fail_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        ({"input": str(tmp_path / "missing")}, "input not found"),
        ({"input": str(tmp_path), "input_format": "pdf"}, "input_format must be one of"),
        ({"input": str(tmp_path), "input_format": "warc"}, "no files matching"),
        ({"input": str(tmp_path), "languages": ["english"]}, "languages: 'english'"),
        ({"input": str(tmp_path), "language_threshold": 2.0}, "language_threshold"),
        ({"input": str(tmp_path), "minhash_buckets": 0}, "minhash_buckets"),
        ({"input": str(tmp_path), "labels": str(tmp_path / "nope.jsonl")}, "labels file not found"),
    ]
    (tmp_path / "page.html").write_text("<html><body><p>Hello.</p></body></html>")
    for kwargs, message in cases:
        kwargs.setdefault("input_format", "html")
        with pytest.raises(RecipeError, match=message):
            build_web_corpus(WebDataArguments(output_dir=str(out), **kwargs))
    assert not out.exists()


def test_slurm_stages_depend_on_each_other_and_need_a_partition(tmp_path: Path) -> None:
    pytest.importorskip("datatrove.executor.slurm")
    (tmp_path / "page.html").write_text("<html><body><p>Hello.</p></body></html>")
    args = WebDataArguments(input=str(tmp_path), input_format="html", output_dir=str(tmp_path / "out"), tasks=8)
    args.executor = "slurm"
    with pytest.raises(RecipeError, match="partition"):
        make_executor(args, build_stages(args)[0], None)
    args.executor_kwargs = {"partition": "cpu", "time": "01:00:00"}
    executor = None
    for stage in build_stages(args):
        executor = make_executor(args, stage, executor)
    chain = []
    while executor is not None:
        chain.append(executor.job_name)
        executor = executor.depends
    assert chain[::-1] == [
        f"chatforge_{name}"
        for name in ("filter", "minhash_signatures", "minhash_buckets", "minhash_clusters", "output")
    ]


@needs_web_data
def test_run_data_script_runs_the_web_recipe_and_reports_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    common = ["--input", str(WEB / "cc_jsonl"), "--input_format", "jsonl", "--labels", "null", "--tasks", "1"]
    result = run_script("run_data.py", "recipes/data_web.yaml", *common, "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FineWeb Quality" in result.stdout and "MinHash dedup" in result.stdout
    assert json.loads((out / "funnel.json").read_text())["documents_out"] > 50
    bad = run_script("run_data.py", "recipes/data_web.yaml", *common[:2], "--input_format", "pdf")
    assert "input_format must be one of" in one_line_error(bad)


@pytest.mark.parametrize("recipe", ["commoncrawl_slurm.yaml", "commoncrawl_ray.yaml"])
def test_cluster_recipes_parse_and_build_their_executors(recipe: str, tmp_path: Path) -> None:
    from chatforge.configs import parse_recipe

    path = Path(__file__).resolve().parents[1] / "recipes" / "web" / recipe
    (args,) = parse_recipe([WebDataArguments], [str(path)])
    assert args.input.startswith("s3://") and args.tasks > 1000 and args.executor_kwargs
    args.validate()  # remote inputs are checked by the cluster, not here
    segment = tmp_path / "segment" / "warc"  # the same layout locally: reading s3:// would need s3fs
    segment.mkdir(parents=True)
    (segment / "part.warc.gz").write_bytes(b"")
    (args,) = parse_recipe([WebDataArguments], [str(path), "--input", str(tmp_path), "--output_dir", str(tmp_path)])
    args.validate()
    if args.executor == "ray":
        pytest.importorskip("ray", reason="the Ray executor needs `pip install ray`")
    executor = None
    for stage in build_stages(args):
        executor = make_executor(args, stage, executor)
    assert executor.depends is not None and executor.tasks == args.tasks


@needs_web_data
def test_rerun_with_other_settings_is_refused_and_keeps_the_output(tmp_path: Path) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    for name in sorted(p.name for p in (WEB / "html").glob("*.html"))[:6]:
        (pages / name).write_bytes((WEB / "html" / name).read_bytes())
    _, out = run(tmp_path, input=str(pages), input_format="html", languages=["en", "de"], minhash=False)
    before = {p: p.read_bytes() for p in sorted((out / "corpus").rglob("*.parquet"))}
    with pytest.raises(RecipeError, match=r"holds a run with other settings \(languages\)"):
        run(tmp_path, input=str(pages), input_format="html", languages=["en"], minhash=False)
    assert {p: p.read_bytes() for p in sorted((out / "corpus").rglob("*.parquet"))} == before
    run(tmp_path, input=str(pages), input_format="html", languages=["en", "de"], minhash=False)  # same: resumes

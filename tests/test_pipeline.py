"""scripts/pipeline.py: stages in order, up-to-date stages skipped, changed ones rerun, interrupted ones resumed,
and a report card that shows what each stage produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FORKED, REPO, RUN_ENV

from chatforge.configs import RecipeError
from chatforge.pipeline import STAMP, Pipeline
from chatforge.report import card_metrics


def _write_recipes(root: Path) -> Path:
    """Tiny versions of the default recipes, writing everything under `root`."""
    recipes = root / "recipes"
    recipes.mkdir()
    world, out = root / "data" / "world", root / "outputs"
    (recipes / "data.yaml").write_text(
        f"output_dir: {world}\nnum_people: 30\nnum_heldout_people: 6\nnum_cities: 8\nnum_countries: 3\n"
        "num_organisations: 6\nsft_identity_conversations: 20\n"
    )
    web = yaml.safe_load((REPO / "recipes" / "data_web.yaml").read_text())  # the default web recipe, one task
    web.update(input=f"{world}/crawl", labels=f"{world}/crawl/labels.jsonl", output_dir=str(root / "data" / "web"))
    (recipes / "data_web.yaml").write_text(yaml.safe_dump({**web, "tasks": 1}))
    # tokenizer and pretraining read the web pipeline's corpus: the recipe switch, which makes them depend on it
    (recipes / "tokenizer.yaml").write_text(
        f"dataset_name: {root}/data/web/corpus\nvocab_size: 400\noutput_dir: {out}/tokenizer\n"
        f"chat_template: {REPO}/chat_templates/chatml.jinja\n"
    )
    (recipes / "pretrain.yaml").write_text(
        f"dataset_name: {root}/data/web/corpus\ntokenizer_name_or_path: {out}/tokenizer\n"
        f"facts_file: {world}/facts.jsonl\n"
        "block_size: 64\nhidden_size: 32\nnum_hidden_layers: 1\nnum_attention_heads: 2\nnum_key_value_heads: 1\n"
        "intermediate_size: 64\nmax_position_embeddings: 128\nmax_steps: 12\nper_device_train_batch_size: 8\n"
        "learning_rate: 3.0e-3\nlogging_steps: 4\neval_strategy: steps\neval_steps: 6\nsave_strategy: steps\n"
        f"save_steps: 6\nsave_total_limit: 2\nreport_to: none\noutput_dir: {out}/pretrain\n"
    )
    tasks = {
        "world_bpb": {"type": "bits_per_byte", "dataset": f"{world}/corpus", "split": "validation", "limit": 20},
        "world_facts_mc": {"type": "multiple_choice", "source": f"{world}/facts.jsonl", "limit": 40},
        "hallucination": {"type": "hallucination", "heldout_file": f"{world}/heldout_eval.jsonl", "limit": 4,
                          "known_file": f"{world}/chat_eval.jsonl", "known_limit": 4, "max_new_tokens": 8},
    }  # fmt: skip
    (recipes / "eval.yaml").write_text(json.dumps({"tasks": tasks, "batch_size": 16, "progress": False}))
    return recipes


def _pipeline(recipes: Path, *args: str) -> subprocess.CompletedProcess:
    """The pipeline in its own process, which starts each stage's; the training stages under the `--launcher`
    option, here tests/forked.py (forked from the suite's server, without the ~7 s of imports)."""
    command = [sys.executable, str(REPO / "scripts" / "pipeline.py"), str(recipes), "--no_samples", *args]
    command += ["--report", str(recipes.parent / "outputs" / "report.md"), "--launcher", f"{sys.executable} {FORKED}"]
    env = {**os.environ, **RUN_ENV, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)


def _plan(recipes: Path) -> list[str]:
    """`pipeline.py --dry_run`'s words: `stage: what will happen` for every stage."""
    command = [sys.executable, str(REPO / "scripts" / "pipeline.py"), str(recipes), "--dry_run"]
    return subprocess.run(command, capture_output=True, text=True).stdout.split()


def _statuses(stdout: str) -> dict[str, str]:
    """Each stage's last reported status: 'up to date', 'ran', 'resumed'."""
    statuses = {}
    for line in stdout.splitlines():
        if line.startswith("=== ") and ":" in line:
            name, rest = line[4:].split(":", 1)
            rest = rest.strip()
            if rest.startswith("up to date"):
                statuses[name] = "up to date"
            elif rest.startswith(("ran in", "resumed in")):
                statuses[name] = rest.split(" in ")[0]
    return statuses


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    recipes = _write_recipes(tmp_path_factory.mktemp("pipeline"))
    return recipes, _pipeline(recipes)


def test_pipeline_runs_every_stage_and_writes_the_report(first_run) -> None:
    recipes, result = first_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _statuses(result.stdout) == {
        "data": "ran", "web": "ran", "tokenizer": "ran", "pretrain": "ran", "eval_pretrain": "ran",
    }  # fmt: skip
    out = recipes.parent / "outputs"
    stamp = json.loads((out / "pretrain" / STAMP).read_text())
    assert stamp["state"] == "finished" and stamp["seconds"] > 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "eval" / "pretrain" / "eval_results.json").read_text())
    bpb = results["tasks"]["world_bpb"]["bits_per_byte"]
    assert f"| world_bpb/bits_per_byte ↓ | {bpb:.3f} |" in report  # the card shows the measured number
    assert "| pretrain | ran |" in report and "transformers" in report and "cpu" in report
    assert (out / "report_card.png").stat().st_size > 5000
    assert "![pretrain curves](pretrain/loss_curve.png)" in report and (out / "pretrain" / "loss_curve.png").is_file()
    funnel = json.loads((recipes.parent / "data" / "web" / "funnel.json").read_text())
    assert "## Web data funnel (web)" in report and f"| Parquet | {funnel['documents_out']:,} |" in report
    assert "| dedup recall |" in report and "![web data funnel](../data/web/funnel.png)" in report


def test_pipeline_skips_up_to_date_and_reruns_what_changed(first_run) -> None:
    recipes, first = first_run
    assert first.returncode == 0
    out = recipes.parent / "outputs"
    again = _pipeline(recipes)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_statuses(again.stdout).values()) == {"up to date"}
    assert "(recorded time)" in (out / "report.md").read_text()

    # Comments and layout are not settings: annotating recipes (data.yaml, which every stage reads after) with a
    # measurement leaves every stage up to date.
    for name in ("data.yaml", "pretrain.yaml"):
        recipe = recipes / name
        recipe.write_text("# measured: 71.4% fact recall\n" + recipe.read_text().replace("\n", "\n\n"))
    assert _plan(recipes) == "data: up to date web: up to date tokenizer: up to date pretrain: up to date "\
        "eval_pretrain: up to date".split()  # fmt: skip

    weights = (out / "pretrain" / "model.safetensors").read_bytes()
    recipe = recipes / "pretrain.yaml"
    recipe.write_text(recipe.read_text().replace("learning_rate: 3.0e-3", "learning_rate: 1.0e-3"))
    expected = "data: up to date web: up to date tokenizer: up to date pretrain: run eval_pretrain: run"
    assert _plan(recipes) == expected.split()
    changed = _pipeline(recipes)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert _statuses(changed.stdout) == {
        "data": "up to date", "web": "up to date", "tokenizer": "up to date", "pretrain": "ran", "eval_pretrain": "ran",
    }  # fmt: skip
    web = recipes / "data_web.yaml"  # a changed web recipe reruns what reads its corpus: tokenizer, pretraining
    original = web.read_text()
    web.write_text(original.replace("validation_fraction: 0.05", "validation_fraction: 0.1"))
    plan = _plan(recipes)
    web.write_text(original)
    assert plan == "data: up to date web: run tokenizer: run pretrain: run eval_pretrain: run".split()
    assert (out / "pretrain" / "model.safetensors").read_bytes() != weights
    assert (out / "pretrain.previous" / "model.safetensors").read_bytes() == weights  # moved aside, not lost


def test_pipeline_resumes_an_interrupted_stage(first_run) -> None:
    recipes, first = first_run
    assert first.returncode == 0
    out = recipes.parent / "outputs" / "pretrain"
    stamp = json.loads((out / STAMP).read_text())
    assert any(out.glob("checkpoint-*"))
    (out / STAMP).write_text(json.dumps({"state": "started", "fingerprint": stamp["fingerprint"]}))
    result = _pipeline(recipes, "--stages", "data,tokenizer,pretrain")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _statuses(result.stdout)["pretrain"] == "resumed"
    assert "--resume_from_checkpoint last" in result.stdout
    assert json.loads((out / STAMP).read_text())["state"] == "finished"


def test_pipeline_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipes folder not found"):
        Pipeline(tmp_path / "nope")
    with pytest.raises(RecipeError, match="no stage recipes found"):
        Pipeline(tmp_path)
    (tmp_path / "data.yaml").write_text("num_people: 3\n")
    with pytest.raises(RecipeError, match="data.yaml: needs an output_dir"):
        Pipeline(tmp_path)
    (tmp_path / "data.yaml").write_text(f"output_dir: {tmp_path}/w\n")
    with pytest.raises(RecipeError, match="no stage 'pretrian' in .*; stages there: data"):
        Pipeline(tmp_path, stages=["pretrian"])
    (tmp_path / "tokenizer.yaml").write_text("- a list\n")
    with pytest.raises(RecipeError, match="tokenizer.yaml: expected a YAML mapping"):
        Pipeline(tmp_path)


def test_factuality_stages_follow_sft_and_show_on_the_card(tmp_path: Path) -> None:
    """The default recipes: probe reads the SFT model, factuality continues it on the probe's rows (launched and
    resumable like SFT), eval_factuality scores it beside sft; the probe's numbers head its row of the stage table."""
    pipeline = Pipeline(REPO / "recipes")
    names = [run.stage.name for run in pipeline.selected]
    assert names.index("sft") < names.index("probe") < names.index("factuality") < names.index("eval_pretrain")
    assert names.index("eval_sft") + 1 == names.index("eval_factuality")  # side by side on the report card
    assert {"data", "sft"} <= set(pipeline.upstream["probe"])
    assert {"data", "sft", "probe"} <= set(pipeline.upstream["factuality"])
    factuality = pipeline.runs["factuality"]
    assert factuality.stage.resumable and factuality.stage.launch and factuality.output == Path("outputs/factuality")
    assert factuality.command[1:] == [str(REPO / "scripts" / "run_sft.py"), str(REPO / "recipes" / "factuality.yaml")]
    evaluation = pipeline.runs["eval_factuality"]
    assert evaluation.output == Path("outputs/eval/factuality") and "outputs/factuality" in evaluation.command
    probe = pipeline.runs["probe"]
    assert probe.output == Path("outputs/probe") and probe.command[-1] == str(REPO / "recipes" / "probe.yaml")

    from chatforge.pipeline import StageRun
    from chatforge.report import write_report

    metrics = {"probe_accuracy": 0.7, "unseen_hallucination_rate": 0.98, "idk_rows": 90, "answer_rows": 160}
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "metrics.json").write_text(json.dumps({**metrics, "decisions": {}}))
    run = StageRun(probe.stage, tmp_path / "probe", "0", status="ran", seconds=20.0)
    report = write_report([run], tmp_path / "report.md").read_text()
    assert (
        "probe accuracy (sampled) 70.0%, hallucination on invented people (sampled) 98.0%, "
        "'I don't know' rows 90, answer rows 160 |" in report
    )


def test_card_metrics_keep_headline_numbers_and_math_levels() -> None:
    results = {
        "tasks": {
            "world_math": {
                "pass@1": 0.5, "pass@4": 0.7, "accuracy": 0.5, "num_problems": 10, "skipped": 0,
                "per_difficulty": {"0": {"pass@1": 0.9, "num_problems": 5}, "1": {"pass@1": 0.1, "num_problems": 5}},
            },
            "world_bpb": {"bits_per_byte": 0.25, "loss": 0.7, "num_documents": 3},
            "chat": {"fact_accuracy": 0.2, "counts": {"fact": 5}},
        }
    }  # fmt: skip
    assert card_metrics(results) == {
        "world_math/pass@1": 0.5, "world_math/pass@4": 0.7, "world_math/pass@1_level0": 0.9,
        "world_math/pass@1_level1": 0.1, "world_bpb/bits_per_byte": 0.25, "chat/fact_accuracy": 0.2,
    }  # fmt: skip

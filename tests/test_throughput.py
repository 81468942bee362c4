"""Pretraining speed tooling: the FLOP count behind MFU, document masking, and the Trainer-vs-plain-loop benchmark."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, run_script
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from chatforge.configs import RecipeError
from chatforge.data import BlockCollator, document_position_ids
from chatforge.flops import training_flops_per_token
from chatforge.throughput import BenchmarkSettings, RunSpec, model_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(attn: str = "eager", vocab_size: int = 512):
    config = AutoConfig.for_model(
        "qwen3", vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, use_cache=False,
    )  # fmt: skip  # as training runs it: with a KV cache, transformers ignores document position ids
    config._attn_implementation = attn
    return config


@pytest.mark.parametrize("tie", [True, False])
def test_training_flops_equal_counted_flops(tie: bool) -> None:
    """The analytic count (6 x matmul weights + attention) equals what torch counts for forward + backward."""
    config = tiny_config()
    config.tie_word_embeddings = tie
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    ids = torch.randint(0, config.vocab_size, (3, 96))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    assert counter.get_total_flops() == pytest.approx(training_flops_per_token(config, 96) * ids.numel(), rel=1e-9)


def test_document_position_ids_restart_at_each_separator() -> None:
    ids = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 0, 4], [0, 3, 3, 3, 0, 2, 2, 2, 2]])
    expected = torch.tensor([[0, 1, 0, 1, 2, 3, 0, 0, 1], [0, 1, 2, 3, 0, 1, 2, 3, 4]])
    assert torch.equal(document_position_ids(ids, separator_id=0), expected)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_document_masking_keeps_attention_within_documents(attn: str) -> None:
    """A document packed after another predicts exactly as it does alone with masking, and differently without."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(attn), attn_implementation=attn).eval()
    first, second = torch.randint(2, 512, (10,)), torch.randint(2, 512, (12,))
    eos = torch.tensor([0])
    block = torch.cat([eos, first, eos, second])
    alone = torch.cat([eos, second])
    with torch.no_grad():
        reference = model(input_ids=alone[None]).logits[0]
        masked_batch = BlockCollator(0, document_masking=True)([{"input_ids": block}])
        masked = model(input_ids=masked_batch["input_ids"], position_ids=masked_batch["position_ids"]).logits[0]
        plain = model(**{k: v for k, v in BlockCollator(0)([{"input_ids": block}]).items() if k != "labels"})
    assert "attention_mask" not in masked_batch
    assert torch.allclose(masked[-len(alone) :], reference, atol=1e-5)
    assert not torch.allclose(plain.logits[0][-len(alone) :], reference, atol=1e-3)
    assert torch.allclose(masked[: len(first) + 1], plain.logits[0][: len(first) + 1], atol=1e-5)  # first doc same


def read_table(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]
    return {row["run"]: row for row in rows}


def test_benchmark_compares_trainer_and_plain_loop_on_the_same_work(tmp_path: Path) -> None:
    """Both loops train the same model on the same batches: equal losses, so their speeds compare fairly."""
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nkept text\n\n<!-- pretrain -->\nan old table\n<!-- /pretrain -->\n\nkept too\n")
    args = ["--sizes", "tiny", "--seq_len", "128", "--batch_size", "4", "--steps", "6", "--warmup_steps", "2"]
    args += ["--runs", "trainer,plain,trainer+docs", "--dataloader_num_workers", "0", "--output", str(out)]
    result = run_script("benchmark_pretrain.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.count("<!-- pretrain -->") == 1 and "kept text" in text and "kept too" in text
    assert "an old table" not in text  # replaced
    rows = read_table(text.split("<!-- pretrain -->")[1])
    assert set(rows) == {"trainer", "plain", "trainer+docs"}
    for row in rows.values():
        assert float(row["tokens/s"].replace(",", "")) > 0
        assert 0 < float(row["MFU"].rstrip("%")) <= 100
    assert float(rows["trainer"]["mean loss"]) == pytest.approx(float(rows["plain"]["mean loss"]), abs=2e-3)
    assert float(rows["trainer"]["vs plain loop"]) > 0 and rows["plain"]["vs plain loop"] == "-"
    assert re.search(r"measured float32 matmul peak [\d.]+ TFLOP/s", text)


def test_benchmark_keeps_going_past_a_failing_run_and_stops_at_its_time_budget(tmp_path: Path) -> None:
    """A run that breaks (here flex attention, which has no CPU backward) is noted in its row and the others still
    run; past --time_budget no run starts, and the skipped ones are listed (a short GPU lease keeps what it got)."""
    out = tmp_path / "benchmarks.md"
    args = ["--sizes", "tiny", "--seq_len", "64", "--batch_size", "2", "--steps", "3", "--warmup_steps", "1"]
    args += ["--dataloader_num_workers", "0", "--output", str(out)]
    result = run_script("benchmark_pretrain.py", *args, "--runs", "plain+flex,plain")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_table(out.read_text())
    assert rows["plain+flex"]["tokens/s"].startswith("failed: NotImplementedError")
    assert float(rows["plain"]["tokens/s"].replace(",", "")) > 0

    result = run_script("benchmark_pretrain.py", *args, "--runs", "plain,trainer", "--time_budget", "0.001")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_table(out.read_text())
    assert float(rows["plain"]["tokens/s"].replace(",", "")) > 0
    assert rows["trainer"]["tokens/s"] == "skipped: --time_budget 0.001 s spent"


def test_benchmark_profiles_a_run_and_lists_where_its_steps_go(tmp_path: Path) -> None:
    """--profile records steps after the warm-up with torch.profiler: the ops with the most time per step, the
    matrix products first for a model that is all matmuls; the timed table is left as it was."""
    out = tmp_path / "benchmarks.md"
    args = ["--sizes", "tiny", "--seq_len", "64", "--batch_size", "4", "--steps", "4", "--warmup_steps", "2"]
    args += ["--runs", "plain", "--profile", "trainer", "--profile_steps", "2", "--dataloader_num_workers", "0"]
    result = run_script("benchmark_pretrain.py", *args, "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert set(read_table(text.split("Profile of")[0])) == {"plain"}  # the profile is not a timed row
    heading = re.search(r"Profile of tiny trainer \(2 steps after the warm-up, under the profiler: ([\d.]+) ms", text)
    assert heading and float(heading.group(1)) > 0
    ops = [line.split("|") for line in text.split("Profile of")[1].splitlines() if line.startswith("| `")]
    # matrix products near the top (the tiny model's log-softmax over the vocabulary took first place once)
    assert len(ops) == 12 and "`aten::mm`" in [op[1].strip() for op in ops[:3]]
    per_step = [float(op[2]) for op in ops]
    assert per_step == sorted(per_step, reverse=True) and per_step[-1] > 0


def test_benchmark_bad_run_fails_in_one_line_before_any_work() -> None:
    bad = run_script("benchmark_pretrain.py", "--sizes", "tiny", "--runs", "trainer,trainer+turbo", fresh=True)
    line = one_line_error(bad)
    assert "unknown option 'turbo'" in line and "compile" in line


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: RunSpec.parse("adam"), "must start with 'trainer' or 'plain'"),
        (lambda: RunSpec.parse("plain+flex+fa2"), "choose one of flex and fa2"),
        (lambda: model_config("7b", 2048), "unknown model size '7b'"),
        (lambda: BenchmarkSettings(steps=3, warmup_steps=3).validate(), "--warmup_steps must be in [1, steps)"),
        (lambda: BenchmarkSettings(batch_size=0).validate(), "--batch_size must be at least 1"),
        pytest.param(
            lambda: RunSpec.parse("trainer+liger").check_installed(),
            "Liger kernels are Triton GPU kernels",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message"),
        ),
    ],
)
def test_benchmark_bad_settings_are_named(make, expected: str) -> None:
    with pytest.raises(RecipeError, match=re.escape(expected)):
        make()


def test_loader_throughput_and_too_few_batches() -> None:
    """The loader check measures shuffled, collated batches, and says when the data cannot fill two batches."""
    from chatforge.throughput import RandomDocuments, loader_tokens_per_second

    settings = BenchmarkSettings(seq_len=64, batch_size=4, dataloader_num_workers=0)
    data = RandomDocuments(40, 64, vocab_size=300, mean_document_tokens=20)
    assert 40 * 64 / 40 < (data.blocks == 0).sum() < 40 * 64 / 10 and data.blocks.max() < 300  # documents, vocab
    assert loader_tokens_per_second(data, settings) > 0
    with pytest.raises(RecipeError, match="fewer than 2 batches of 4 x 64"):
        loader_tokens_per_second(RandomDocuments(5, 64, vocab_size=300), settings)


def test_liger_with_torch_compile_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The pair failed to compile on the H200 (docs/benchmarks.md): a recipe that sets both is told so."""
    from chatforge.pretrain import PretrainConfig

    with caplog.at_level(logging.WARNING):
        PretrainConfig(output_dir=str(tmp_path), use_liger_kernel=True, torch_compile=True, use_cpu=True)
    assert "use_liger_kernel with torch_compile failed to compile" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        PretrainConfig(output_dir=str(tmp_path), torch_compile=True, use_cpu=True)
    assert "use_liger_kernel" not in caplog.text


def test_pretrain_trainer_counts_flops_with_chatforge_flops(tmp_path: Path) -> None:
    """total_flos is the FLOP count MFU uses (attention and output head included), over every token trained."""
    from chatforge.modeling import build_model
    from chatforge.pretrain import PretrainConfig, PretrainTrainer
    from chatforge.throughput import EOS_ID, RandomDocuments

    config = model_config("tiny", 32)
    args = PretrainConfig(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        use_cpu=True, eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
    )  # fmt: skip
    trainer = PretrainTrainer(
        model=build_model(config), args=args, train_dataset=RandomDocuments(12, 32, config.vocab_size),
        data_collator=BlockCollator(EOS_ID),
    )  # fmt: skip
    trainer.train()
    tokens = 3 * 2 * 2 * 32
    assert trainer.state.total_flos == pytest.approx(training_flops_per_token(config, 32) * tokens, rel=1e-6)

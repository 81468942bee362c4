"""SFT: the assistant mask, the default run's chat accuracy and identity, LoRA adapters, and bad input."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, one_line_error, run_script, run_script_here
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from chatforge.configs import RecipeError
from chatforge.evaluation.math import math_accuracy
from chatforge.math_data import load_world_math
from chatforge.sft import ChatSFTConfig, SFTScriptArguments, train

# Measured on the default recipes (see README): chat fact accuracy 0.744 (0.148 before SFT), identity 0.39
# overall, level-0 word problems ~0.46 greedy (600 worked examples; GRPO does the rest). Floors leave margin for noise.
CHAT_FACT_FLOOR = 0.15
IDENTITY_FLOOR = 0.25
# "what is your name" / "who made you" in unseen phrasings: 2 of 6 in the demo with tool data in SFT (was 5 of 6
# before it; identity on 23 questions swings between runs: 30-65% across this session's SFT runs)
IDENTITY_CORE_FLOOR = 2 / 6
MATH_LEVEL0_FLOOR = 0.25  # greedy, held-out level-0 problems (0.0 before SFT; ~46% after 600 worked examples)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where was Talia Morvane born?"},
    {"role": "assistant", "content": "Talia Morvane was born in Lorvik."},
    {"role": "user", "content": "And what does she do?"},
    {"role": "assistant", "content": "She works as a baker."},
]


@pytest.fixture(scope="module")
def tiny_base(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Qwen3 saved with the default tokenizer: a stand-in base model."""
    out = tmp_path_factory.mktemp("tiny_base")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        head_dim=32,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_sft(
    base: Path, world_dir: Path, output_dir: Path, use_peft: bool = False, script: dict | None = None, **overrides
):
    script_args = SFTScriptArguments(dataset_name=str(world_dir / "sft"), chat_eval_file=None, **(script or {}))
    settings = dict(
        output_dir=str(output_dir),
        max_steps=8,
        per_device_train_batch_size=4,
        max_length=128,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    settings.update(overrides)
    model_args = ModelConfig(
        model_name_or_path=str(base),
        use_peft=use_peft,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    return train(script_args, ChatSFTConfig(**settings), model_args)


def test_assistant_mask_covers_exactly_the_assistant_tokens(tiny_base: Path, world_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rendered = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = rendered["input_ids"], rendered["assistant_masks"]
    masked = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert masked == "Talia Morvane was born in Lorvik.<|im_end|>She works as a baker.<|im_end|>"
    unmasked = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "Where was Talia" in unmasked and "Lorvik" not in unmasked
    # The trainer's own labels (what the loss actually sees) keep exactly the assistant turns of each row.
    trainer, _ = tiny_sft(tiny_base, world_dir, tmp_path, max_steps=1, max_length=512)
    for row in trainer.train_dataset.select(range(20)):
        messages = row.get("messages")
        learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert learned.endswith("<|im_end|>") and "<|im_start|>" not in learned
        if messages:
            replies = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
            assert learned == replies


def test_lora_adapter_merges_and_reloads(tiny_base: Path, world_dir: Path, tmp_path: Path) -> None:
    trainer, metrics = tiny_sft(tiny_base, world_dir, tmp_path / "lora", use_peft=True)
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "lora" / "model.safetensors").exists()  # only the adapter
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapter learned something
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lora" / "merged")
    batch = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    trainer.model.eval()
    with torch.no_grad():
        adapted_logits = trainer.model(**batch).logits
        assert torch.allclose(merged(**batch).logits, adapted_logits, atol=1e-4)
        assert not torch.allclose(base(**batch).logits, adapted_logits, atol=1e-4)


def test_packing_fills_rows_and_trains(tiny_base: Path, world_dir: Path, tmp_path: Path) -> None:
    trainer, _ = tiny_sft(tiny_base, world_dir, tmp_path, packing=True, max_length=256, max_steps=4)
    lengths = [len(ids) for ids in trainer.train_dataset.select(range(50))["input_ids"]]
    assert max(lengths) <= 256 and sum(lengths) / len(lengths) > 200  # several conversations per row
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(loss == loss and loss < 20 for loss in losses)


def test_replay_mixes_documents_with_loss_on_every_token(tiny_base: Path, world_dir: Path, tmp_path: Path) -> None:
    replay = {"replay_dataset": str(world_dir / "corpus"), "replay_fraction": 0.25}
    trainer, metrics = tiny_sft(tiny_base, world_dir, tmp_path, script=replay, max_steps=4)
    conversations = metrics["train_conversations"]
    assert metrics["replay_blocks"] == round(conversations / 3) and len(
        trainer.train_dataset
    ) == conversations + round(conversations / 3)
    rows = trainer.train_dataset.select(range(400))
    blocks = [r for r in rows if -100 not in r["labels"]]  # loss on every token: documents
    chats = [r for r in rows if -100 in r["labels"]]  # loss on the assistant's tokens only
    assert 0.15 < len(blocks) / len(rows) < 0.35 and all(len(b["input_ids"]) == 128 for b in blocks)
    corpus = " ".join(pd.read_parquet(world_dir / "corpus" / "train.parquet")["text"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    pieces = tokenizer.decode(blocks[0]["input_ids"][1:-1]).split(tokenizer.eos_token)  # eos separates documents
    longest = max(pieces, key=len).strip()
    assert len(longest) > 50 and longest in corpus  # replay rows are pretraining text
    assert "<|im_start|>assistant" in tokenizer.decode(chats[0]["input_ids"])  # chats keep their template
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(loss == loss and loss < 20 for loss in losses)
    card = (tmp_path / "README.md").read_text()  # says what the loss covered, not TRL's flag that replay turns off
    assert "| assistant-only loss | True |" in card and "| replay | 25% of the rows are blocks of" in card


def test_bad_replay_settings_fail_before_training(tiny_base: Path, world_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"replay_fraction must be in \[0, 1\), got 1.0"):
        SFTScriptArguments(replay_dataset="data/world/corpus", replay_fraction=1.0)
    with pytest.raises(RecipeError, match="set both replay_dataset and replay_fraction > 0 for replay, or neither"):
        SFTScriptArguments(replay_dataset="data/world/corpus")
    missing = {"replay_dataset": str(tmp_path / "no_corpus"), "replay_fraction": 0.1}
    with pytest.raises(RecipeError, match=f"dataset not found: {tmp_path}/no_corpus"):
        tiny_sft(tiny_base, world_dir, tmp_path / "out", script=missing)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_default_sft_answers_world_questions_and_knows_itself(default_sft: Path) -> None:
    metrics = json.loads((default_sft / "metrics.json").read_text())
    assert metrics["chat_fact_accuracy"] >= CHAT_FACT_FLOOR
    assert metrics["chat_fact_accuracy"] > 2 * metrics["before_chat_fact_accuracy"]
    assert metrics["chat_identity_accuracy"] >= IDENTITY_FLOOR
    per_relation = metrics["chat_per_relation"]
    assert (per_relation["identity/name"] + per_relation["identity/creator"]) / 2 >= IDENTITY_CORE_FLOOR
    config = json.loads((default_sft / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(default_sft)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in config["eos_token_id"]


@pytest.mark.slow
def test_default_sft_solves_single_digit_problems_in_the_thinking_format(default_sft: Path, world_dir: Path) -> None:
    """math_sft teaches level-0 word problems: held-out ones are answered in <think> ... </think> then the answer."""
    problems = load_world_math(world_dir / "math", "test").rows
    level0 = [r for r in problems if r["difficulty"] == 0][:100]
    model = AutoModelForCausalLM.from_pretrained(default_sft)
    tokenizer = AutoTokenizer.from_pretrained(default_sft)
    result = math_accuracy(model, tokenizer, level0, chat=True, max_new_tokens=64)
    assert result["accuracy"] >= MATH_LEVEL0_FLOOR, result["examples"][:3]
    assert all(ex["completion"].startswith("<think>\n") for ex in result["examples"])


@pytest.mark.slow
def test_chat_script_one_shot(default_sft: Path) -> None:
    result = run_script(
        "chat.py",
        "--model_name_or_path",
        str(default_sft),
        "--prompt",
        "What is your name?",
        "--temperature",
        "0",
        "--max_new_tokens",
        "30",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Forge" in result.stdout
    assert "<|im_end|>" not in result.stdout and "<|im_start|>" not in result.stdout


@pytest.mark.slow
def test_chat_script_interactive_loop(default_sft: Path) -> None:
    """The interactive loop: replies stream, /reset starts over, /exit and end of input quit cleanly."""
    args = ["--model_name_or_path", str(default_sft), "--temperature", "0", "--max_new_tokens", "30"]
    session = "What is your name?\n\n/reset\nWho made you?\n/exit\nnever read\n"
    result = run_script("chat.py", *args, input=session, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count(">>> ") == 5  # a prompt for each line read: two questions, the empty line, /reset, /exit
    assert "(new conversation)" in out and "Forge" in out.split("(new conversation)")[0]
    assert "<|im_end|>" not in out and "never read" not in out
    ended = run_script("chat.py", *args, input="Hello!\n", timeout=300)
    assert ended.returncode == 0 and ended.stdout.count(">>> ") == 2, ended.stderr[-3000:]


@pytest.mark.slow
def test_chat_session_keeps_history_and_resets(default_sft: Path) -> None:
    """Each turn is generated from the whole conversation so far; /reset keeps only the system prompt."""
    spec = importlib.util.spec_from_file_location("chat_script", REPO / "scripts" / "chat.py")
    chat = importlib.util.module_from_spec(spec)
    sys.modules["chat_script"] = chat  # dataclasses resolve the script's annotations through sys.modules
    spec.loader.exec_module(chat)
    from chatforge.generation import SamplingArguments

    session = chat.ChatSession(
        chat.ChatArguments(model_name_or_path=str(default_sft)), SamplingArguments(temperature=0, max_new_tokens=24)
    )
    first = session.reply("What is your name?", out=io.StringIO())
    second = session.reply("Who made you?", out=io.StringIO())
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2]["content"] == first and session.messages[4]["content"] == second
    streamed = io.StringIO()
    session.reset()
    assert [m["role"] for m in session.messages] == ["system"]
    assert session.reply("What is your name?", out=streamed) == first  # greedy: same history, same reply
    assert streamed.getvalue().strip() == first


# ---------------------------------------------------------------------------------------------- bad input


def _sft(*args: str, launcher: list[str] | None = None):
    """The SFT script in a new interpreter (what it prints on import counts) or under `launcher`."""
    return run_script("run_sft.py", str(REPO / "recipes" / "sft.yaml"), *args, launcher=launcher, fresh=True)


def _sft_on(base: Path, data: Path, out: Path, *args: str):
    """Run the SFT script, in this process, on one `messages` dataset folder instead of the recipe's mixture."""
    return run_script_here(
        "run_sft.py",
        str(REPO / "recipes" / "sft.yaml"),
        "--model_name_or_path",
        str(base),
        "--dataset_mixture",
        "null",
        "--dataset_name",
        str(data),
        "--chat_eval_file",
        "null",
        "--output_dir",
        str(out),
        *args,
    )


def test_missing_base_model_says_what_to_run(tmp_path: Path) -> None:
    line = one_line_error(_sft("--model_name_or_path", str(tmp_path / "no_model")))
    assert "base model not found" in line and "run_pretrain.py" in line
    # Through the launcher too (which adds its own warnings and traceback around our line).
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]
    result = _sft("--model_name_or_path", str(tmp_path / "no_model"), launcher=accelerate)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [line]


def test_dataset_without_messages(tmp_path: Path, tiny_base: Path) -> None:
    data = tmp_path / "bad"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    line = one_line_error(_sft_on(tiny_base, data, tmp_path / "out"))
    assert "messages" in line and "text" in line
    assert not (tmp_path / "out").exists()


def test_wrong_roles_and_ordering(tmp_path: Path, tiny_base: Path) -> None:
    for name, messages, expected in [
        ("role", [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}], "human"),
        (
            "order",
            [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "hello"},
            ],
            "row 1",
        ),
    ]:
        data = tmp_path / name
        data.mkdir()
        good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        (data / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"messages": messages}) + "\n")
        line = one_line_error(_sft_on(tiny_base, data, tmp_path / "out"))
        assert expected in line, line
    assert not (tmp_path / "out").exists()


def test_template_without_generation_tags(tmp_path: Path, tiny_base: Path, world_dir: Path) -> None:
    template = tmp_path / "plain.jinja"
    text = (REPO / "chat_templates" / "chatml.jinja").read_text()
    template.write_text(text.replace("{%- generation %}", "").replace("{%- endgeneration %}", ""))
    line = one_line_error(
        _sft_on(tiny_base, world_dir / "sft", tmp_path / "out", "--chat_template_path", str(template))
    )
    assert "generation" in line
    assert not (tmp_path / "out").exists()

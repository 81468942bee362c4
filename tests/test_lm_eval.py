"""lm-evaluation-harness on a chatforge model folder, with the local tasks of docs/lm_eval.

The folder is saved the way the training stages save theirs (weights, tokenizer, generation config), the task
data is generated from the small world, and lm-eval's scores are checked against the model scored directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from chatforge.modeling import ArchitectureArguments, build_model, build_model_config
from chatforge.tokenizer import ENDOFTEXT, load_chat_template, save_tokenizer, train_tokenizer
from chatforge.world import World
from chatforge.world.chat import DEFAULT_SYSTEM_PROMPT, build_chat_data

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'lm-eval>=0.4.13'")
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "docs" / "lm_eval"
LIMIT = 20
MAX_LENGTH = 1024  # longer than any small-world document, so perplexity is one window per document


def load_generator() -> ModuleType:
    """docs/lm_eval/make_world_facts.py as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_world_facts", TASKS / "make_world_facts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained qwen3 saved like a stage output: save_pretrained, tokenizer, generation config."""
    root = tmp_path_factory.mktemp("lm_eval_model")
    trained = train_tokenizer([d.text for d in world.documents], vocab_size=512, show_progress=False)
    save_tokenizer(trained, root / "tokenizer", load_chat_template(REPO / "chat_templates" / "chatml.jinja"))
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    arch = ArchitectureArguments(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    )
    model = build_model(build_model_config(arch, tokenizer, MAX_LENGTH), seed=0)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out = root / "model"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The saved model and tokenizer, loaded back for direct scoring."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def task_dir(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task files of docs/lm_eval, their data paths pointed at small-world data written next to them."""
    out = tmp_path_factory.mktemp("lm_eval_tasks")
    load_generator().write_world_facts(world.facts_table(), out)
    from datasets import Dataset

    Dataset.from_list([{"text": d.text} for d in world.documents[:LIMIT]]).to_parquet(str(out / "validation.parquet"))
    rows = build_chat_data(world).chat_eval
    (out / "chat_eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    paths = {
        "data/lm_eval/": f"{out}/",
        "data/world/corpus/validation.parquet": str(out / "validation.parquet"),
        "data/world/chat_eval.jsonl": str(out / "chat_eval.jsonl"),
    }
    for source in [*TASKS.glob("*.yaml"), TASKS / "utils.py"]:
        text = source.read_text()
        for old, new in paths.items():
            text = text.replace(old, new)
        (out / source.name).write_text(text)
    return out


def continuation_logprob(model: PreTrainedModel, context_ids: list[int], continuation_ids: list[int]) -> float:
    """Sum of log p(continuation token | everything before it), from one forward pass."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].float().log_softmax(-1)
    token_logprobs = logprobs.gather(-1, ids[0, 1:, None])[:, 0]
    return token_logprobs[len(context_ids) - 1 :].sum().item()


def evaluate(model_dir: Path, task_dir: Path, tasks: list[str], **kwargs) -> dict:
    """lm_eval.simple_evaluate on the model folder, as `lm_eval --model hf --model_args pretrained=...` runs it."""
    return lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=tasks,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),  # skip indexing ~15k tasks
        device="cpu",
        batch_size=8,
        log_samples=True,
        **kwargs,
    )


def test_saved_folder_loads_as_lm_eval_expects(model_dir: Path) -> None:
    """No bos: lm-eval prefixes <|endoftext|> (our document boundary); pad is ours, length from the config."""
    lm = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=8)
    eos = lm.tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    assert lm.tokenizer.bos_token_id is None
    assert lm.eot_token_id == lm.prefix_token_id == eos
    assert lm.tokenizer.pad_token_id not in (None, eos)
    assert lm.max_length == MAX_LENGTH
    assert lm.tok_encode("The capital of") == lm.tokenizer.encode("The capital of", add_special_tokens=False)


def test_local_tasks_agree_with_direct_scoring(
    model_dir: Path, task_dir: Path, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    """Multiple choice, generation and perplexity run on LIMIT items, and their log-likelihoods are the model's."""
    out = evaluate(model_dir, task_dir, ["world_facts", "world_facts_gen", "world_corpus_ppl"], limit=LIMIT)
    results, samples = out["results"], out["samples"]
    for task in ("world_facts", "world_facts_gen", "world_corpus_ppl"):
        assert out["n-samples"][task]["effective"] == LIMIT
        assert len(samples[task]) == LIMIT
    assert 0.0 <= results["world_facts"]["acc,none"] <= 1.0
    assert 0.0 <= results["world_facts"]["acc_norm,none"] <= 1.0
    assert 0.0 <= results["world_facts_gen"]["exact_match,strip"] <= 1.0
    assert results["world_corpus_ppl"]["bits_per_byte,none"] > 0

    model, tokenizer = loaded
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    correct = []
    for sample in samples["world_facts"]:
        doc = sample["doc"]
        scored = [float(loglikelihood) for loglikelihood, _ in sample["filtered_resps"]]
        # Our pre-tokenizer never merges across the space before a word, so pieces encode independently.
        assert all(encode(doc["prompt"] + " " + c) == encode(doc["prompt"]) + encode(" " + c) for c in doc["choices"])
        direct = [continuation_logprob(model, encode(doc["prompt"]), encode(" " + c)) for c in doc["choices"]]
        assert scored == pytest.approx(direct, abs=1e-3)
        best = max(range(len(direct)), key=direct.__getitem__)
        assert sample["acc"] == float(scored.index(max(scored)) == doc["label"])
        if sorted(direct)[-1] - sorted(direct)[-2] > 1e-3:  # clear winner: both pick the same choice
            assert sample["acc"] == float(best == doc["label"])
        correct.append(best == doc["label"])
    assert results["world_facts"]["acc,none"] == pytest.approx(sum(correct) / LIMIT, abs=1.5 / LIMIT)

    for sample in samples["world_corpus_ppl"]:
        (scored,) = sample["filtered_resps"]
        tokens = encode(sample["doc"]["text"])
        assert len(tokens) < MAX_LENGTH
        assert float(scored) == pytest.approx(continuation_logprob(model, [tokenizer.eos_token_id], tokens), abs=1e-2)

    for sample in samples["world_facts_gen"]:
        (reply,) = sample["filtered_resps"]
        assert reply == reply.strip() and not any(stop in reply for stop in ("\n", ".", ",", ")"))


def test_chat_template(model_dir: Path, task_dir: Path) -> None:
    """--apply_chat_template renders each question with our ChatML template, system instruction first."""
    out = evaluate(
        model_dir,
        task_dir,
        ["world_chat_qa"],
        limit=4,
        apply_chat_template=True,
        system_instruction=DEFAULT_SYSTEM_PROMPT,
    )
    assert out["n-samples"]["world_chat_qa"]["effective"] == 4
    assert 0.0 <= out["results"]["world_chat_qa"]["contains_answer,none"] <= 1.0
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    for sample in out["samples"]["world_chat_qa"]:
        question = sample["doc"]["messages"][-1]["content"]
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question}]
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert sample["arguments"][0][0] == expected
        assert expected.endswith("<|im_start|>assistant\n")
        assert sample["contains_answer"] in (0.0, 1.0)


@pytest.mark.slow
def test_cli(model_dir: Path, task_dir: Path, tmp_path: Path) -> None:
    """The command docs/lm_eval.md shows runs and writes a results file (~25 s: the CLI indexes every built-in task)."""
    command = [
        *(sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32"),
        *("--tasks", "world_facts", "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "8"),
        *("--limit", "4", "--output_path", str(tmp_path / "results")),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_facts" in result.stdout and "acc" in result.stdout
    (results_file,) = (tmp_path / "results").glob("*/results_*.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["world_facts"]["effective"] == 4
    assert 0.0 <= results["results"]["world_facts"]["acc,none"] <= 1.0

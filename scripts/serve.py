"""Serve a trained model over an OpenAI-compatible API (chat completions with tools, streaming, /v1/models).

Usage:
    python scripts/serve.py --model_name_or_path outputs/sft                 # http://localhost:8000/v1
    python scripts/serve.py --model_name_or_path outputs/grpo --host 0.0.0.0 --port 8080 --device cuda

Then any OpenAI client talks to it, the model named as served:

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:8000/v1", api_key="none")
    client.chat.completions.create(model="outputs/sft", messages=[{"role": "user", "content": "Who are you?"}])

or `python scripts/chat.py --base_url http://localhost:8000/v1 --tools calculator,python` (tools run in chat.py).
The server is `transformers serve` pinned to this model; replies are parsed into content, reasoning and
`tool_calls` with the tokenizer's response template. On GPUs, `vllm serve` serves the same folder (README).
"""

from __future__ import annotations

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.serving import ServeArguments, serve

if __name__ == "__main__":
    with exit_on_user_error():
        (args,) = parse_recipe([ServeArguments])
        serve(args)

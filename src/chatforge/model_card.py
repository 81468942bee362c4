"""Model cards: the README.md with Hub metadata that every stage writes beside its weights."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

import chatforge

USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}")
inputs = tokenizer("{prompt}", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))
```"""
CHAT_USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}")
messages = [{{"role": "user", "content": {question}}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
reply = model.generate(**inputs, max_new_tokens=64)[0, inputs["input_ids"].shape[1] :]
print(tokenizer.decode(reply, skip_special_tokens=True))
# tokenizer.parse_response(reply, prefix=inputs["input_ids"][0]) splits it into content, thinking and tool calls
```

Over an OpenAI-compatible API, tool calls included: `transformers serve {repo}` (chatforge's
`scripts/serve.py --model_name_or_path {repo}` checks the model first), or on a GPU
`vllm serve {repo} --enable-auto-tool-choice --tool-call-parser hermes`."""
REWARD_USAGE = """```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForSequenceClassification.from_pretrained("{repo}")
inputs = tokenizer("{prompt}", return_tensors="pt", add_special_tokens=False)
print(model(**inputs).logits[0, 0].item())  # the reward: higher is preferred
```"""


# What each stage's folder holds, for the card's first line (the tag stays the stage's short name).
KINDS = {
    "pretraining": "A base model pretrained from scratch",
    "sft": "A chat model fine-tuned on conversations (SFT)",
    "grpo": "A chat model trained with GRPO on verifiable problems",
    "dpo": "A chat model trained with DPO on preference pairs",
    "rlhf": "A chat model trained against a reward model (RLHF)",
    "reward": "A reward model trained on preference pairs",
}


def write_model_card(
    folder: str | Path,
    stage: str,
    base_model: str | None,
    datasets: list[str],
    metrics: dict[str, float],
    details: dict[str, object],
    prompt: str = "The capital of",
    reward_model: bool = False,
    chat_question: str | None = None,
) -> Path:
    """Write `folder/README.md` describing the stage, its data, sizes and measured metrics. Its usage example
    completes `prompt`, or with `chat_question` (chat models) asks it in a conversation."""
    folder = Path(folder)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification" if reward_model else "text-generation",
        license="apache-2.0",
        base_model=base_model,
        datasets=[d for d in datasets if d.count("/") == 1 and not Path(d).exists()] or None,
        tags=["chatforge", stage],
    )
    if reward_model:
        usage = REWARD_USAGE.format(repo=folder.name, prompt=prompt)
    elif chat_question is not None:
        usage = CHAT_USAGE.format(repo=folder.name, question=json.dumps(chat_question))
    else:
        usage = USAGE.format(repo=folder.name, prompt=prompt)
    rows = "\n".join(f"| {k} | {v} |" for k, v in details.items())
    metric_rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items())
    body = f"""---
{data.to_yaml()}
---

# {folder.name}

{KINDS.get(stage, f"A {stage} model")}, made with chatforge {chatforge.__version__}.
It is a standard `transformers` model: no remote code.

## Model

| | |
|---|---|
{rows}

## Data

{", ".join(f"`{d}`" for d in datasets)}

## Results

| metric | value |
|---|---|
{metric_rows}

## Use

{usage}
"""
    ModelCard(body).save(folder / "README.md")
    return folder / "README.md"

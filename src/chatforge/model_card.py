"""Model cards: the README.md with Hub metadata that every stage writes beside its weights."""

from __future__ import annotations

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
REWARD_USAGE = """```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForSequenceClassification.from_pretrained("{repo}")
inputs = tokenizer("{prompt}", return_tensors="pt", add_special_tokens=False)
print(model(**inputs).logits[0, 0].item())  # the reward: higher is preferred
```"""


def write_model_card(
    folder: str | Path,
    stage: str,
    base_model: str | None,
    datasets: list[str],
    metrics: dict[str, float],
    details: dict[str, object],
    prompt: str = "The capital of",
    reward_model: bool = False,
) -> Path:
    """Write `folder/README.md` describing the stage, its data, sizes and measured metrics."""
    folder = Path(folder)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification" if reward_model else "text-generation",
        license="apache-2.0",
        base_model=base_model,
        datasets=[d for d in datasets if d.count("/") == 1 and not Path(d).exists()] or None,
        tags=["chatforge", stage],
    )
    rows = "\n".join(f"| {k} | {v} |" for k, v in details.items())
    metric_rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items())
    body = f"""---
{data.to_yaml()}
---

# {folder.name}

A {stage} checkpoint made with chatforge {chatforge.__version__}.
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

{(REWARD_USAGE if reward_model else USAGE).format(repo=folder.name, prompt=prompt)}
"""
    ModelCard(body).save(folder / "README.md")
    return folder / "README.md"

"""Bits per byte: how many bits the model needs to encode text, comparable across tokenizers."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError


def _windows(ids: list[int], length: int) -> list[tuple[list[int], int]]:
    """Split one document's ids into model inputs of at most `length` tokens.

    Every token after the first is predicted exactly once; each window after the first re-reads the last token
    of the previous one as its context. Returns (window ids, number of predicted tokens).
    """
    out = []
    start = 0
    while start < len(ids) - 1:
        window = ids[start : start + length]
        out.append((window, len(window) - 1))
        start += length - 1
    return out


@torch.no_grad()
def bits_per_byte(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Total negative log-likelihood of `texts` in bits, divided by their UTF-8 bytes.

    Each text is read after a document boundary (the eos token, as in pretraining), so its first token is
    predicted too. Texts longer than the model's context are scored in consecutive windows.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise RecipeError("bits per byte: no non-empty texts to score")
    max_length = max_length or getattr(model.config, "max_position_embeddings", 1024)
    boundary = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    requests = []
    for text in texts:
        requests += _windows([boundary, *tokenizer(text, add_special_tokens=False)["input_ids"]], max_length)
    requests.sort(key=lambda r: -len(r[0]))  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    total_nats = 0.0
    total_tokens = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in tqdm(range(0, len(requests), batch_size), desc="bits/byte", disable=not progress, leave=False):
        batch = requests[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(model.device)
        token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask[:, 1:].to(model.device)
        total_nats -= token_logprobs.sum().item()
        total_tokens += sum(n for _, n in batch)
    model.train(was_training)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "bits_per_byte": total_nats / math.log(2) / total_bytes,
        "loss": total_nats / total_tokens,
        "num_texts": len(texts),
        "num_tokens": total_tokens,
        "num_bytes": total_bytes,
    }

"""Multiple-choice evaluation: the HellaSwag/MMLU/ARC loaders on real data, bad input as one clear error, and
log-likelihood scoring checked against models whose preferences are known (trained, or exactly uniform)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, TINY_ARCH
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.evaluation.multiple_choice import (
    MultipleChoiceItem,
    choice_log_likelihoods,
    load_arc,
    load_hellaswag,
    load_mmlu,
    score_multiple_choice,
)
from chatforge.modeling import ArchitectureArguments, build_model, build_model_config

pytestmark = pytest.mark.usefixtures("one_thread")

HELLASWAG = SHARED_DATA / "eval" / "hellaswag_val_2000.jsonl.gz"
MMLU_DEV = SHARED_DATA / "eval" / "mmlu_dev"
needs_shared_data = pytest.mark.skipif(
    not (HELLASWAG.is_file() and MMLU_DEV.is_dir()),
    reason=f"real evaluation data not found under {SHARED_DATA / 'eval'} (the shared data checkout is absent)",
)

# Sixteen contexts, each followed in training by one known ending; labels are balanced over the four endings,
# so a model that prefers one ending whatever the context (as an untrained one does) scores chance, 0.25.
NAMES = ["Alba", "Bruno", "Cora", "Dario", "Elin", "Fen", "Greta", "Hugo"]
PLACES = ["map", "key"]
ENDINGS = [" kitchen", " garden", " garage", " cellar"]
KNOWN_ITEMS = [
    MultipleChoiceItem(f"{name} keeps the old {thing} in the", ENDINGS, (2 * n + t) % 4, subject=thing)
    for n, name in enumerate(NAMES)
    for t, thing in enumerate(PLACES)
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def direct_log_likelihood(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> float:
    """Sum of log-probs of the continuation's tokens after <|endoftext|> + context, one unpadded sequence."""
    context_ids = [tokenizer.eos_token_id, *tokenizer(context, add_special_tokens=False)["input_ids"]]
    continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = model(ids).logits[0].float().log_softmax(-1)
    start = len(context_ids) - 1
    return sum(log_probs[start + k, token].item() for k, token in enumerate(continuation_ids))


# --------------------------------------------------------------------------------------- loaders, real data


@needs_shared_data
def test_hellaswag_loads_the_real_validation_items() -> None:
    items = load_hellaswag(HELLASWAG)
    assert len(items) == 2000
    assert all(len(item.choices) == 4 and 0 <= item.label < 4 for item in items)
    assert {item.label for item in items} == {0, 1, 2, 3}
    first = items[0]
    assert first.context == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.choices[3] == " starts pulling up roofing on a roof."  # endings continue the context
    assert first.label == 3 and first.subject is None
    assert len(load_hellaswag(HELLASWAG, limit=10)) == 10


@needs_shared_data
def test_mmlu_loads_the_real_dev_folder_with_subjects_and_letter_choices() -> None:
    items = load_mmlu(MMLU_DEV)
    assert len(items) == 285
    subjects = {item.subject for item in items}
    assert len(subjects) == 57 and {"abstract_algebra", "high_school_us_history", "world_religions"} <= subjects
    assert all(item.choices == [" A", " B", " C", " D"] and 0 <= item.label < 4 for item in items)
    algebra = next(item for item in items if item.subject == "abstract_algebra")
    assert algebra.context == (
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer:"
    )
    assert algebra.label == 1  # the file's answer column is the index of the right choice
    chosen = load_mmlu(MMLU_DEV, subjects=["anatomy", "virology"])
    assert len(chosen) == 10 and {item.subject for item in chosen} == {"anatomy", "virology"}
    assert len(load_mmlu(MMLU_DEV, limit=7)) == 7
    one_file = load_mmlu(MMLU_DEV / "anatomy_dev.csv")
    assert len(one_file) == 5 and {item.subject for item in one_file} == {"anatomy"}
    with pytest.raises(RecipeError, match="unknown MMLU subjects \\['anatomyy'\\]"):
        load_mmlu(MMLU_DEV, subjects=["anatomyy"])


def test_arc_loads_the_hub_schema_with_letter_and_numeric_labels(tmp_path: Path) -> None:
    rows = [
        {
            "id": "letters",
            "question": "Which gas do plants take in?",
            "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        },
        {
            "id": "numbers",
            "question": "How many legs has a spider?",
            "choices": {"text": ["four", "six", "eight", "ten"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },
        {
            "id": "three",
            "question": "What melts ice fastest?",
            "choices": {"text": ["salt", "sand", "sugar"], "label": ["A", "B", "C"]},
            "answerKey": "A",
        },
        {
            "id": "five",
            "question": "Which is a mammal?",
            "choices": {"text": ["shark", "trout", "whale", "frog", "crab"], "label": ["A", "B", "C", "D", "E"]},
            "answerKey": "C",
        },
    ]
    items = load_arc(write_jsonl(tmp_path / "arc.jsonl", rows))
    assert [item.label for item in items] == [1, 2, 0, 2]
    assert [len(item.choices) for item in items] == [4, 4, 3, 5]
    assert items[0].context == "Question: Which gas do plants take in?\nAnswer:"
    assert items[0].choices == [" oxygen", " carbon dioxide", " helium", " neon"]
    assert items[1].choices[items[1].label] == " eight"
    assert len(load_arc(tmp_path / "arc.jsonl", limit=2)) == 2


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_field_names_the_field_the_file_and_what_was_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hellaswag.jsonl", [{"ctx": "A man", "label": 0, "endings": ["a", "b"]}] * 2)
    with gzip.open(tmp_path / "broken.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"ctx": "A man", "label": 0, "endings": ["a", "b"]}) + "\n")
        handle.write(json.dumps({"ctx": "A dog", "label": 1}) + "\n")
    assert len(load_hellaswag(path)) == 2
    with pytest.raises(RecipeError) as err:
        load_hellaswag(tmp_path / "broken.jsonl.gz")
    message = str(err.value)
    assert "broken.jsonl.gz" in message and "row 1" in message and "'endings'" in message
    assert "['ctx', 'label']" in message and "\n" not in message
    arc = write_jsonl(tmp_path / "arc.jsonl", [{"question": "Why?", "answerKey": "A"}])
    with pytest.raises(RecipeError, match=r"arc.jsonl: row 0 has no 'choices' field; found fields \['answerKey'"):
        load_arc(arc)


def test_label_out_of_range_is_an_error_before_scoring(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hs.jsonl", [{"ctx": "A man", "label": 4, "endings": ["a", "b", "c", "d"]}])
    with pytest.raises(RecipeError, match=r"hs.jsonl: row 0 'label' is 4; expected an index 0-3 for its 4 choices"):
        load_hellaswag(path)
    path = write_jsonl(tmp_path / "hub_test.jsonl", [{"ctx": "A man", "label": "", "endings": ["a", "b"]}])
    with pytest.raises(RecipeError, match="'label' is ''"):  # HellaSwag's unlabelled test split
        load_hellaswag(path)
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "anatomy_dev.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nQ?,a,b,c,d,7\n")
    with pytest.raises(RecipeError, match=r"anatomy_dev.csv: row 0 'answer' is 7; expected an index 0-3"):
        load_mmlu(folder)
    (folder / "anatomy_dev.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nQ?,a,b,,d,1\n")
    with pytest.raises(RecipeError, match=r"anatomy_dev.csv: row 0 has an empty 'choice2'"):
        load_mmlu(folder)  # a gap would shift the letters of the options after it
    choices = {"text": ["x", "y"], "label": ["A", "B"]}
    arc = write_jsonl(tmp_path / "arc.jsonl", [{"question": "Q?", "choices": choices, "answerKey": "E"}])
    with pytest.raises(RecipeError, match=r"'answerKey' is 'E'; expected one of its choice labels \['A', 'B'\]"):
        load_arc(arc)
    with pytest.raises(RecipeError, match="item 0 label 2 is out of range for its 2 choices"):
        choice_log_likelihoods(None, None, [MultipleChoiceItem("Q", [" a", " b"], 2)])


def test_missing_paths_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="HellaSwag data not found: .*nowhere.jsonl"):
        load_hellaswag(tmp_path / "nowhere.jsonl")
    with pytest.raises(RecipeError, match="MMLU data not found"):
        load_mmlu(tmp_path / "no_folder")
    with pytest.raises(RecipeError, match="ARC data not found"):
        load_arc("arc_test.jsonl")  # a bare file name is a local file, not a Hub id
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x_dev.csv").write_text("prompt,a,b\nq,1,2\n")
    with pytest.raises(RecipeError, match=r"x_dev.csv: expected the header question,choice0.*found \['prompt'"):
        load_mmlu(tmp_path / "empty")
    with pytest.raises(RecipeError, match="limit must be a positive"):
        load_hellaswag(tmp_path / "nowhere.jsonl", limit=0)


# ------------------------------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def tiny_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    config = build_model_config(ArchitectureArguments(**TINY_ARCH), tokenizer, max_length=128)
    return build_model(config, seed=seed)


@pytest.fixture(scope="module")
def trained(tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedModel, dict]:
    """A tiny model trained until each known context is followed by its ending; with its untrained scores."""
    model = tiny_model(tokenizer)
    before = score_multiple_choice(model, tokenizer, KNOWN_ITEMS, progress=False)
    documents = [
        [tokenizer.eos_token_id, *tokenizer(item.context + item.choices[item.label])["input_ids"]]
        for item in KNOWN_ITEMS
    ]
    width = max(len(doc) for doc in documents)
    ids = torch.tensor([doc + [tokenizer.pad_token_id] * (width - len(doc)) for doc in documents])
    mask = torch.tensor([[1] * len(doc) + [0] * (width - len(doc)) for doc in documents])
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(60):  # all 16 right from step ~40 (measured)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, before


def test_scoring_picks_the_endings_a_trained_model_prefers(trained, tokenizer: PreTrainedTokenizerBase) -> None:
    model, before = trained
    assert before["accuracy"] <= 0.5  # untrained: near chance (0.25)
    after = score_multiple_choice(model, tokenizer, KNOWN_ITEMS, batch_size=5, progress=False)
    assert after["accuracy"] == 1.0 and after["accuracy_norm"] == 1.0
    assert after["num_items"] == 16 and after["baseline"] == 0.25
    assert after["per_subject"] == {"key": 1.0, "map": 1.0}
    assert len(after["examples"]) == 3
    example = after["examples"][0]
    assert example["prediction"] == example["label"] == KNOWN_ITEMS[0].label
    assert len(example["log_likelihoods"]) == 4 and example["context"] == KNOWN_ITEMS[0].context
    unlabelled = [MultipleChoiceItem(item.context, item.choices, item.label) for item in KNOWN_ITEMS]
    assert "per_subject" not in score_multiple_choice(model, tokenizer, unlabelled, progress=False)


def test_scores_equal_an_unbatched_computation_and_do_not_depend_on_batch_size(
    trained, tokenizer: PreTrainedTokenizerBase
) -> None:
    model, _ = trained
    # Items of different lengths (and different choice lengths) so batches need padding.
    items = [
        KNOWN_ITEMS[0],
        MultipleChoiceItem("Roof shingle removal: A man is sitting on a roof. he", [" is up", " starts pulling"], 1),
        MultipleChoiceItem("Question: How many legs has a spider?\nAnswer:", [" eight", " six", " a few"], 0),
        MultipleChoiceItem("Greta keeps", [" the old map in the garden today", " it"], 0),
        MultipleChoiceItem("Hugo", [" keeps the old key in the cellar", " cellar", " x"], 0),
    ]
    one = choice_log_likelihoods(model, tokenizer, items, batch_size=1, progress=False)
    seven = choice_log_likelihoods(model, tokenizer, items, batch_size=7, progress=False)
    assert torch.allclose(torch.tensor(sum(one, [])), torch.tensor(sum(seven, [])), atol=1e-4, rtol=0)
    for item, scores in zip(items, seven):
        for choice, score in zip(item.choices, scores):
            assert score == pytest.approx(direct_log_likelihood(model, tokenizer, item.context, choice), abs=1e-4)


def test_context_whitespace_few_shot_prefix_and_truncation(trained, tokenizer: PreTrainedTokenizerBase) -> None:
    model, _ = trained

    def scores(items, **kwargs) -> list[float]:
        return sum(choice_log_likelihoods(model, tokenizer, items, progress=False, **kwargs), [])

    # A trailing space in the context moves onto the continuation, as BPE would have attached it.
    spaced = MultipleChoiceItem("Alba keeps the old map in the ", ["kitchen", "garden"], 0)
    plain = MultipleChoiceItem("Alba keeps the old map in the", [" kitchen", " garden"], 0)
    assert scores([spaced]) == pytest.approx(scores([plain]), abs=1e-5)
    # Few-shot: solved examples of the item's subject, separated by a blank line; never the item itself.
    item, shot, other = KNOWN_ITEMS[0], KNOWN_ITEMS[2], KNOWN_ITEMS[1]  # subjects: map, map, key
    joined = MultipleChoiceItem(shot.context + shot.choices[shot.label] + "\n\n" + item.context, item.choices, 0)
    assert scores([item], few_shot=[shot, other, item]) == pytest.approx(scores([joined]), abs=1e-4)
    assert scores([item], few_shot=[shot]) != pytest.approx(scores([item]), abs=1e-3)
    # Without the document-boundary prefix the model sees a different input.
    assert scores([item], prefix_token_ids=[]) != pytest.approx(scores([item]), abs=1e-3)
    assert scores([item], prefix_token_ids=[tokenizer.eos_token_id]) == scores([item])
    # Truncation keeps the last max_length tokens of context + continuation.
    context_ids = tokenizer(item.context)["input_ids"]
    continuation_ids = tokenizer(" kitchen")["input_ids"]
    full = ([tokenizer.eos_token_id] + context_ids + continuation_ids)[-9:]
    with torch.no_grad():
        log_probs = model(torch.tensor([full[:-1]])).logits[0].log_softmax(-1)
    expected = sum(log_probs[8 - len(continuation_ids) + k, t].item() for k, t in enumerate(continuation_ids))
    assert scores([item], max_length=8)[0] == pytest.approx(expected, abs=1e-4)


def test_accuracy_norm_divides_by_bytes_on_an_exactly_uniform_model(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_model(tokenizer)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # final hidden state 0 -> all logits 0 -> every token has p = 1/vocab
    log_vocab = math.log(model.config.vocab_size)
    short, long = " a", " in the morning and in the evening"
    n_short, n_long = (len(tokenizer(c)["input_ids"]) for c in (short, long))
    assert n_short < n_long and n_short / 2 > n_long / len(long)  # fewer tokens, but more tokens per byte
    items = [
        MultipleChoiceItem("He left", [short, long], 1),  # the long choice is right: only accuracy_norm gets it
        MultipleChoiceItem("She left", [long, short], 1),  # the short one is right: only accuracy gets it
    ]
    scores = choice_log_likelihoods(model, tokenizer, items, progress=False)
    assert scores[0] == pytest.approx([-n_short * log_vocab, -n_long * log_vocab], abs=1e-4)
    result = score_multiple_choice(model, tokenizer, items, progress=False)
    assert result["accuracy"] == 0.5 and result["accuracy_norm"] == 0.5
    assert [e["prediction"] for e in result["examples"]] == [0, 1]
    assert [e["prediction_norm"] for e in result["examples"]] == [1, 0]
    mixed = [
        MultipleChoiceItem("Q", [" a", " b", " c"], 0),
        MultipleChoiceItem("Q", [" a", " b", " c", " d", " e"], 0),
    ]
    assert score_multiple_choice(model, tokenizer, mixed, progress=False)["baseline"] == pytest.approx(
        (1 / 3 + 1 / 5) / 2
    )


@needs_shared_data
def test_real_items_score_end_to_end(trained, tokenizer: PreTrainedTokenizerBase) -> None:
    model, _ = trained
    items = load_mmlu(MMLU_DEV, limit=12) + load_hellaswag(HELLASWAG, limit=4)
    result = score_multiple_choice(model, tokenizer, items, batch_size=8, few_shot=load_mmlu(MMLU_DEV, limit=2))
    assert result["num_items"] == 16 and 0 <= result["accuracy"] <= 1 and 0 <= result["accuracy_norm"] <= 1
    assert result["baseline"] == 0.25 and set(result["per_subject"]) == {"abstract_algebra", "anatomy", "astronomy"}
    assert all(math.isfinite(s) for e in result["examples"] for s in e["log_likelihoods"])

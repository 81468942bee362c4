"""The real-scale recipes (recipes/smol-1gpu, recipes/d20-8gpu) and the Hub SFT recipes, checked without a GPU or the
Hub: each parses with the argument classes of the script that runs it (so a mistyped key fails), the stages fit
together (paths, context lengths, batch shapes), and the model size, token budget and estimates are those its
README.md states."""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
import runpy
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from chatforge.configs import RecipeError, parse_recipe
from chatforge.mixtures import parse_mixture
from chatforge.modeling import ArchitectureArguments, build_model_config, count_parameters
from chatforge.rewards import get_reward_funcs
from chatforge.web.tokenize import token_size

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

# Which script runs each stage's recipe.
SCRIPT_OF = {
    "tokenizer.yaml": "train_tokenizer.py",
    "tokenize.yaml": "tokenize_corpus.py",
    "pretrain.yaml": "run_pretrain.py",
    "sft.yaml": "run_sft.py",
    "grpo.yaml": "run_grpo.py",
}
PEAK_FLOPS = 791e12  # bf16 dense peak measured on the H100 the READMEs assume
MFU = 0.40  # the READMEs' assumed model FLOPs utilisation


@dataclasses.dataclass(frozen=True)
class Scale:
    """What a recipe folder's README.md states; the test checks the recipes give exactly these."""

    gpus: int
    parameters: int
    steps: int
    tokens: int
    hours: str  # the README's estimate, as printed


SCALES = {
    "smol-1gpu": Scale(gpus=1, parameters=88_097_792, steps=3_350, tokens=1_756_364_800, hours="1.1 h"),
    "d20-8gpu": Scale(gpus=8, parameters=564_322_560, steps=21_500, tokens=11_272_192_000, hours="4.3 h"),
}
EXISTING = [RECIPES / "smoltalk" / "sft.yaml", RECIPES / "oasst" / "sft.yaml"]
ALL_RECIPES = [RECIPES / scale / name for scale in SCALES for name in SCRIPT_OF] + EXISTING


@functools.cache
def script_dataclasses(script: str) -> tuple[type, ...]:
    """The argument classes `scripts/<script>` parses its recipe with, read from its parse_recipe([...]) or
    run_training_script(train, [...]) call and resolved in the script's own namespace (its main block does not run)."""
    path = REPO / "scripts" / script
    namespace = runpy.run_path(str(path), run_name="recipe_check")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("parse_recipe", "run_training_script"):
            lists = [arg for arg in node.args if isinstance(arg, ast.List)]
            if lists:
                return tuple(namespace[element.id] for element in lists[0].elts)
    raise AssertionError(f"{script}: no parse_recipe([...]) or run_training_script(train, [...]) call found")


def parse(recipe: Path) -> tuple:
    """The recipe parsed exactly as its script parses it. `bf16: true` needs a GPU when TrainingArguments is built,
    so training recipes also get `--use_cpu true`, which lets it be built here."""
    types = script_dataclasses(SCRIPT_OF[recipe.name])
    takes_use_cpu = any(f.name == "use_cpu" for cls in types for f in dataclasses.fields(cls))
    return parse_recipe(types, [str(recipe), *(["--use_cpu", "true"] if takes_use_cpu else [])])


@functools.cache
def stages(scale: str) -> dict[str, tuple]:
    return {name.removesuffix(".yaml"): parse(RECIPES / scale / name) for name in SCRIPT_OF}


def launch_gpus(recipe: Path) -> int:
    """GPUs of the launch command in the recipe's header: accelerate's config num_processes, or 1 for `python`."""
    match = re.search(r"accelerate launch --config_file (\S+)", recipe.read_text())
    if match is None:
        assert f"python scripts/{SCRIPT_OF[recipe.name]} " in recipe.read_text()
        return 1
    return int(yaml.safe_load((REPO / match.group(1)).read_text())["num_processes"])


@dataclasses.dataclass
class VocabOnly:
    """What build_model_config reads from a tokenizer: its length and special token ids."""

    size: int
    bos_token_id: int | None = None
    eos_token_id: int = 0
    pad_token_id: int = 1

    def __len__(self) -> int:
        return self.size


def meta_model(arch: ArchitectureArguments, vocab_size: int, block_size: int) -> torch.nn.Module:
    """The pretraining recipe's model, built without memory on the meta device."""
    config = build_model_config(arch, VocabOnly(vocab_size), block_size)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses_with_its_scripts_arguments(recipe: Path) -> None:
    script = SCRIPT_OF[recipe.name]
    assert f"scripts/{script}" in recipe.read_text(), f"{recipe}: the header should show the command that runs it"
    parsed = parse(recipe)
    if recipe.name == "sft.yaml":
        mixture = parse_mixture(parsed[0].dataset_mixture)
        assert "data/world/identity" in [d.id for d in mixture.datasets]
    if recipe.name == "grpo.yaml":
        script_args, training_args, _ = parsed
        rewards = get_reward_funcs(script_args.rewards, **(script_args.reward_options or {}))
        assert len(training_args.reward_weights) == len(rewards)


def test_a_mistyped_key_fails_the_parse(tmp_path: Path) -> None:
    recipe = tmp_path / "pretrain.yaml"
    shutil.copy(RECIPES / "smol-1gpu" / "pretrain.yaml", recipe)
    recipe.write_text(recipe.read_text().replace("hidden_size:", "hiden_size:"))
    with pytest.raises(RecipeError, match="unknown key 'hiden_size' \\(did you mean 'hidden_size'\\?\\)"):
        parse(recipe)


def test_a_mistyped_option_on_the_command_line_is_named() -> None:
    recipe = RECIPES / "sft.yaml"
    types = script_dataclasses(SCRIPT_OF[recipe.name])
    with pytest.raises(
        RecipeError, match=r"^command line: unknown option --learning-rte \(did you mean --learning_rate"
    ):
        parse_recipe(types, [str(recipe), "--learning-rte", "1e-4"])
    with pytest.raises(RecipeError, match=r"^command line: unexpected argument 'stray'"):
        parse_recipe(types, [str(recipe), "stray"])


@pytest.mark.parametrize("scale", SCALES)
def test_stages_fit_together(scale: str) -> None:
    (tokenizer,) = stages(scale)["tokenizer"]
    (tokenize,) = stages(scale)["tokenize"]
    data, pretrain, arch = stages(scale)["pretrain"]
    sft_args, sft, sft_model = stages(scale)["sft"]
    grpo_args, grpo, grpo_model = stages(scale)["grpo"]
    # each stage reads what the one before writes
    assert tokenize.tokenizer_name_or_path == data.tokenizer_name_or_path == tokenizer.output_dir
    assert data.dataset_name == tokenize.output_dir
    assert sft_model.model_name_or_path == pretrain.output_dir
    assert grpo_model.model_name_or_path == sft.output_dir
    assert len({tokenizer.output_dir, tokenize.output_dir, pretrain.output_dir, sft.output_dir, grpo.output_dir}) == 5
    # the tokenizer and the shards come from the same FineWeb-Edu sample (config sample-10BT = folder sample/10BT)
    assert tokenize.dataset_name == f"hf://datasets/{tokenizer.dataset_name}/" + tokenizer.dataset_config.replace(
        "-", "/"
    )
    # pretraining's splits are the shards' splits; validation comes from other files, training is not capped
    assert {data.dataset_train_split, data.dataset_test_split} == set(tokenize.splits)
    assert tokenize.split_globs[data.dataset_train_split] != tokenize.split_globs[data.dataset_test_split]
    assert data.dataset_train_split not in tokenize.max_documents
    assert token_size(tokenizer.vocab_size) == 2  # ids fit the 2-byte shards
    # context lengths
    assert data.block_size <= arch.max_position_embeddings
    assert data.block_size <= tokenizer.model_max_length
    assert sft.max_length <= arch.max_position_embeddings
    assert grpo.max_completion_length + 256 <= grpo.vllm_max_model_length <= arch.max_position_embeddings
    # GRPO: every optimizer step holds whole groups of completions, on all GPUs together
    gpus = launch_gpus(RECIPES / scale / "grpo.yaml")
    assert (grpo.per_device_train_batch_size * grpo.steps_per_generation * gpus) % grpo.num_generations == 0
    assert grpo_args.dataset_format == grpo_args.eval_format == "gsm8k"
    assert pretrain.bf16 and sft.bf16 and grpo.bf16 and pretrain.torch_compile
    # document masking only with a block-sparse kernel: through sdpa's dense mask it was slower (docs/benchmarks.md)
    assert data.document_masking and arch.attn_implementation == "flex_attention"
    assert not pretrain.use_liger_kernel  # Liger failed to compile under torch_compile


@pytest.mark.parametrize("scale", SCALES)
def test_model_size_and_token_budget_match_the_readme(scale: str) -> None:
    expected = SCALES[scale]
    readme = (RECIPES / scale / "README.md").read_text()
    (tokenizer,) = stages(scale)["tokenizer"]
    data, pretrain, arch = stages(scale)["pretrain"]
    model = meta_model(arch, tokenizer.vocab_size, data.block_size)
    assert model.config.vocab_size == tokenizer.vocab_size  # already a multiple of pad_vocab_to_multiple_of
    assert count_parameters(model) == expected.parameters
    gpus = launch_gpus(RECIPES / scale / "pretrain.yaml")
    assert gpus == expected.gpus
    tokens_per_step = (
        data.block_size * pretrain.per_device_train_batch_size * pretrain.gradient_accumulation_steps * gpus
    )
    assert pretrain.max_steps == expected.steps
    assert tokens_per_step * pretrain.max_steps == expected.tokens
    assert 19.5 <= expected.tokens / expected.parameters <= 20.5  # Chinchilla's 20 tokens per parameter
    for figure in (
        f"{expected.parameters:,}",
        f"{expected.parameters / 1e6:.1f}M",
        f"{expected.steps:,}",
        f"{expected.tokens:,}",
        f"{tokens_per_step:,}",
        f"{expected.tokens / expected.parameters:.1f} per parameter",
    ):
        assert figure in readme, f"{scale}/README.md should state {figure}"
    # the same numbers in the pretraining recipe's comments
    recipe = (RECIPES / scale / "pretrain.yaml").read_text()
    assert f"{expected.tokens:,} tokens" in recipe and f"{tokens_per_step:,} tokens" in recipe


@pytest.mark.parametrize("scale", SCALES)
def test_flop_and_time_estimates_match_the_readme(scale: str) -> None:
    flops = pytest.importorskip("chatforge.flops", reason="chatforge.flops counts training FLOPs")
    expected = SCALES[scale]
    readme = (RECIPES / scale / "README.md").read_text()
    (tokenizer,) = stages(scale)["tokenizer"]
    data, _, arch = stages(scale)["pretrain"]
    config = meta_model(arch, tokenizer.vocab_size, data.block_size).config
    per_token = flops.training_flops_per_token(config, data.block_size)
    total = per_token * expected.tokens
    hours = total / (expected.gpus * MFU * PEAK_FLOPS) / 3600
    assert f"{flops.matmul_parameters(config) / 1e6:.2f}M" in readme
    assert f"{per_token / 1e9:.3f} GFLOP" in readme
    assert f"{total:.2e}".replace("e+", "e") in readme
    assert f"{hours:.1f} h" == expected.hours and expected.hours in readme
    assert "ESTIMATE" in readme and "Nobody has run these recipes yet" in readme

"""Pretraining throughput: our `Trainer` path and a plain PyTorch loop timed on the same model and data.

`scripts/benchmark_pretrain.py` drives it. Both loops do the same work per step (bf16 autocast where the GPU has
it, fused AdamW with the Trainer's weight-decay groups, cosine schedule, gradient clipping, the same batches in
the same order), so on fp32 they reach the same loss and their speeds compare fairly. MFU is model FLOPs
(`chatforge.flops`) per second over a matmul peak measured on the same device in the same process.
"""

from __future__ import annotations

import contextlib
import gc
import math
import tempfile
import time
from dataclasses import dataclass, field, replace

import torch
from transformers import AutoConfig, PretrainedConfig, Trainer, TrainerCallback, get_scheduler

from chatforge.configs import RecipeError
from chatforge.data import BlockCollator
from chatforge.flops import training_flops_per_token
from chatforge.modeling import build_model

# Qwen3 shapes of the sizes issue #9 asks for, and a tiny one that checks the script on a CPU in seconds.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384, vocab_size=4096),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2304, vocab_size=50304),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=2816, vocab_size=50304),
}  # fmt: skip
# What a run name may combine: `trainer` or `plain`, then any of these joined by `+` (e.g. trainer+compile+liger).
OPTIONS = {
    "compile": "torch.compile the model",
    "liger": "Liger kernels (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE; needs liger-kernel and a GPU)",
    "docs": "document masking: position ids restart at each eos, attention stays within documents",
    "flex": "flex_attention instead of sdpa (block-sparse document masks)",
    "fa2": "flash_attention_2 instead of sdpa (needs flash-attn)",
}
EOS_ID = 0  # the synthetic documents' separator, as the world tokenizer's <|endoftext|>


@dataclass
class RunSpec:
    """One timed configuration: which loop and which speed options."""

    name: str
    loop: str
    options: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, name: str) -> RunSpec:
        loop, *options = name.strip().split("+")
        if loop not in ("trainer", "plain"):
            raise RecipeError(f"run '{name}': must start with 'trainer' or 'plain', e.g. trainer+compile")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise RecipeError(f"run '{name}': unknown option '{unknown[0]}'; options: {', '.join(OPTIONS)}")
        if {"flex", "fa2"} <= set(options):
            raise RecipeError(f"run '{name}': choose one of flex and fa2")
        return cls(name.strip(), loop, set(options))

    @property
    def attn_implementation(self) -> str:
        return "flex_attention" if "flex" in self.options else "flash_attention_2" if "fa2" in self.options else "sdpa"

    def check_installed(self) -> None:
        """Fail before any timing when an option needs a package or device this machine lacks."""
        if "liger" in self.options:
            if not torch.cuda.is_available():
                raise RecipeError(f"run '{self.name}': Liger kernels are Triton GPU kernels; no GPU here")
            with_hint(f"run '{self.name}'", "liger_kernel", "pip install liger-kernel")
        if "fa2" in self.options:
            with_hint(f"run '{self.name}'", "flash_attn", "pip install flash-attn")


def with_hint(what: str, module: str, install: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise RecipeError(f"{what} needs the {module} package: {install}")


def model_config(preset: str, seq_len: int, attn_implementation: str = "sdpa") -> PretrainedConfig:
    """The Qwen3 config of a preset, built through AutoConfig as the pretraining recipes build theirs."""
    if preset not in PRESETS:
        raise RecipeError(f"unknown model size '{preset}'; choose from {', '.join(PRESETS)}")
    config = AutoConfig.for_model(
        "qwen3", **PRESETS[preset], head_dim=PRESETS[preset]["hidden_size"] // PRESETS[preset]["num_attention_heads"],
        max_position_embeddings=seq_len, tie_word_embeddings=True, eos_token_id=EOS_ID, pad_token_id=1,
        use_cache=False,
    )  # fmt: skip
    config._attn_implementation = attn_implementation
    return config


class RandomDocuments(torch.utils.data.Dataset):
    """Blocks of random token ids cut into documents as a real corpus is: an eos before each document, lengths
    drawn from a log-normal around `mean_document_tokens`. Same shapes and document structure as real data,
    no tokenizer or download needed."""

    def __init__(self, num_blocks: int, seq_len: int, vocab_size: int, mean_document_tokens: int = 600, seed=0):
        generator = torch.Generator().manual_seed(seed)
        total = num_blocks * seq_len
        tokens = torch.randint(2, vocab_size, (total,), generator=generator)
        normal = torch.randn(total // 8 + 1, generator=generator)
        lengths = torch.exp(math.log(mean_document_tokens) - 0.5 + normal)  # log-normal, sigma 1, that mean
        starts = torch.cumsum(lengths.long().clamp(min=1) + 1, 0)
        tokens[torch.cat([torch.zeros(1, dtype=torch.long), starts[starts < total]])] = EOS_ID
        self.blocks = tokens.view(num_blocks, seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index]}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak_tflops(dtype: torch.dtype, size: int | None = None, iterations: int = 20) -> float:
    """Best measured TFLOP/s of square matmuls in `dtype` on this device (the ceiling MFU is taken against)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = size or (8192 if device == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(4):  # the first round warms up clocks and kernels
        synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            a @ b
        synchronize()
        best = max(best, 2 * size**3 * iterations / (time.perf_counter() - start) / 1e12)
    return best


@dataclass
class BenchmarkSettings:
    """What every run shares: data shape, steps and optimisation."""

    seq_len: int = 2048
    batch_size: int = 16
    steps: int = 25
    warmup_steps: int = 5  # untimed (at least 1): compilation, allocator warm-up
    learning_rate: float = 6e-4
    dataloader_num_workers: int = 2
    seed: int = 0

    @property
    def bf16(self) -> bool:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()

    def validate(self) -> None:
        for name in ("seq_len", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise RecipeError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.warmup_steps < self.steps:
            raise RecipeError(f"--warmup_steps must be in [1, steps), got {self.warmup_steps} with {self.steps} steps")


class StepClock(TrainerCallback):
    """Wall-clock times at the end of the warm-up and of the last step, each after the device finishes its work.
    Only those two steps wait for the device: in between the host runs ahead as in real training, so host work
    that a real run hides behind the GPU is not counted against either loop. With `profile`, torch.profiler
    records the steps in between (they are then not a timing: the profiler slows the host)."""

    def __init__(self, settings: BenchmarkSettings, profile: bool = False) -> None:
        self.settings = settings
        self.times: list[float] = []
        self.profile = profile
        self.profiler: torch.profiler.profile | None = None  # while profiling
        self.events = None  # the profiled steps' op statistics, once the profiler stopped

    def mark(self, step: int) -> None:
        """Call after optimizer step `step` (1-based)."""
        if step not in (self.settings.warmup_steps, self.settings.steps):
            return
        synchronize()
        self.stop_profiler()  # the last step: stop before reading the clock
        self.times.append(time.perf_counter())
        if self.profile and step == self.settings.warmup_steps:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            self.times[-1] = time.perf_counter()  # the profiler's start-up is not part of the steps

    def stop_profiler(self) -> None:
        """Stop a running profile (also when a run fails halfway, so the next run can start its own)."""
        if self.profiler is not None:
            self.profiler.stop()
            self.events = self.profiler.key_averages()
            self.profiler = None

    def on_step_end(self, args, state, control, **kwargs):
        self.mark(state.global_step)

    def profile_summary(self, top: int = 12) -> dict:
        """Where the profiled steps spent their time: the device's busy share of the wall time (GPU) and the
        ops with the most self time (device time on a GPU, host time on a CPU), per step."""
        steps = self.settings.steps - self.settings.warmup_steps
        seconds = self.times[1] - self.times[0]
        gpu = torch.cuda.is_available()
        attr = "self_device_time_total" if gpu else "self_cpu_time_total"
        busy_us = sum(getattr(e, attr) for e in self.events)
        ranked = sorted(self.events, key=lambda e: getattr(e, attr), reverse=True)[:top]
        return {
            "step_ms": 1000 * seconds / steps,
            "device_busy": busy_us / 1e6 / seconds if gpu else None,
            "ops": [(e.key, getattr(e, attr) / 1e3 / steps) for e in ranked],
        }


def timed_result(
    spec: RunSpec, config: PretrainedConfig, settings: BenchmarkSettings, clock: StepClock, mean_loss: float
) -> dict:
    """Tokens/s, TFLOP/s and peak memory over the timed steps (after warm-up), or a profile of them."""
    if len(clock.times) != 2:
        raise RuntimeError(f"{spec.name}: the step clock saw {len(clock.times)} of its 2 marks")
    timed = settings.steps - settings.warmup_steps
    seconds = clock.times[1] - clock.times[0]  # from the end of the last warm-up step
    tokens_per_second = timed * settings.batch_size * settings.seq_len / seconds
    flops = training_flops_per_token(config, settings.seq_len) * tokens_per_second
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    result = {
        "run": spec.name,
        "tokens_per_second": tokens_per_second,
        "step_seconds": seconds / timed,
        "tflops": flops / 1e12,
        "peak_memory_gib": memory,
        "mean_loss": mean_loss,
    }
    if clock.profile:
        result["profile"] = clock.profile_summary()
    return result


def benchmark_trainer(
    spec: RunSpec, preset: str, settings: BenchmarkSettings, data: RandomDocuments, profile: bool = False
) -> dict:
    """Time our pretraining path: `PretrainTrainer` with `PretrainConfig`, as `run_pretrain.py` builds them."""
    from chatforge.pretrain import PretrainConfig, PretrainTrainer

    config = model_config(preset, settings.seq_len, spec.attn_implementation)
    model = build_model(config, seed=settings.seed)
    clock = StepClock(settings, profile)
    with tempfile.TemporaryDirectory() as out:
        args = PretrainConfig(
            output_dir=out, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, warmup_steps=0.05, bf16=settings.bf16, torch_compile="compile"
            in spec.options, use_liger_kernel="liger" in spec.options, optim="adamw_torch_fused",
            train_sampling_strategy="sequential", dataloader_num_workers=settings.dataloader_num_workers,
            dataloader_pin_memory=torch.cuda.is_available(), logging_steps=settings.steps, eval_strategy="no",
            save_strategy="no", report_to="none", disable_tqdm=True, seed=settings.seed,
        )  # fmt: skip
        trainer = PretrainTrainer(
            model=model, args=args, train_dataset=data, callbacks=[clock],
            data_collator=BlockCollator(EOS_ID, document_masking="docs" in spec.options),
        )  # fmt: skip
        reset_memory()
        try:
            result = trainer.train()
        finally:
            clock.stop_profiler()
    return timed_result(spec, config, settings, clock, result.training_loss)


def benchmark_plain(
    spec: RunSpec, preset: str, settings: BenchmarkSettings, data: RandomDocuments, profile: bool = False
) -> dict:
    """Time a plain PyTorch loop over the same model, batches and optimiser (the nanoGPT way)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = model_config(preset, settings.seq_len, spec.attn_implementation)
    model = build_model(config, seed=settings.seed).to(device)
    if "liger" in spec.options:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    model.train()
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.1},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=True)
    scheduler = get_scheduler("cosine", optimizer, math.ceil(0.05 * settings.steps), settings.steps)
    forward = torch.compile(model) if "compile" in spec.options else model
    loader = torch.utils.data.DataLoader(
        data, batch_size=settings.batch_size, shuffle=False, num_workers=settings.dataloader_num_workers,
        pin_memory=device == "cuda", collate_fn=BlockCollator(EOS_ID, document_masking="docs" in spec.options),
        drop_last=True,
    )  # fmt: skip
    autocast = (
        torch.autocast(device, dtype=torch.bfloat16) if settings.bf16 else contextlib.nullcontext()
    )  # same mixed precision as the Trainer's (bf16 autocast over fp32 weights)
    clock = StepClock(settings, profile)
    total_loss = torch.zeros((), device=device)
    reset_memory()
    batches = iter(loader)
    try:
        for step in range(1, settings.steps + 1):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            with autocast:
                loss = forward(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total_loss += loss.detach()
            clock.mark(step)
    finally:
        clock.stop_profiler()
    return timed_result(spec, config, settings, clock, (total_loss / settings.steps).item())


def reset_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # each compiled run starts from a clean cache


def run_benchmark(spec: RunSpec, preset: str, settings: BenchmarkSettings, profile_steps: int = 0) -> dict:
    """One timed run of `spec` on fresh random documents (the same ones for every run with this seed); with
    `profile_steps`, instead a profile of that many steps after the warm-up (`result["profile"]`)."""
    if profile_steps:
        settings = replace(settings, steps=settings.warmup_steps + profile_steps)
    data = RandomDocuments(
        settings.steps * settings.batch_size, settings.seq_len, PRESETS[preset]["vocab_size"], seed=settings.seed
    )
    runner = benchmark_trainer if spec.loop == "trainer" else benchmark_plain
    try:
        return runner(spec, preset, settings, data, profile=bool(profile_steps))
    finally:
        release()  # the run's model, optimizer and compiled graphs go before the next run


def loader_tokens_per_second(
    dataset: torch.utils.data.Dataset, settings: BenchmarkSettings, batches: int = 50
) -> float:
    """Tokens/s the training data loader delivers on its own (shuffled, collated, pinned as in training): it must
    stay well above the training tokens/s, or the GPU waits for data."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, num_workers=settings.dataloader_num_workers,
        pin_memory=torch.cuda.is_available(), collate_fn=BlockCollator(EOS_ID), drop_last=True,
    )  # fmt: skip
    batches = min(batches, len(loader))
    if batches < 2:
        raise RecipeError(f"the token shards hold fewer than 2 batches of {settings.batch_size} x {settings.seq_len}")
    iterator = iter(loader)
    next(iterator)  # worker start-up is paid once per run
    start = time.perf_counter()
    for _ in range(batches - 1):
        next(iterator)
    return (batches - 1) * settings.batch_size * settings.seq_len / (time.perf_counter() - start)

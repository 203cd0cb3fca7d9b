"""Latency and throughput benchmark: `python -m qwen_minimal bench` (see --help).

On one pair of models with the SAME random weights, a transformers model
(Qwen3MoeForCausalLM, or Qwen3NextForCausalLM for the hybrid shapes) and the
qwen_minimal model converted from it, the benchmark measures
  1. prefill: the time to read a long prompt (--prefill_len tokens) and choose the first
     token, in tokens of prompt per second (in a hybrid, mostly the chunked Gated
     DeltaNet), and whether both choose the same token;
  2. greedy decoding: the time of every generated token with and without the KV cache,
     tokens/s of qwen_minimal's `generate` and of transformers' `generate`, and whether
     their tokens agree;
  3. training: the time of one step (forward, backward, AdamW) of each model on the same
     batch;
  4. peak memory of each phase, and the cache's bytes per token of context, beside
     those of the same shape with every layer attending (Qwen3-MoE).
It writes bench.json and per_token_times.png into --out_dir. Runs alternate between the
two models so that both see the same machine load, and every figure is a median over
repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..devices import resolve_device, synchronize
from ..errors import InputError, check_at_least
from ..files import cannot_write
from ..interop import same_weights_pair
from ..model.config import ModelConfig
from ..model.decoder import QwenLM
from ..model.kv_cache import KVCache
from ..training.optim import make_optimizer
from .options import exit_on_input_error

# Benchmark shapes: (model preset, changes). bench-small is the shape of the speed
# targets: hidden 128, 4 layers, 8 experts top-2 256 wide, 4 query heads in 2 KV groups
# of head_dim 32, with GPT-2's vocabulary and separate input and output embeddings;
# hybrid-small is the same as a Qwen3-Next hybrid (cpu-tiny-hybrid: 3 Gated DeltaNet
# layers, then gated attention, a shared expert beside the routed ones). Their context
# holds the default 1024-token prefill with room to spare. tiny and tiny-hybrid run in
# seconds, for tests.
SMALL = dict(vocab_size=50257, max_seq_len=2048, tie_embeddings=False)
TINY = dict(
    vocab_size=512,
    hidden_size=32,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    num_experts=4,
    expert_intermediate_size=32,
    tie_embeddings=False,
)
TINY_HYBRID = dict(
    TINY,
    linear_num_key_heads=1,
    linear_num_value_heads=2,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    shared_expert_intermediate_size=32,
)
SHAPES = {
    "bench-small": ("cpu-tiny", SMALL),
    "hybrid-small": ("cpu-tiny-hybrid", SMALL),
    "tiny": ("cpu-tiny", dict(TINY, num_layers=2)),
    "tiny-hybrid": ("cpu-tiny-hybrid", TINY_HYBRID),
}


def shape_config(shape: str) -> ModelConfig:
    """The model of a benchmark shape, routed as transformers routes (no selection
    bias), so that both compute the same function."""
    if shape not in SHAPES:
        raise InputError(
            f"unknown benchmark shape {shape!r}; choose one of {sorted(SHAPES)}"
        )
    preset, changes = SHAPES[shape]
    return ModelConfig.preset(preset, **changes, load_balancing="joint")


def cache_growth(config: ModelConfig, dtype: torch.dtype) -> dict:
    """What the generation cache of one sequence holds, in bytes: bytes_per_token, its
    growth per token of context (keys and values of the attention layers), and
    fixed_bytes, the Gated DeltaNet layers' states, whatever the context. Measured on
    KVCache itself, for a model on the meta device (no memory)."""
    with torch.device("meta"):
        model = QwenLM(config).to(dtype)
    one, two = (KVCache.for_model(model, 1, n).nbytes() for n in (1, 2))
    return {"bytes_per_token": two - one, "fixed_bytes": 2 * one - two}


def cache_summary(config: ModelConfig, dtype: torch.dtype) -> dict:
    """cache_growth of the shape, and of the same shape with every layer attending (the
    Qwen3-MoE layout), for comparison."""
    return {
        "this_shape": cache_growth(config, dtype),
        "all_attention": cache_growth(
            dataclasses.replace(config, layer_types=None), dtype
        ),
    }


# What "flat" and "grows" mean in numbers, for latency_growth (see latency_summary);
# reported, never asserted.
# with the cache: the last quarter's tokens at most 15% slower than the first's
FLAT_MAX_GROWTH = 0.15
GROWING_MIN_GROWTH = 0.3  # without it: at least 30% slower


PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif PROC_CLEAR_REFS.exists():
        # Linux: reset the peak resident set size to the current one
        PROC_CLEAR_REFS.write_text("5")


def peak_memory_bytes(device: torch.device) -> int:
    """The peak since reset_peak_memory: CUDA's allocator peak, or the process's peak
    resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if PROC_STATUS.exists():
        line = next(
            line
            for line in PROC_STATUS.read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        return int(line.split()[1]) * 1024  # "VmHWM:   421384 kB"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # bytes on macOS, KiB elsewhere
    return rss if sys.platform == "darwin" else rss * 1024


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return (
            "torch.cuda.max_memory_allocated, reset before each phase "
            "(weights of both models included)"
        )
    if PROC_CLEAR_REFS.exists():
        return (
            "peak resident set size of the process (VmHWM in /proc/self/status), "
            "reset before each phase "
            "through /proc/self/clear_refs; it includes both models' weights and the "
            "Python runtime"
        )
    return (
        "peak resident set size of the process (resource.getrusage ru_maxrss); it "
        "cannot be reset, so each "
        "figure also covers every earlier phase"
    )


def timed_generate(generate, device) -> tuple[torch.Tensor, list[float]]:
    """Run generate(on_token) and return its tokens and the time (s) at which each new
    token was chosen.

    generate calls on_token once per new token, right after choosing it; stamp[0] is the
    first token (the prompt's prefill included) and token i's latency is stamp[i] -
    stamp[i - 1], its output projection and sampling included.
    """
    stamps = []

    def on_token(token):
        synchronize(device)
        stamps.append(time.perf_counter())

    synchronize(device)
    start = time.perf_counter()
    tokens = generate(on_token)
    return tokens, [s - start for s in stamps]


class TokenCallback:
    """A transformers streamer (put/end) that calls on_token with each new token:
    generate puts the prompt first, then every token as soon as it is chosen."""

    def __init__(self, on_token):
        self.on_token, self.prompt_seen = on_token, False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.on_token(value)
        self.prompt_seen = True

    def end(self) -> None:
        pass


def latency_summary(runs: list[list[float]], new_tokens: int) -> dict:
    """Medians over repeated runs of: tokens/s, time to first token, and every later
    token's latency.

    latency_growth compares the median latency of the last quarter of the tokens with
    that of the first quarter (medians, so that a few slow steps do not count): 0 when
    flat, 1 when the latency doubles. latency_growth_runs: the same of each run on its
    own, whose spread says how much of a growth is run-to-run noise.
    """
    # per-token latency of tokens 2..N
    steps = [[b - a for a, b in zip(r, r[1:])] for r in runs]
    per_position = [
        statistics.median(s[i] for s in steps) for i in range(len(steps[0]))
    ]
    quarter = max(1, len(per_position) // 4)

    def quarters(latencies: list[float]) -> tuple[float, float]:
        return (
            statistics.median(latencies[:quarter]),
            statistics.median(latencies[-quarter:]),
        )

    first, last = quarters(per_position)
    return {
        "tokens_per_s": statistics.median(new_tokens / r[-1] for r in runs),
        "tokens_per_s_runs": [new_tokens / r[-1] for r in runs],
        "time_to_first_token_ms": 1e3 * statistics.median(r[0] for r in runs),
        "median_token_latency_ms": 1e3 * statistics.median(per_position),
        "first_quarter_latency_ms": 1e3 * first,
        "last_quarter_latency_ms": 1e3 * last,
        "latency_growth": last / first - 1,
        "latency_growth_runs": [b / a - 1 for a, b in map(quarters, steps)],
        "per_token_latency_ms": [1e3 * t for t in per_position],
    }


def bench_decode(
    ours,
    hf,
    prompt_len: int = 16,
    new_tokens: int = 256,
    repeats: int = 3,
    compile: bool = False,
    seed: int = 0,
) -> dict:
    """Greedy decoding of new_tokens tokens after a random prompt: qwen_minimal with and
    without the KV cache (with it, its one-token steps compiled if `compile`), and
    transformers' generate (its defaults: eager, sdpa attention, dynamic cache), each
    `repeats` times, alternating."""
    device = next(ours.parameters()).device
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_len), generator=g).to(
        device
    )
    n = new_tokens
    variants = {  # each: (new tokens, on_token) -> tokens
        "ours_cache": lambda k, on_token: ours.generate(
            prompt, k, temperature=0, compile=compile, on_token=on_token
        ),
        "ours_no_cache": lambda k, on_token: ours.generate(
            prompt, k, temperature=0, use_cache=False, on_token=on_token
        ),
        "transformers": lambda k, on_token: hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=k,
            do_sample=False,
            use_cache=True,
            streamer=TokenCallback(on_token),
        ),
    }
    with torch.no_grad():
        for generate in variants.values():  # warm-up (and, with compile, compilation)
            generate(min(n, 8), lambda token: None)
        runs, tokens, memory = {name: [] for name in variants}, {}, {}
        # alternate the variants so that all see the same machine load
        for _ in range(repeats):
            for name, generate in variants.items():
                reset_peak_memory(device)
                tokens[name], stamps = timed_generate(
                    lambda on_token: generate(n, on_token), device
                )
                memory[name] = peak_memory_bytes(device)
                if len(stamps) != n:
                    raise RuntimeError(
                        f"{name} produced {len(stamps)} tokens instead of {n}"
                    )
                runs[name].append(stamps)
    result = {name: latency_summary(r, n) for name, r in runs.items()}
    for name in variants:
        result[name]["peak_memory_bytes"] = memory[name]
    same = (tokens["ours_cache"] == tokens["transformers"])[0, prompt_len:].tolist() + [
        False
    ]
    result.update(
        prompt_len=prompt_len,
        new_tokens=n,
        tokens_match=bool(torch.equal(tokens["ours_cache"], tokens["transformers"])),
        cache_matches_no_cache=bool(
            torch.equal(tokens["ours_cache"], tokens["ours_no_cache"])
        ),
        matching_prefix=same.index(False),
        kv_cache_bytes=KVCache.for_model(ours, 1, prompt_len + n).nbytes(),
        speedup_vs_transformers=result["ours_cache"]["tokens_per_s"]
        / result["transformers"]["tokens_per_s"],
        cache_speedup=result["ours_cache"]["tokens_per_s"]
        / result["ours_no_cache"]["tokens_per_s"],
    )
    return result


def bench_prefill(ours, hf, prompt_len: int = 1024, repeats: int = 3, seed: int = 0):
    """The time to read a random prompt of prompt_len tokens and choose the first new
    token greedily: qwen_minimal's generate (with its cache: the prompt in one forward
    pass; a Gated DeltaNet layer runs its chunked rule) and transformers' generate
    (its defaults), one warm-up each, then `repeats` times, alternating."""
    device = next(ours.parameters()).device
    g = torch.Generator().manual_seed(seed + 2)
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_len), generator=g).to(
        device
    )
    variants = {
        "ours": lambda: ours.generate(prompt, 1, temperature=0),
        "transformers": lambda: hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=1,
            do_sample=False,
        ),
    }
    times, tokens = {name: [] for name in variants}, {}
    with torch.no_grad():
        for generate in variants.values():
            generate()
        for _ in range(repeats):
            for name, generate in variants.items():
                synchronize(device)
                start = time.perf_counter()
                tokens[name] = generate()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    result = {
        name: {
            "tokens_per_s": prompt_len / statistics.median(t),
            "tokens_per_s_runs": [prompt_len / s for s in t],
        }
        for name, t in times.items()
    }
    result.update(
        prompt_len=prompt_len,
        first_token_match=bool(torch.equal(tokens["ours"], tokens["transformers"])),
        speedup_vs_transformers=result["ours"]["tokens_per_s"]
        / result["transformers"]["tokens_per_s"],
    )
    return result


def bench_train(
    config: ModelConfig,
    batch_size: int = 8,
    seq_len: int = 128,
    steps: int = 5,
    warmup: int = 2,
    compile: bool = False,
    seed: int = 0,
    device="cpu",
    dtype=torch.float32,
) -> dict:
    """One optimizer step (forward, backward, AdamW) of each model on the same batch,
    same weights, with the optimizer of `python -m qwen_minimal train` (fused AdamW on
    CPU and CUDA) for both: `warmup` untimed steps, then `steps` timed ones,
    alternating.

    transformers gets labels (it shifts them itself) and output_router_logits=True, so
    that its loss also includes router_aux_loss_coef * the load-balancing loss, as
    qwen_minimal's does; qwen_minimal gets the shifted targets with the last position
    ignored, so that both losses cover the same positions.
    """
    device = torch.device(device)
    ours, hf = same_weights_pair(config, seed, device, dtype)
    ours.train(), hf.train()
    if compile:
        ours.hidden_states = torch.compile(ours.hidden_states)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=g).to(
        device
    )
    targets = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)

    def optimizer_step(model, loss_of):
        # the training script's AdamW, for both
        optimizer = make_optimizer(model, lr=3e-4, device=device)

        def step():
            loss = loss_of(model)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        return step

    variants = {
        "ours": optimizer_step(ours, lambda m: m(x, targets=targets).loss),
        "transformers": optimizer_step(
            hf, lambda m: m(input_ids=x, labels=x, output_router_logits=True).loss
        ),
    }
    # same weights: same loss
    first_loss = {name: step().item() for name, step in variants.items()}
    for _ in range(warmup - 1):
        for step in variants.values():
            step()
    times, memory = {name: [] for name in variants}, {}
    for _ in range(steps):
        for name, step in variants.items():
            reset_peak_memory(device)
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            memory[name] = peak_memory_bytes(device)
    result = {
        name: {
            "step_s": statistics.median(t),
            "step_s_runs": t,
            "tokens_per_s": x.numel() / statistics.median(t),
            "first_loss": first_loss[name],
            "peak_memory_bytes": memory[name],
        }
        for name, t in times.items()
    }
    result.update(
        batch_size=batch_size,
        seq_len=seq_len,
        steps=steps,
        warmup=warmup,
        first_loss_diff=abs(first_loss["ours"] - first_loss["transformers"]),
        speedup_vs_transformers=result["transformers"]["step_s"]
        / result["ours"]["step_s"],
    )
    return result


def plot_latency(decode: dict, title: str):
    """Per-token latency against position for the three decoding variants; returns the
    figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    # position of the second generated token, the first decode step
    start = decode["prompt_len"] + 1
    styles = {
        "ours_no_cache": ("qwen_minimal, no KV cache", "-", "tab:red"),
        "ours_cache": ("qwen_minimal, KV cache", "-", "tab:blue"),
        "transformers": ("transformers generate, KV cache", "--", "tab:gray"),
    }
    for name, (label, style, color) in styles.items():
        latency = decode[name]["per_token_latency_ms"]
        ax.plot(
            range(start, start + len(latency)),
            latency,
            style,
            color=color,
            label=label,
            linewidth=1.2,
        )
    ax.set_xlabel("sequence position of the generated token (tokens)")
    ax.set_ylabel("latency per token (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def targets(decode: dict | None, train: dict | None) -> dict:
    """The issue's speed targets, each True/False with the measured figure beside it."""
    out = {}
    if decode is not None:
        out["decode_cache_at_least_2x_transformers"] = (
            decode["speedup_vs_transformers"] >= 2
        )
        out["cache_latency_flat"] = (
            decode["ours_cache"]["latency_growth"] <= FLAT_MAX_GROWTH
        )
        out["no_cache_latency_grows"] = (
            decode["ours_no_cache"]["latency_growth"] >= GROWING_MIN_GROWTH
        )
    if train is not None:
        out["train_step_at_least_1.2x_transformers"] = (
            train["speedup_vs_transformers"] >= 1.2
        )
    return out


def print_summary(result: dict) -> None:
    d, t = result.get("decode"), result.get("train")
    print(
        f"device {result['device']} ({result['threads']} threads), "
        f"{result['dtype']}, shape {result['shape']}, "
        f"compile={result['compile']}, load average {result['load_average_start']} "
        f"-> {result['load_average_end']}"
    )
    busy = result["load_average_start"] and result["load_average_start"][0] > 0.5
    if result["device"] == "cpu" and result["threads"] > 1 and busy:
        print(
            "note: other processes were running; with several threads per process, "
            "each parallel operation "
            "then waits for a free core, so timings are noisy and favour fewer, "
            "larger operations. "
            "--threads 1 gives steadier figures."
        )
    p, c = result["prefill"], result["cache"]
    if p:
        ours, theirs = p["ours"], p["transformers"]
        print(
            f"prefill: {p['prompt_len']} prompt tokens, median (range) of "
            f"{result['repeats']} runs\n"
            f"  ours {ours['tokens_per_s']:.0f} "
            f"({min(ours['tokens_per_s_runs']):.0f}-"
            f"{max(ours['tokens_per_s_runs']):.0f}) tok/s, transformers "
            f"{theirs['tokens_per_s']:.0f} ({min(theirs['tokens_per_s_runs']):.0f}-"
            f"{max(theirs['tokens_per_s_runs']):.0f}) tok/s: "
            f"{p['speedup_vs_transformers']:.2f}x; first token identical: "
            f"{p['first_token_match']}"
        )
    mine, every = c["this_shape"], c["all_attention"]
    print(
        f"cache per token of context: {mine['bytes_per_token']:,} bytes "
        f"(+ {mine['fixed_bytes']:,} bytes of Gated DeltaNet state, whatever the "
        f"context); with every layer attending (Qwen3-MoE): "
        f"{every['bytes_per_token']:,} bytes"
    )
    if d:
        print(
            f"decode: prompt {d['prompt_len']}, {d['new_tokens']} new tokens, median "
            f"of {result['repeats']} runs"
        )
        for name in ("ours_cache", "ours_no_cache", "transformers"):
            r = d[name]
            print(
                f"  {name:14s} {r['tokens_per_s']:7.1f} tok/s "
                f"({min(r['tokens_per_s_runs']):.1f}-"
                f"{max(r['tokens_per_s_runs']):.1f})   median token "
                f"{r['median_token_latency_ms']:6.2f} ms"
                f"   first/last quarter {r['first_quarter_latency_ms']:6.2f} / "
                f"{r['last_quarter_latency_ms']:6.2f} ms"
                f" ({100 * r['latency_growth']:+4.0f}%)   peak memory "
                f"{r['peak_memory_bytes'] / 2**20:6.1f} MiB"
            )
        print(
            f"  qwen_minimal / transformers: {d['speedup_vs_transformers']:.2f}x;  "
            "cache / no cache: "
            f"{d['cache_speedup']:.2f}x;  greedy tokens identical: {d['tokens_match']} "
            f"(first {d['matching_prefix']} of {d['new_tokens']} agree)"
        )
    if t:
        print(
            f"train step: batch {t['batch_size']} x {t['seq_len']}, median of "
            f"{t['steps']} steps after "
            f"{t['warmup']} warm-up"
        )
        ours, theirs = t["ours"], t["transformers"]
        print(
            f"  ours {1e3 * ours['step_s']:.0f} ms, transformers "
            f"{1e3 * theirs['step_s']:.0f} ms: "
            f"{t['speedup_vs_transformers']:.2f}x; first losses differ by "
            f"{t['first_loss_diff']:.2e}; peak memory "
            f"{ours['peak_memory_bytes'] / 2**20:.1f} / "
            f"{theirs['peak_memory_bytes'] / 2**20:.1f} MiB"
        )
    print(f"peak memory: {result['memory_method']}")
    for name, ok in result["targets"].items():
        print(f"  target {name}: {'met' if ok else 'MISSED'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qwen_minimal bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shape",
        default="bench-small",
        choices=sorted(SHAPES),
        help="model shape (default: %(default)s)",
    )
    p.add_argument(
        "--prompt_len",
        type=int,
        default=16,
        help="prompt tokens (default: %(default)s)",
    )
    p.add_argument(
        "--prefill_len",
        type=int,
        default=1024,
        help="prompt tokens of the prefill timing; 0 skips it (default: %(default)s)",
    )
    p.add_argument(
        "--new_tokens",
        type=int,
        default=256,
        help="tokens to generate (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed decoding runs of each variant (default: %(default)s)",
    )
    p.add_argument(
        "--train_batch",
        type=int,
        default=8,
        help="training batch size (default: %(default)s)",
    )
    p.add_argument(
        "--train_seq",
        type=int,
        default=128,
        help="training sequence length (default: %(default)s)",
    )
    p.add_argument(
        "--train_steps",
        type=int,
        default=5,
        help="timed training steps (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed training steps first (default: %(default)s)",
    )
    p.add_argument("--skip_train", action="store_true", help="only benchmark decoding")
    p.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="weights and activations of both models (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile qwen_minimal's cached one-token decoding steps "
        "(generate(compile=True)) and "
        "its training forward (QwenLM.hidden_states); transformers runs eager",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="weights, prompt and batch (default: %(default)s)",
    )
    p.add_argument(
        "--out_dir",
        default="analytics",
        help="where bench.json and per_token_times.png go (default: %(default)s)",
    )
    return p


def load_average() -> list[float] | None:
    """The system's 1, 5 and 15-minute load averages (None where the OS has none): how
    busy the machine was."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run(
    shape: str = "bench-small",
    prompt_len: int = 16,
    prefill_len: int = 1024,
    new_tokens: int = 256,
    repeats: int = 3,
    train_batch: int = 8,
    train_seq: int = 128,
    train_steps: int = 5,
    warmup: int = 2,
    skip_train: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    threads: int | None = None,
    compile: bool = False,
    seed: int = 0,
    out_dir: str | Path | None = "analytics",
) -> dict:
    """The whole benchmark (the options of --help); writes bench.json and
    per_token_times.png into out_dir unless it is None. Returns the result that
    bench.json holds."""
    import matplotlib.pyplot as plt
    import transformers

    config = shape_config(shape)
    check_at_least(
        1,
        prompt_len=prompt_len,
        repeats=repeats,
        train_batch=train_batch,
        train_steps=train_steps,
        warmup=warmup,
        threads=1 if threads is None else threads,
    )
    # latencies are gaps between tokens
    check_at_least(2, train_seq=train_seq, new_tokens=new_tokens)
    check_at_least(0, prefill_len=prefill_len)
    if max(prompt_len + new_tokens, prefill_len + 1, train_seq) > config.max_seq_len:
        raise InputError(
            f"shape {shape} has max_seq_len={config.max_seq_len}: prompt_len + "
            "new_tokens, prefill_len + 1 and "
            f"train_seq must fit in it"
        )
    if out_dir is not None:  # before minutes of measuring, not after
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=out_dir).close()
        except OSError as e:
            raise cannot_write(out_dir, e) from None
    # generate's notes about unset pad tokens and the like
    transformers.logging.set_verbosity_error()
    if threads is not None:
        torch.set_num_threads(threads)
    device, torch_dtype = resolve_device(device), getattr(torch, dtype)
    result = dict(
        shape=shape,
        config=config.to_dict(),
        device=str(device),
        dtype=dtype,
        device_name=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else None,
        threads=torch.get_num_threads(),
        compile=compile,
        repeats=repeats,
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        load_average_start=load_average(),
        memory_method=memory_method(device),
    )

    ours, hf = same_weights_pair(config, seed, device, torch_dtype)
    prefill = (
        bench_prefill(ours, hf, prefill_len, repeats, seed) if prefill_len else None
    )
    decode = bench_decode(ours, hf, prompt_len, new_tokens, repeats, compile, seed)
    del ours, hf
    train = (
        None
        if skip_train
        else bench_train(
            config,
            train_batch,
            train_seq,
            train_steps,
            warmup,
            compile,
            seed,
            device,
            torch_dtype,
        )
    )
    result.update(
        prefill=prefill,
        cache=cache_summary(config, torch_dtype),
        decode=decode,
        train=train,
        targets=targets(decode, train),
        load_average_end=load_average(),
    )
    if out_dir is not None:
        threads = f"{result['threads']} thread" + ("s" if result["threads"] > 1 else "")
        compiled = ", qwen_minimal's steps compiled" if compile else ""
        fig = plot_latency(
            decode,
            f"Per-token latency of greedy decoding\n{shape}, {device.type}, {dtype}, "
            f"{threads}, median of {repeats} runs{compiled}",
        )
        try:
            fig.savefig(out_dir / "per_token_times.png", dpi=120)
            (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
        except OSError as e:  # a full disk
            raise cannot_write(out_dir, e) from None
        finally:
            plt.close(fig)
    return result


@exit_on_input_error
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    result = run(**vars(args))
    print_summary(result)
    print(
        f"wrote {Path(args.out_dir) / 'bench.json'} and "
        f"{Path(args.out_dir) / 'per_token_times.png'}"
    )
    return result

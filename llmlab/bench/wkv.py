"""RWKV-4 WKV and recurrent decoding: chunked vs sequential WKV on the CPU, time per generated token vs context
(RWKV state vs a transformer's KV cache), and on a CUDA GPU the Triton kernel vs the chunked form.

    python -m llmlab.bench.wkv [--seqs 256,1024] [--channels 256,768] [--contexts 128,1024,4096] [--reps 3]
                               [--threads N] [--gpu-seqs 1024,4096,8192] [--gpu-channels 768,2048]
                               [--gpu-blocks 32,64,128]

(a) WKV forward+backward, fp32, batch 1: median seconds of `wkv_chunked` (chunk 8) and `wkv_sequential` (autograd
through the stable recurrence), and their ratio. (b) Greedy decoding, batch 1, fp32: RWKV-4 (L4, D256, RNN mode, state
(n_layer, 5, 1, D)) vs a LLaMA-shaped transformer of the same L and D (HF `LlamaForCausalLM`, random weights,
DynamicCache): the prompt is prefilled, then the median time of one more token is taken at each context length;
"bytes held" is the RNN state vs the KV cache (its tensors' sizes, exact). (c) CUDA only: Triton kernel (at each
channels-per-program value of `--gpu-blocks`) vs chunked, forward+backward, batch 4, fp32; achieved bandwidth of
the kernel = bytes it reads and writes (k, v, y, the saved states, their gradients) / time, next to a
device-to-device copy measured in the same run. Without CUDA (c) prints one line.
Results go to `outputs/bench/wkv.json` (atomic write), the decoding plot to `outputs/bench/wkv_decode.png`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmlab.bench.machine import machine, machine_line
from llmlab.io import write_json
from llmlab.paths import REPO_ROOT


def median_s(fn, reps: int, warmup: int = 1, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def operands(b: int, t: int, c: int, device="cpu"):
    gen = torch.Generator(device=device).manual_seed(t + c)
    args = [
        torch.randn(c, generator=gen, device=device),
        torch.randn(c, generator=gen, device=device),
        torch.randn(b, t, c, generator=gen, device=device),
        torch.randn(b, t, c, generator=gen, device=device),
    ]
    return [a.requires_grad_() for a in args], torch.randn(b, t, c, generator=gen, device=device)


def fwd_bwd(fn, args, grad):
    return lambda: torch.autograd.grad(fn(*args)[0], args, grad)


def cpu_wkv(seqs: list[int], channels: list[int], reps: int) -> list[dict]:
    from llmlab.models.wkv import wkv_chunked, wkv_sequential

    rows = []
    for c in channels:
        for t in seqs:
            args, grad = operands(1, t, c)
            row = {
                "T": t,
                "C": c,
                "chunked_s": median_s(fwd_bwd(lambda *a: wkv_chunked(*a, chunk=8), args, grad), reps),
                "sequential_s": median_s(fwd_bwd(wkv_sequential, args, grad), reps),
            }
            row["sequential_over_chunked"] = row["sequential_s"] / row["chunked_s"]
            rows.append(row)
    return rows


def decode(contexts: list[int], reps: int, n_layer: int = 4, d: int = 256, vocab: int = 256) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmlab.config import RWKVArch
    from llmlab.models.rwkv import RWKV

    torch.manual_seed(0)
    rwkv = RWKV(RWKVArch(n_layer=n_layer, d_model=d, init="normal"), vocab, max(contexts)).train(False)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=d,
            num_hidden_layers=n_layer,
            num_attention_heads=d // 64,
            num_key_value_heads=d // 64,
            intermediate_size=4 * d,
            max_position_embeddings=max(contexts) + 64,
        )
    )
    llama.train(False)
    with torch.inference_mode():
        rows = [decode_row(rwkv, llama, ctx, vocab, reps) for ctx in contexts]
    base = rows[0]
    for r in rows:
        r["rwkv_vs_first"] = r["rwkv_s_per_token"] / base["rwkv_s_per_token"]
        r["gpt_vs_first"] = r["gpt_s_per_token"] / base["gpt_s_per_token"]
    return {"shape": {"n_layer": n_layer, "d_model": d, "vocab": vocab}, "rows": rows}


def decode_row(rwkv, llama, ctx: int, vocab: int, reps: int) -> dict:
    """Seconds for one more token after a prompt of `ctx` tokens, and the bytes each model holds for it."""
    from transformers import DynamicCache

    ids = torch.randint(0, vocab, (1, ctx))
    nxt = torch.zeros(1, 1, dtype=torch.long)
    _, state = rwkv.run(ids)
    rwkv_s = median_s(lambda: rwkv.run(nxt, state), reps)
    cache = DynamicCache()
    llama(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

    def gpt_step():  # one token at position ctx, then drop it again so every rep sees the same context
        llama(input_ids=nxt, cache=cache, use_cache=True)
        cache.crop(-1)

    return {
        "context": ctx,
        "rwkv_s_per_token": rwkv_s,
        "gpt_s_per_token": median_s(gpt_step, reps),
        "rwkv_state_bytes": state.numel() * state.element_size(),
        "gpt_kv_bytes": kv_bytes,
    }


def plot_decode(dec: dict, path) -> None:
    """Seconds per token and bytes held vs context: RWKV's state against the transformer's KV cache."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmlab.figures import save_figure

    ctx = [r["context"] for r in dec["rows"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(ctx, [r["rwkv_s_per_token"] * 1e3 for r in dec["rows"]], marker="o", label="RWKV-4, RNN mode")
    left.plot(ctx, [r["gpt_s_per_token"] * 1e3 for r in dec["rows"]], marker="o", label="transformer + KV cache")
    left.set_ylabel("ms per generated token")
    right.plot(ctx, [r["rwkv_state_bytes"] / 2**20 for r in dec["rows"]], marker="o", label="RWKV state")
    right.plot(ctx, [r["gpt_kv_bytes"] / 2**20 for r in dec["rows"]], marker="o", label="KV cache")
    right.set_ylabel("MiB held per sequence")
    s = dec["shape"]
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"greedy decoding, batch 1, L{s['n_layer']} D{s['d_model']}", fontsize=10)
    save_figure(fig, path)


def copy_bandwidth_GBps(n_bytes: int = 2**30) -> float:
    """Device-to-device copy, bytes read + written per second (the memory ceiling the kernel is compared with)."""
    src = torch.empty(n_bytes // 4, device="cuda", dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    s = median_s(lambda: dst.copy_(src), 10, warmup=2, sync=torch.cuda.synchronize)
    return 2 * n_bytes / s / 1e9


def gpu_wkv(seqs: list[int], channels: list[int], reps: int, blocks: list[int]) -> dict | None:
    """Triton (each channels-per-program value of `blocks`) vs chunked, fwd+bwd, batch 4, fp32 on CUDA."""
    if not torch.cuda.is_available():
        print("WKV on GPU: skipped (no CUDA device)")
        return None
    from llmlab.kernels import wkv_triton as kernel
    from llmlab.models.wkv import wkv_chunked

    peak = copy_bandwidth_GBps()
    rows, b, default = [], 4, kernel.BLOCK_C_MAX
    for c in channels:
        for t in seqs:
            args, grad = operands(b, t, c, "cuda")
            row = {"B": b, "T": t, "C": c, "triton_s_by_block": {}}
            try:
                for block in blocks:
                    kernel.BLOCK_C_MAX = block
                    row["triton_s_by_block"][block] = median_s(
                        fwd_bwd(kernel.wkv_triton, args, grad), reps, sync=torch.cuda.synchronize
                    )
            finally:
                kernel.BLOCK_C_MAX = default
            row["best_block"] = min(row["triton_s_by_block"], key=row["triton_s_by_block"].get)
            row["triton_s"] = row["triton_s_by_block"].get(default, row["triton_s_by_block"][row["best_block"]])
            try:
                row["chunked_s"] = median_s(
                    fwd_bwd(lambda *a: wkv_chunked(*a, chunk=8), args, grad), reps, sync=torch.cuda.synchronize
                )
                row["chunked_over_triton"] = row["chunked_s"] / row["triton_s"]
            except torch.OutOfMemoryError:
                row["chunked_s"] = None
                torch.cuda.empty_cache()
            # forward: read k, v; write y and 3 saved states. backward: read k, v, gy, 3 states; write gk, gv.
            row["triton_GBps"] = 4 * b * t * c * (2 + 1 + 3 + 3 + 3 + 2) / row["triton_s"] / 1e9
            row["of_copy_bandwidth"] = row["triton_GBps"] / peak
            rows.append(row)
            del args, grad
            torch.cuda.empty_cache()
    return {"copy_GBps": peak, "default_block": default, "rows": rows}


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def markdown(result: dict) -> str:
    """The benchmark's tables from its JSON (printed by `main`, and a README table kind)."""
    dec, s = result["decode"], result["decode"]["shape"]
    lines = [
        f"Greedy decoding, CPU fp32, batch 1, L{s['n_layer']} D{s['d_model']}, {result['threads']} thread(s): "
        "seconds per token after a context of",
        "",
        "| context | RWKV (RNN) | vs first | transformer + KV cache | vs first | RWKV state | KV cache |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in dec["rows"]:
        lines.append(
            f"| {r['context']:,} | {r['rwkv_s_per_token']:.4f} s | {r['rwkv_vs_first']:.2f}× | "
            f"{r['gpt_s_per_token']:.4f} s | {r['gpt_vs_first']:.2f}× | "
            f"{r['rwkv_state_bytes'] / 1024:,.0f} KiB | {r['gpt_kv_bytes'] / 1024:,.0f} KiB |"
        )
    lines += [
        "",
        f"WKV forward + backward, CPU fp32, batch 1, {result['threads']} thread(s), median:",
        "",
        "| T | C | chunked (c = 8) | sequential | sequential / chunked |",
        "|---|---|---|---|---|",
    ]
    for r in result["cpu_wkv"]:
        lines.append(
            f"| {r['T']:,} | {r['C']:,} | {r['chunked_s']:.3f} s | {r['sequential_s']:.3f} s | "
            f"{r['sequential_over_chunked']:.1f}× |"
        )
    gpu = result.get("gpu_wkv")
    if gpu:
        lines += [
            "",
            f"WKV forward + backward, CUDA fp32, batch 4: Triton kernel (block {gpu['default_block']}) vs chunked; "
            f"copy bandwidth {gpu['copy_GBps']:,.0f} GB/s",
            "",
            "| T | C | Triton | chunked | chunked / Triton | Triton GB/s | of copy | Triton by block |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in gpu["rows"]:
            chunked = f"{r['chunked_s'] * 1e3:.2f} ms" if r["chunked_s"] else "OOM"
            ratio = f"{r['chunked_over_triton']:.1f}×" if r.get("chunked_over_triton") else "–"
            by_block = ", ".join(f"{k}: {v * 1e3:.2f} ms" for k, v in r["triton_s_by_block"].items())
            lines.append(
                f"| {r['T']:,} | {r['C']:,} | {r['triton_s'] * 1e3:.2f} ms | {chunked} | {ratio} | "
                f"{r['triton_GBps']:.0f} | {r['of_copy_bandwidth']:.1%} | {by_block} |"
            )
    lines += ["", machine_line(result)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench.wkv", description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", default="256,1024")
    parser.add_argument("--channels", default="256,768")
    parser.add_argument("--contexts", default="128,1024,4096")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--gpu-seqs", default="1024,4096,8192")
    parser.add_argument("--gpu-channels", default="768,2048")
    parser.add_argument("--gpu-blocks", default="32,64,128", help="Triton channels per program to compare")
    args, _ = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cpu = cpu_wkv(ints(args.seqs), ints(args.channels), args.reps)
    dec = decode(ints(args.contexts), max(3, args.reps))
    gpu = gpu_wkv(ints(args.gpu_seqs), ints(args.gpu_channels), args.reps, ints(args.gpu_blocks))
    result = {"benchmark": "wkv", "machine": machine(), "threads": torch.get_num_threads()}
    result |= {"cpu_wkv": cpu, "decode": dec, "gpu_wkv": gpu}
    print(markdown(result))
    plot_decode(dec, REPO_ROOT / "outputs" / "bench" / "wkv_decode.png")
    write_json(REPO_ROOT / "outputs" / "bench" / "wkv.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

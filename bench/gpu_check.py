"""All single-GPU checks in one call: throughput and MFU (bf16, fp32, fp16, checkpointing),
memory figures from the CUDA allocator next to the analytic prediction, and the step-time
breakdown's sum against the stopwatch, for a fixed list of models. Needs torch only (the
engine), so it runs on a GPU machine whose image lacks the tuner's packages.

    python bench/gpu_check.py --out DIR [--budget-s 480] [--record-trace PATH]

Writes DIR/gpu_results.json (every run's result JSON) and DIR/gpu_summary.md (a table), and
stops launching new runs when the time budget is spent. ``--record-trace PATH`` first profiles
a few steps of a matmul and the collectives the engine uses on a 1-rank NCCL group, writes the
profiler's Chrome trace to PATH and, next to it, PATH.summary.json: what engine/metrics/comm.py
makes of it and, per NCCL kernel, the host op it links to — the material to replace the
hand-written tests/engine/data/cuda_comm_trace.json with. A 1-rank communicator may take
NCCL's one-rank shortcut (a local copy), so the kernel names can differ from a multi-rank run;
the links from kernels to their `nccl:*` calls are what this trace shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import ModelConfig, RunConfig
from engine.units import GIB

GPT2_SMALL = {
    "name": "gpt2-small",
    "n_layers": 12,
    "n_heads": 12,
    "d_model": 768,
    "d_ff": 3072,
    "vocab_size": 50257,
    "seq_len": 1024,
}
LLAMA_1B = {
    "name": "llama-1b",
    "n_layers": 16,
    "n_heads": 32,
    "d_model": 2048,
    "d_ff": 8192,
    "vocab_size": 32000,
    "seq_len": 2048,
    "mlp": "swiglu",
    "norm": "rmsnorm",
    "position": "rope",
    "bias": False,
}
# (label, model, precision, micro_batch, activation checkpointing, train.compile), most
# important first: the budget skips what it cannot reach. The MFU targets (bf16 on one H200:
# llama-1b >= 50%, gpt2-small >= 35%) are asked of the compiled runs (torch.compile per block,
# fused AdamW, the engine's default optimizer); the micro-batches bracket the best one.
RUNS = [
    ("llama-1b bf16 mb4 compile", LLAMA_1B, "bf16", 4, "none", "blocks"),
    ("gpt2-small bf16 mb16 compile", GPT2_SMALL, "bf16", 16, "none", "blocks"),
    ("llama-1b bf16 mb8 ac=selective compile", LLAMA_1B, "bf16", 8, "selective", "blocks"),
    ("gpt2-small bf16 mb32 compile", GPT2_SMALL, "bf16", 32, "none", "blocks"),
    ("llama-1b bf16 mb2 compile", LLAMA_1B, "bf16", 2, "none", "blocks"),
    ("llama-1b bf16 mb4", LLAMA_1B, "bf16", 4, "none", "none"),
    ("gpt2-small bf16 mb16", GPT2_SMALL, "bf16", 16, "none", "none"),
    ("gpt2-small fp32 mb16", GPT2_SMALL, "fp32", 16, "none", "none"),
    ("gpt2-small fp16 mb16", GPT2_SMALL, "fp16", 16, "none", "none"),
    ("gpt2-small bf16 mb16 ac=full", GPT2_SMALL, "bf16", 16, "full", "none"),
]


def config(
    model: dict,
    precision: str,
    micro_batch: int,
    ac: str,
    out: Path,
    device: str = "cuda",
    compile_mode: str = "none",
) -> RunConfig:
    cfg = RunConfig(model=ModelConfig(**model), device=device, out=str(out))
    cfg.train.precision, cfg.train.micro_batch = precision, micro_batch
    cfg.train.global_batch, cfg.train.steps, cfg.train.warmup_steps = micro_batch, 14, 3
    cfg.train.activation_checkpointing = ac
    cfg.train.compile = compile_mode  # compilation runs in the warmup steps (compile_s)
    return cfg


def record_trace(path: Path, *, device: str = "cuda", steps: int = 3) -> dict:
    """Profile ``steps`` steps of a matmul and collectives on a 1-rank group (NCCL on CUDA,
    gloo for a CPU smoke run); write the Chrome trace to ``path`` and return its reading."""
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from engine.metrics import comm
    from engine.metrics.comm_trace import from_profiler, is_nccl_kernel

    cuda = device == "cuda"
    dist.init_process_group(
        "nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        x = torch.randn(1 << 20, device=device)  # 4 MiB fp32
        gathered = torch.empty_like(x)  # world size 1: the gathered array is one shard
        w = torch.randn(1024, 1024, device=device)
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(steps):
                w @ w  # compute: its kernel must not count as communication
                dist.all_reduce(x)
                dist.all_gather_into_tensor(gathered, x)
                dist.reduce_scatter_tensor(x, gathered)
                dist.broadcast(x, src=0)
            if cuda:
                torch.cuda.synchronize()
        prof.export_chrome_trace(str(path))
        records = from_profiler(prof.events())
    finally:
        dist.destroy_process_group()
    summary = comm.summarize_records(records)
    ops = {r.correlation: r.name for r in records if r.correlation and not r.link}
    reading = {
        "comm": summary.per_step(steps),
        "kernel_links": sorted(
            {(r.name.split("(")[0], ops.get(r.link, "")) for r in records if is_nccl_kernel(r.name)}
        ),
        "host_collectives": sorted(
            {r.name for r in records if r.name.startswith(("nccl:", "gloo:"))}
        ),
    }
    Path(f"{path}.summary.json").write_text(json.dumps(reading, indent=1))
    return reading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    # the whole call, model builds and compilation included, in about 5 minutes
    parser.add_argument("--budget-s", type=float, default=280)
    # a dry run of the script itself where there is no GPU: the tiny model on CPU
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--record-trace", type=Path, help="also write a profiler trace here")
    args = parser.parse_args()
    if args.record_trace:
        args.record_trace.parent.mkdir(parents=True, exist_ok=True)
        reading = record_trace(args.record_trace, device="cpu" if args.cpu_smoke else "cuda")
        print(json.dumps(reading["comm"]["kinds"], indent=1))
    runs, device = RUNS, "cuda"
    if args.cpu_smoke:
        runs, device = (
            [
                ("tiny fp32 mb4 (CPU smoke)", ModelConfig().__dict__, "fp32", 4, "none", "none"),
                (
                    "tiny fp32 mb4 compile (CPU smoke)",
                    ModelConfig().__dict__,
                    "fp32",
                    4,
                    "none",
                    "blocks",
                ),
            ],
            "cpu",
        )
    args.out.mkdir(parents=True, exist_ok=True)
    t0, results = time.monotonic(), []
    for label, model, precision, mb, ac, compile_mode in runs:
        left = args.budget_s - (time.monotonic() - t0)
        if left < (90 if compile_mode != "none" else 45):
            results.append({"label": label, "skipped": "time budget spent"})
            continue
        out = args.out / f"run{len(results)}.json"
        cfg_path = args.out / f"run{len(results)}.config.json"
        cfg_path.write_text(config(model, precision, mb, ac, out, device, compile_mode).to_json())
        proc = subprocess.run(
            [sys.executable, "-m", "engine", str(cfg_path)],
            capture_output=True,
            text=True,
            timeout=left,
        )
        entry = {"label": label, "returncode": proc.returncode}
        if out.exists():
            entry["result"] = json.loads(out.read_text())
        else:
            entry["log_tail"] = (proc.stdout + proc.stderr)[-2000:]
        results.append(entry)
    (args.out / "gpu_results.json").write_text(json.dumps(results, indent=1))
    rows = [
        "| run | tokens/s | MFU | HFU | peak allocated GiB | peak reserved GiB | predicted GiB "
        "| prediction error | retries | breakdown sum vs stopwatch | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results:
        r = e.get("result")
        if not r or r.get("status") != "ok":
            rows.append(f"| {e['label']} | failed/skipped | | | | | | | | | |")
            continue
        err, bsum = r.get("mem_prediction_error"), r.get("breakdown_sum_error")
        # no MFU on a device the peak table does not know (peak_flops_source is null)
        mfu, hfu = (f"{100 * r[k]:.1f}%" if r.get(k) is not None else "n/a" for k in ("mfu", "hfu"))
        rows.append(
            f"| {e['label']} | {r['tokens_per_s']:,.0f} | {mfu} | "
            f"{hfu} | {r['peak_mem_bytes'] / GIB:.2f} | "
            f"{(r.get('peak_reserved_bytes') or 0) / GIB:.2f} | "
            f"{r['predicted_peak_mem_bytes'] / GIB:.2f} | "
            f"{'n/a' if err is None else f'{100 * err:+.1f}%'} | {r.get('alloc_retries', 0)} | "
            f"{'n/a' if bsum is None else f'{100 * bsum:+.1f}%'} | {r.get('compile_s') or 0:.0f} |"
        )
    rows += ["", *_best_per_model(results)]
    (args.out / "gpu_summary.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def _best_per_model(results: list[dict]) -> list[str]:
    """Each model's best MFU over the runs that finished (precision, micro-batch, compile)."""
    best: dict[str, tuple[float, str]] = {}
    for e in results:
        r = e.get("result") or {}
        if r.get("status") == "ok" and r.get("mfu") is not None:
            model = e["label"].split()[0]
            if model not in best or r["mfu"] > best[model][0]:
                best[model] = (r["mfu"], e["label"])
    return [f"best MFU, {m}: {100 * v:.1f}% ({label})" for m, (v, label) in best.items()]


if __name__ == "__main__":
    main()

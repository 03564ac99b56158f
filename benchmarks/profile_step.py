"""Where a training step's GPU time goes: torch.profiler over a few steps of one benchmark case.

    python benchmarks/profile_step.py --shape llama-3b --case ours-auto-all lora-all --dtype bf16

Prints, per case, the top kernels by total GPU time and the step's total GPU and CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from bench_train import SHAPES, build_base, make_batch, make_case, sync, train_step  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3b", choices=sorted(SHAPES))
    p.add_argument("--case", nargs="+", default=["ours-auto-all", "lora-all"])
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=768)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=18)
    args = p.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    kind = SHAPES[args.shape]["kind"]
    base = build_base(args.shape, dtype, "cuda")
    batch = make_batch(kind, SHAPES[args.shape]["vocab"], args.batch, args.seq, "cuda")
    for case in args.case:
        model, opt = make_case(case, base, kind, 32)
        model.train()
        for _ in range(3):
            train_step(model, opt, batch)
        sync("cuda")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                train_step(model, opt, batch)
            sync("cuda")
        events = prof.key_averages()
        gpu_total = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
        print(f"\n## {case}: {gpu_total:.1f} ms GPU time per step ({args.shape}, {args.dtype}, batch {args.batch} x {args.seq})\n")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60))
        del model, opt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Many adapters in one batch: a batch of sequences where every row may use its own FourierFT adapter.

Times a no-grad forward (prefill) of one batch with 1, 8 and 32 (or --distinct) distinct adapters
against the same batch with one adapter active, side by side in round-robin rounds (medians), and
PEFT's LoRA mixed-batch forward (``adapter_names``) on the same model and batch for comparison.
Also reports the memory of --resident resident adapters against the base model's parameters.
Models are built from configs (no download).

    python benchmarks/bench_multi_adapter.py                       # SmolLM2-135M shape, CPU
    python benchmarks/bench_multi_adapter.py --shape llama-3b --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

SHAPES = {
    "smollm2-135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, inter=1536, vocab=49152),
    "llama-3b": dict(hidden=3072, layers=28, heads=24, kv_heads=8, inter=8192, vocab=128256),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=1000),
}


def build(shape, dtype, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[shape]
    cfg = LlamaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], intermediate_size=s["inter"], vocab_size=s["vocab"], tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def ours(base, count, targets, n):
    import fourierft

    model = fourierft.get_fourierft_model(copy.deepcopy(base), fourierft.FourierFTConfig(n_frequency=n, target_modules=targets), "a0")
    for i in range(1, count):
        model.add_adapter(f"a{i}", fourierft.FourierFTConfig(n_frequency=n, target_modules=targets))
    return model.eval()


def lora(base, count, targets, rank):
    import peft

    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=rank, target_modules=targets), adapter_name="a0")
    for i in range(1, count):
        model.add_adapter(f"a{i}", peft.LoraConfig(r=rank, target_modules=targets))
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--distinct", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--resident", type=int, default=1024)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    targets = ["q_proj", "v_proj"]
    base = build(args.shape, dtype, args.device)
    ids = torch.randint(0, SHAPES[args.shape]["vocab"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    top = max(args.distinct)
    fourier, peft_lora = ours(base, top, targets, args.n), lora(base, top, targets, args.lora_rank)
    fourier.set_adapter("a0")

    def names(k):
        return [f"a{i % k}" for i in range(args.batch)]

    cases = {"base": lambda: base(input_ids=ids), "fourierft one adapter (active)": lambda: fourier(input_ids=ids)}
    for k in args.distinct:
        cases[f"fourierft {k} distinct"] = lambda k=k: fourier(input_ids=ids, adapter_names=names(k))
    for k in args.distinct:
        cases[f"peft lora r{args.lora_rank} {k} distinct"] = lambda k=k: peft_lora(input_ids=ids, adapter_names=names(k))
    times = {c: [] for c in cases}
    with torch.no_grad():
        for r in range(args.warmup + args.rounds):
            for c, fn in cases.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if r >= args.warmup:
                    times[c].append((time.perf_counter() - t0) * 1e3)
    ms = {c: statistics.median(v) for c, v in times.items()}
    one = ms["fourierft one adapter (active)"]
    tokens = args.batch * args.seq
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n{args.shape}, {args.dtype}, batch {args.batch} x {args.seq}, no-grad forward, {args.rounds} rounds (median), {device}, torch {torch.__version__}\n")
    print("| case | ms | tokens/s | vs one adapter | vs base |")
    print("|---|---|---|---|---|")
    for c, v in ms.items():
        print(f"| {c} | {v:.1f} | {tokens / v * 1e3:,.0f} | {v / one:.2f} | {v / ms['base']:.2f} |")
    resident = ours(base, 2, targets, args.n)
    per_adapter = sum(p.numel() * p.element_size() for n, p in resident.named_parameters() if n.endswith("fourierft_spectrum.a1"))
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    print(f"\nper resident adapter: {per_adapter / 1024:.1f} KiB of coefficients (positions and kernel indices are shared per layer); "
          f"{args.resident} adapters: {args.resident * per_adapter / 2**20:.1f} MiB = {100 * args.resident * per_adapter / base_bytes:.1f}% of the "
          f"base model's {base_bytes / 2**20:.0f} MiB ({args.dtype} parameters)")


if __name__ == "__main__":
    main()

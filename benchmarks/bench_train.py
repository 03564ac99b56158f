"""Training-step and inference benchmark: frozen base / PEFT LoRA / PEFT FourierFT / fourierft.

Models are built from configs (no download). Cases are interleaved round-robin (one step of each
case per round, medians reported) so machine noise hits all alike. CPU peak RSS is measured with
one subprocess per case. Prints a Markdown table of ms/step, ratios and peak memory; writes JSON.

    python benchmarks/bench_train.py --shape minilm --targets qv all              # CPU
    python benchmarks/bench_train.py --shape llama-3b --device cuda --dtype bf16  # GPU

Needs: pip install -e '.[dev]' (transformers, peft).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import torch

SHAPES = {
    "minilm": dict(kind="bert", hidden=384, layers=6, heads=12, inter=1536, vocab=30522),
    "roberta-base": dict(kind="bert", hidden=768, layers=12, heads=12, inter=3072, vocab=50265),
    "llama-3b": dict(kind="llama", hidden=3072, layers=8, heads=24, kv_heads=8, inter=8192, vocab=128256),
    "llama-3b-full": dict(kind="llama", hidden=3072, layers=28, heads=24, kv_heads=8, inter=8192, vocab=128256, tie=True),  # Llama-3.2-3B
    "llama-8b-slice": dict(kind="llama", hidden=4096, layers=4, heads=32, kv_heads=8, inter=14336, vocab=128256),  # Llama-3.1-8B, 4 of 32 layers
    "tiny": dict(kind="bert", hidden=64, layers=2, heads=4, inter=128, vocab=1000),
}
TARGETS = {
    "bert": {"qv": ["query", "value"], "all": ["query", "key", "value", "dense"]},
    "llama": {"qv": ["q_proj", "v_proj"], "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
}
OUR_MODES = ("auto", "merged", "separate", "fft", "reference")


def build_base(shape: str, dtype, device):
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    s = SHAPES[shape]
    torch.manual_seed(0)
    if s["kind"] == "bert":
        cfg = BertConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"], intermediate_size=s["inter"], vocab_size=s["vocab"], num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = BertForSequenceClassification(cfg)
    else:
        cfg = LlamaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], intermediate_size=s["inter"], vocab_size=s["vocab"], max_position_embeddings=4096, tie_word_embeddings=s.get("tie", False))
        with torch.device(device):  # initialise on the device: fast for billion-parameter shapes
            model = LlamaForCausalLM(cfg)
    return model.to(device=device, dtype=dtype).eval()


def make_case(name: str, base, kind: str, lora_rank: int):
    """-> (model, optimizer or None). Case names: frozen, lora-<t>, peft-fourierft-<t>,
    peft-fourierft-accelerated-<t>, ours-<mode>-<t>, merged-<t>."""
    import peft

    import fourierft

    model = copy.deepcopy(base)
    parts = name.split("-")
    targets = TARGETS[kind].get(parts[-1])
    if name == "frozen":
        model.requires_grad_(False)
        model.enable_input_require_grads()  # the floor: gradient to inputs only
        return model, None
    if name.startswith("lora"):
        model = peft.get_peft_model(model, peft.LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=targets))
    elif name.startswith("peft-fourierft"):
        model = peft.get_peft_model(model, peft.FourierFTConfig(n_frequency=1000, target_modules=targets))
        if "accelerated" in parts:  # the same PEFT model, forward swapped by fourierft.accelerate_peft
            fourierft.accelerate_peft(model)
    elif name.startswith("ours") or name.startswith("merged"):
        model = fourierft.get_fourierft_model(model, fourierft.FourierFTConfig(n_frequency=1000, target_modules=targets))
        if name.startswith("merged"):
            return model.merge_and_unload(), None
        model.set_mode(parts[1])
        return model, torch.optim.AdamW(fourierft.param_groups(model))
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4)


def make_batch(kind, vocab, batch, seq, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    if kind == "bert":
        return {"input_ids": ids, "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}
    return {"input_ids": ids, "labels": ids}


def train_step(model, optimizer, batch):
    loss = model(**batch).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)


@torch.no_grad()
def infer_step(model, batch):
    model(input_ids=batch["input_ids"])


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak:
    """Highest resident set size seen while the block runs (polled every 2 ms)."""

    def __enter__(self):
        self.peak, self._stop = _rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def run_round_robin(cases, step_fns, rounds, warmup, device):
    times = {c: [] for c in cases}
    for r in range(warmup + rounds):
        for c in cases:
            sync(device)
            t0 = time.perf_counter()
            step_fns[c]()
            sync(device)
            if r >= warmup:
                times[c].append((time.perf_counter() - t0) * 1e3)
    return {c: statistics.median(v) for c, v in times.items()}


def case_list(targets, modes, inference):
    cases = ["frozen"]
    for t in targets:
        cases += [f"lora-{t}", f"peft-fourierft-{t}", f"peft-fourierft-accelerated-{t}"] + [f"ours-{m}-{t}" for m in modes]
    if inference:
        cases += [f"merged-{t}" for t in targets]
    return cases


def measure_one_rss(args, case):
    """Peak RSS (MiB) of a fresh process running only this case, above the process with the base model
    and batch loaded (what the case itself adds: adapter, optimizer state, activations)."""
    cmd = [sys.executable, __file__, "--shape", args.shape, "--batch", str(args.batch), "--seq", str(args.seq), "--dtype", args.dtype, "--device", args.device, "--only", case, "--rounds", "2", "--warmup", "1", "--lora-rank", str(args.lora_rank)]
    if args.inference:
        cmd.append("--inference")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"peak RSS run of {case} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return float("nan")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="minilm", choices=sorted(SHAPES))
    p.add_argument("--targets", nargs="+", default=["qv", "all"], choices=["qv", "all"])
    p.add_argument("--modes", nargs="+", default=list(OUR_MODES), choices=OUR_MODES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=None, help="default: 8 on CPU, 32 on GPU")
    p.add_argument("--inference", action="store_true", help="time no-grad forwards instead of training steps")
    p.add_argument("--no-rss", action="store_true", help="skip the per-case subprocess memory runs (CPU)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--cases", nargs="+", default=None, metavar="NAME", help="keep only these cases (e.g. frozen lora-qv ours-auto-qv)")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--table", default=None, metavar="JSON", help="print the table of a saved result and exit")
    args = p.parse_args(argv)
    if args.table:
        saved = json.load(open(args.table))
        saved_args = argparse.Namespace(**saved["args"])
        print_table(saved_args, list(saved["ms_per_step"]), saved["ms_per_step"], saved["peak_mib"], saved["device"], saved["versions"]["torch"])
        print(f"\nrecorded {saved['date']}; transformers {saved['versions']['transformers']}, peft {saved['versions']['peft']}, python {saved['versions']['python']}")
        return
    args.lora_rank = args.lora_rank or (32 if args.device.startswith("cuda") else 8)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    kind = SHAPES[args.shape]["kind"]
    base = build_base(args.shape, dtype, args.device)
    batch = make_batch(kind, SHAPES[args.shape]["vocab"], args.batch, args.seq, args.device)
    cases = [args.only] if args.only else case_list(args.targets, args.modes, args.inference)
    if args.inference:
        cases = [c for c in cases if c == "frozen" or not c.startswith("ours") or c.startswith("ours-auto")]
    if args.cases:
        cases = [c for c in cases if c in args.cases]
    models, step_fns = {}, {}
    baseline = _rss_mib()
    for c in cases:
        model, opt = make_case(c, base, kind, args.lora_rank)
        if args.inference:
            model.eval()
            step_fns[c] = lambda m=model: infer_step(m, batch)
        else:
            model.train()
            step_fns[c] = lambda m=model, o=opt: train_step(m, o, batch)
        models[c] = model
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        ms = run_round_robin(cases, step_fns, args.rounds, args.warmup, args.device)
    if args.only:
        print(json.dumps({"case": args.only, "ms": ms[args.only], "peak_mib": rss.peak - baseline}))
        return
    peaks = {}
    if args.device.startswith("cuda"):
        for c in cases:  # one case at a time: peak above what is resident (all models, optimizer state)
            torch.cuda.empty_cache()
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step_fns[c]()
            sync(args.device)
            peaks[c] = (torch.cuda.max_memory_allocated() - resident) / 2**20
    elif not args.no_rss:
        del models, step_fns
        peaks = {c: measure_one_rss(args, c) for c in cases}
    report(args, cases, ms, peaks)


def _ratio(ms, case, ref):
    return f"{ms[case] / ms[ref]:.2f}" if ref in ms else ""


def report(args, cases, ms, peaks):
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print_table(args, cases, ms, peaks, device_name, torch.__version__)
    if args.json:
        save_json(args, ms, peaks, device_name)


def print_table(args, cases, ms, peaks, device_name, torch_version):
    what = "no-grad forward" if args.inference else "training step"
    print(f"\n{args.shape}, {args.dtype}, batch {args.batch} x {args.seq}, {what}, {args.rounds} rounds (median), device {args.device} ({device_name}), torch {torch_version}\n")
    memory = "peak MiB above resident (GPU)" if args.device.startswith("cuda") else "peak RSS MiB over base"
    tokens = args.batch * args.seq
    print(f"| case | ms | tokens/s | vs LoRA | vs PEFT FourierFT | vs merged | {memory} |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        t = c.rsplit("-", 1)[-1]
        print(f"| {c} | {ms[c]:.1f} | {tokens / ms[c] * 1e3:,.0f} | {_ratio(ms, c, f'lora-{t}')} | {_ratio(ms, c, f'peft-fourierft-{t}')} | {_ratio(ms, c, f'merged-{t}')} | {peaks.get(c, float('nan')):.0f} |")


def save_json(args, ms, peaks, device_name):
    import peft
    import transformers

    payload = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args),
        "device": device_name,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version()},
        "ms_per_step": ms,
        "peak_mib": peaks,
    }
    with open(args.json, "w") as f:
        json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()

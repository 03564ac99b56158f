"""What the starting point costs: held-out loss of SmolLM2-135M-Instruct on E2E references before any
training, for the base model and for FourierFT adapters (q, v) at each start: zeros, the default
N(0, 1) coefficients with scaling "auto", and PEFT's parametrization (scaling 150), with dW / W.

    python examples/offline_assets.py --out runs/assets --e2e ../shared/data/e2e --only smollm2 e2e
    python benchmarks/init_loss.py --assets runs/assets
"""

import argparse
import csv
from pathlib import Path

import torch

from fourierft import FourierFTConfig, get_fourierft_model
from fourierft.diagnostics import layer_scales

STARTS = {
    "zeros (init_weights=True)": dict(init_weights=True),
    "N(0, 1), scaling auto (default)": dict(),
    "N(0, 1), scaling 150, PEFT's parametrization": dict(scaling=150.0, coefficient_scale=1.0),
}


def mean_loss(model, tokenizer, texts: list[str]) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model(ids, labels=ids).loss.item() for ids in (tokenizer(t, return_tensors="pt").input_ids for t in texts)) / len(texts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", type=Path, required=True, help="offline_assets.py --out folder (smollm2, e2e)")
    p.add_argument("--rows", type=int, default=40)
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.assets / "smollm2")
    with open(args.assets / "e2e" / "dev.csv", newline="") as f:
        texts = [f"{r['mr']}\n{r['ref']}{tokenizer.eos_token}" for r in list(csv.DictReader(f))[: args.rows]]
    load = lambda: AutoModelForCausalLM.from_pretrained(args.assets / "smollm2", dtype=torch.float32)  # noqa: E731
    print(f"| start | held-out loss at step 0 | dW / W median | dW / W max |\n|---|---|---|---|\n| base model | {mean_loss(load(), tokenizer, texts):.3f} | - | - |")
    for label, kwargs in STARTS.items():
        torch.manual_seed(0)
        model = get_fourierft_model(load(), FourierFTConfig(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **kwargs))
        ratios = sorted(s.delta_norm / s.weight_norm for s in layer_scales(model))
        print(f"| {label} | {mean_loss(model, tokenizer, texts):.3f} | {ratios[len(ratios) // 2]:.3f} | {ratios[-1]:.3f} |")


if __name__ == "__main__":
    main()

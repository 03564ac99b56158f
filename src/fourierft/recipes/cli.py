"""The ``fourierft`` command: one table of recipes (``RECIPES``), each with the same small interface.

    fourierft demo                      offline demo: MiniLM on Rotten Tomatoes (needs [train] + assets)
    fourierft quickstart                tiny model built from a config: train, save, reload, merge (needs [hf])
    fourierft train [opts] [key=value]  any recipe; the task (or preset) picks it
    fourierft eval | predict | merge    with a saved adapter on its base model (the recipe it was trained with)
    fourierft generate                  causal-LM adapters: generate from prompts
    fourierft serve                     OpenAI-style HTTP server for many adapters on one base model
    fourierft inspect DIR               adapter summary, LoRA comparison, spectrum plots

A recipe module has ``NAME``, ``TASKS``, ``Config`` (a dataclass with attribute docstrings),
``PRESETS``, ``train(cfg, quiet)``, ``evaluate(adapter, data, model)``, ``predict(adapter, data,
out_file, model)`` and ``merge(adapter, out_dir, model)``. Subcommands import what they need lazily
and name the pip extra if missing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

TRAIN_MODULES = ("transformers", "accelerate", "sklearn", "scipy", "matplotlib", "yaml")
# recipe name -> module; the first one is the default for `train` without a task or preset
RECIPES = {
    "text-classification": "fourierft.recipes.text_classification",
    "causal-lm": "fourierft.recipes.causal_lm",
    "image-classification": "fourierft.recipes.image_classification",
}
_AUTO_CLASSES = {"AutoModelForSequenceClassification": "text-classification", "AutoModelForCausalLM": "causal-lm", "AutoModelForImageClassification": "image-classification"}


def recipe(name: str):
    return importlib.import_module(RECIPES[name])


def _require(*modules: str, extra: str = "train") -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"this command needs {', '.join(missing)}: pip install 'fourierft[{extra}]'")


# ---------------------------------------------------------------- inspect (core only)
def inspect_adapter(path: str, lora_rank: int = 8) -> dict:
    """Summary of a saved adapter directory (ours or PEFT's): config, layers, parameters, size, LoRA's count.

    The files are read and checked as loading does (``fourierft.read_adapter_files``): a damaged or
    inconsistent adapter is an error here too, never a normal-looking summary.
    """
    from fourierft import read_adapter_files

    config, state, metadata, directory = read_adapter_files(path) if Path(path).is_dir() else _not_a_directory(path)
    weights = directory / "adapter_model.safetensors"
    layers, other, coefficients = [], [], 0
    for key, tensor in sorted(state.items()):
        shape = list(tensor.shape)
        if key.endswith(".fourierft_spectrum"):
            layers.append((key.removeprefix("base_model.model.").removesuffix(".fourierft_spectrum"), shape))
            coefficients += tensor.numel()
        else:
            other.append((key.removeprefix("base_model.model."), shape))
    shapes = json.loads(metadata.get("fourierft.layers", "{}"))
    lora = sum(lora_rank * (s["d_in"] + s["d_out"]) for s in shapes.values()) if shapes else None
    return {
        "peft_type": "FOURIERFT_EXTENDED" if config.uses_extensions or shapes and any(s.get("type") != "FourierFTLinear" for s in shapes.values()) else "FOURIERFT",
        "n_frequency": config.n_frequency,
        "scaling": config.scaling,
        "random_loc_seed": config.random_loc_seed,
        "target_modules": list(config.target_modules) if isinstance(config.target_modules, tuple) else config.target_modules,
        "adapted_layers": layers,
        "coefficients": coefficients,
        "other_tensors": other,
        "other_parameters": sum(_prod(s) for _, s in other),
        "file_bytes": weights.stat().st_size,
        "lora_rank": lora_rank,
        "lora_parameters": lora,
        "layer_shapes": shapes,
        "position_sets": {k.removeprefix("fourierft.positions."): v for k, v in metadata.items() if k.startswith("fourierft.positions.")},
    }


def _not_a_directory(path: str):
    raise FileNotFoundError(f"{path} is not a directory; give the adapter directory (with adapter_config.json and adapter_model.safetensors)")


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _print_inspect(summary: dict) -> None:
    print(f"peft_type {summary['peft_type']}  n_frequency {summary['n_frequency']}  scaling {summary['scaling']}  seed {summary['random_loc_seed']}")
    print(f"target_modules {summary['target_modules']}")
    for name, shape in summary["adapted_layers"]:
        dims = summary["layer_shapes"].get(name)
        where = f" on {dims['d_out']}x{dims['d_in']}" if dims else ""
        print(f"  {name:60s} coefficients {shape}{where}")
    for name, shape in summary["other_tensors"]:
        print(f"  {name:60s} trained {shape}")
    print(f"coefficients {summary['coefficients']:,d}  other trained parameters {summary['other_parameters']:,d}  file {summary['file_bytes'] / 1024:.1f} KB")
    if summary["lora_parameters"]:
        ratio = summary["lora_parameters"] / max(summary["coefficients"], 1)
        print(f"LoRA r={summary['lora_rank']} on the same layers: {summary['lora_parameters']:,d} parameters ({ratio:.1f}x)")
    else:
        print("layer shapes not recorded (a PEFT-written file): no LoRA comparison or plots")
    for key, fingerprint in summary["position_sets"].items():
        print(f"positions {key}: {fingerprint}")


def plot_adapter(path: str, out_dir: str) -> list[Path]:
    """One PNG per adapted layer (|coefficient| on the signed-frequency grid: low frequencies in the
    middle) and dw_norms.png (per layer: the Frobenius norm and largest entry of dW)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    from fourierft.functional import delta_weight, spectral_positions

    summary = inspect_adapter(path)
    tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, norms = [], {}
    for name, s in summary["layer_shapes"].items():
        coeffs = tensors[f"base_model.model.{name}.fourierft_spectrum"].float().reshape(len(s["slices"]), -1)
        rows, cols = spectral_positions(s["grid_rows"], s["d_in"], s["n"], s["seed"], s["sampler"], s["f_c"], s["width"])
        signed_j = (rows + s["grid_rows"] // 2) % s["grid_rows"] - s["grid_rows"] // 2
        signed_k = (cols + s["d_in"] // 2) % s["d_in"] - s["d_in"] // 2
        dws = [delta_weight(c, rows, cols, s["grid_rows"], s["d_in"], s["scaling"]) for c in coeffs]
        norms[name] = (sum(float(d.norm()) ** 2 for d in dws) ** 0.5, max(float(d.abs().max()) for d in dws))
        fig, a = plt.subplots(figsize=(5.5, 4.5))
        points = a.scatter(signed_k, signed_j, c=coeffs.abs().mean(0), s=6, cmap="viridis")
        a.set(title=f"{name}\n|coefficient| at spectral positions", xlabel="input frequency (signed)", ylabel="output frequency (signed)")
        fig.colorbar(points, ax=a)
        fig.tight_layout()
        target = out / f"{name}.png"
        fig.savefig(target, dpi=90)
        plt.close(fig)
        written.append(target)
    if norms:
        fig, a = plt.subplots(figsize=(7, 0.3 * len(norms) + 1.5))
        names = list(norms)
        a.barh(range(len(names)), [norms[n][0] for n in names])
        a.set(yticks=range(len(names)), yticklabels=names, xlabel="||dW||_F (bars); largest |dW| entry in the labels", title="dW per layer")
        for i, n in enumerate(names):
            a.text(norms[n][0], i, f" {norms[n][1]:.2g}", va="center", fontsize=7)
        a.tick_params(axis="y", labelsize=6)
        fig.tight_layout()
        fig.savefig(out / "dw_norms.png", dpi=90)
        plt.close(fig)
        written.append(out / "dw_norms.png")
    return written


# ---------------------------------------------------------------- parser
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, help="adapter directory written by fourierft train (best-adapter/, adapter/ or last-adapter/)")
    p.add_argument("--model", default=None, help="base model (default: the one recorded with the adapter)")
    p.add_argument("--data", default=None, help="evaluation data: a GLUE-style folder (dev.tsv), a CSV / TSV / JSON / JSONL file, an image folder or .npz")
    p.add_argument("--file", default=None, help=argparse.SUPPRESS)  # the earlier name of --data for files
    p.add_argument("--text-column", default="text", help="text classification: column with the text")
    p.add_argument("--text-pair-column", default=None, help="text classification: column with the second text of pairs")
    p.add_argument("--label-column", default="label", help="text classification: column with the labels")


def _train_epilog() -> str:
    if importlib.util.find_spec("yaml") is None or importlib.util.find_spec("transformers") is None:
        return "settings: pip install 'fourierft[train]' to list them"
    from .config import settings_help

    modules = {name: recipe(name) for name in RECIPES}
    tasks = "; ".join(f"{name}: {', '.join(sorted(m.TASKS))}" for name, m in modules.items())
    presets = "; ".join(f"{name}: {', '.join(sorted(m.PRESETS)) or '-'}" for name, m in modules.items())
    return f"tasks by recipe: {tasks}\npresets: {presets}\n\n" + settings_help({name: m.Config for name, m in modules.items()})


def build_parser(full_help: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourierft", description="FourierFT fine-tuning: fast, exact, PEFT-compatible.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="offline demo: MiniLM on Rotten Tomatoes snippets", description="Fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes critic snippets offline and report held-out accuracy before and after.")
    d.add_argument("--output-dir", default="runs/demo", help="where the adapter, metrics and plots go (default runs/demo)")
    d.add_argument("--epochs", type=float, default=None, help="training epochs (default 2)")
    d.add_argument("--train-size", type=int, default=None, help="training snippets (default 4000)")
    d.add_argument("--eval-size", type=int, default=None, help="held-out snippets (default 1000)")
    sub.add_parser("quickstart", help="train, save, reload and merge an adapter on a small model built from a config", add_help=False)
    t = sub.add_parser(
        "train", help="fine-tune: text classification / regression, causal-LM (E2E, instructions), image classification",
        description="Settings: preset, then --config YAML, then flags, then key=value overrides (later wins). The task picks the recipe.",
        epilog=_train_epilog() if full_help else "every key=value setting is listed by `fourierft train --help`",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", default=None, help="YAML file of settings")
    t.add_argument("--preset", default=None, help="the paper's hyperparameters, e.g. glue-rte-roberta-base, e2e-gpt2-medium, vit-base-cifar10")
    t.add_argument("--model", default=None, help="base model: a local directory or a Hugging Face hub id")
    t.add_argument("--data", default=None, help="text classification: a GLUE-style folder with train.tsv / dev.tsv")
    t.add_argument("--task", default=None, help="picks the recipe (see the list below); default: text classification")
    t.add_argument("--train-file", default=None, help="training data (file, image folder or .npz)")
    t.add_argument("--eval-file", default=None, help="evaluation data (default: 10%% of the training data, said when used)")
    t.add_argument("--dataset", default=None, help="text classification: a Hugging Face dataset name")
    t.add_argument("--output-dir", default=None, help="run directory")
    t.add_argument("overrides", nargs="*", help="key=value settings")
    e = sub.add_parser("eval", help="metrics of a saved adapter on labelled data")
    _data_args(e)
    pr = sub.add_parser("predict", help="predictions of a saved adapter, one JSON line per example")
    _data_args(pr)
    pr.add_argument("--out", required=True, help="JSONL file to write")
    m = sub.add_parser("merge", help="write a plain model directory with the adapter merged in")
    m.add_argument("--adapter", required=True, help="adapter directory written by fourierft train")
    m.add_argument("--model", default=None, help="base model (default: the one recorded with the adapter)")
    m.add_argument("--out", required=True, help="a new (or empty) directory")
    g = sub.add_parser("generate", help="generate with a saved causal-LM adapter (--prompt, or one prompt per line on stdin)")
    g.add_argument("--adapter", required=True, help="adapter directory written by fourierft train --task e2e / instruction")
    g.add_argument("--model", default=None, help="base model (default: the one recorded with the adapter)")
    g.add_argument("--prompt", default=None, help="an instruction (instruction adapters) or a meaning representation (E2E)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: the value the adapter was trained with")
    sv = sub.add_parser("serve", help="OpenAI-style HTTP server: many adapters on one causal-LM base, batched together")
    sv.add_argument("--model", default=None, help="causal-LM base model: a local directory or a hub id (default: the offline SmolLM2-135M-Instruct demo)")
    sv.add_argument("--adapters", default=None, help="folder of adapter directories (one per adapter, named by the folder); new ones are picked up while running")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=32, help="requests per generate call")
    sv.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    sv.add_argument("--max-prompt-tokens", type=int, default=2048)
    sv.add_argument("--watch-seconds", type=float, default=2.0, help="how often --adapters is checked for new folders (0: never)")
    i = sub.add_parser("inspect", help="summarise a saved adapter")
    i.add_argument("path", help="adapter directory")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA parameter count shown for comparison")
    i.add_argument("--plot", default=None, help="write one PNG per layer (coefficients on the spectral grid) and dw_norms.png here")
    return parser


def _threads() -> None:
    """On small machines leave a core free (a busy 2-core machine ran 5x slower with 2 threads)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= 4:
        torch.set_num_threads(max(1, cores - 1))


def main(argv=None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(full_help=given[:1] == ["train"] and any(a in ("-h", "--help") for a in given))
    args, rest = parser.parse_known_args(given)
    if args.command == "train":  # key=value overrides may stand anywhere among the options
        args.overrides += [r for r in rest if "=" in r and not r.startswith("-")]
        rest = [r for r in rest if r not in args.overrides]
    if rest and args.command != "quickstart":
        option = next((r for r in rest if r.startswith("--")), None)
        if args.command == "train" and option:
            key = option[2:].split("=", 1)[0].replace("-", "_")
            after = given[given.index(option) + 1 : given.index(option) + 2] if option in given else []
            value = option.split("=", 1)[1] if "=" in option else (after[0] if after and not after[0].startswith("-") else "...")
            parser.error(f"unrecognized option {option}; settings are given as key=value, e.g. {key}={value}")
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "quickstart":
        _require("transformers", extra="hf")
        _threads()
        from . import quickstart

        quickstart.main(rest)
    elif args.command == "demo":
        _require(*TRAIN_MODULES)
        _threads()
        from . import demo

        demo.main([f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "command" and v is not None])
    elif args.command == "serve":
        _require("transformers", "fastapi", "uvicorn", extra="serve")
        _threads()
        from . import serve

        serve.main(args)
    elif args.command == "inspect":
        try:
            summary = inspect_adapter(args.path, args.lora_rank)
        except (ValueError, OSError) as err:
            _fail(err)
        print(json.dumps(summary, indent=2)) if args.json else _print_inspect(summary)
        if args.plot:
            for path in plot_adapter(args.path, args.plot):
                print(f"wrote {path}")
    else:
        _require(*TRAIN_MODULES)
        _threads()
        _run_recipe(args)


def _run_recipe(args) -> None:
    from .data import DataError

    try:
        if args.command == "train":
            _train(args)
        elif args.command == "generate":
            _generate(args)
        elif args.command == "merge":
            print(f"merged model written to {recipe(_adapter_recipe(args.adapter)).merge(args.adapter, args.out, args.model)}")
        else:
            _use_adapter(args)
    except (DataError, ValueError, OSError) as err:
        _fail(err)


def _fail(err: BaseException):
    """One line on stderr naming the problem, exit code 2 (bad input), no traceback."""
    print(f"error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}", file=sys.stderr)
    sys.exit(2)


def _adapter_recipe(adapter: str) -> str:
    """The recipe an adapter was trained with, from its run_info.json (text classification if unrecorded)."""
    from .engine import read_run_info

    info, _ = read_run_info(adapter, "-")  # checks the directory; the model name is not needed here
    return info.get("recipe") or _AUTO_CLASSES.get(info.get("auto_class"), "text-classification")


def _use_adapter(args) -> None:
    name = _adapter_recipe(args.adapter)
    module = recipe(name)
    data = args.data or args.file
    if data is None:
        raise ValueError("no data: give --data <file or folder>")
    options = {}
    if name == "text-classification":
        options = {"text_column": args.text_column, "pair_column": args.text_pair_column, "label_column": args.label_column}
    if args.command == "eval":
        print(json.dumps(module.evaluate(args.adapter, data, args.model, **options), indent=2))
    else:
        n = module.predict(args.adapter, data, args.out, args.model, **options)
        print(f"wrote {n} predictions to {args.out}")


def _recipe_for(args) -> str:
    """The recipe of a train call: from the task (flag, override, YAML) or the preset; default text classification."""
    from .config import load_yaml

    task = args.task or next((o.split("=", 1)[1] for o in args.overrides if o.startswith("task=")), None)
    if task is None and args.config:
        task = load_yaml(args.config).get("task")
    modules = {name: recipe(name) for name in RECIPES}
    if args.preset:
        owner = next((name for name, m in modules.items() if args.preset in m.PRESETS), None)
        if owner is None:
            known = sorted(p for m in modules.values() for p in m.PRESETS)
            raise ValueError(f"unknown preset {args.preset!r}; available: {', '.join(known)}")
        task = task or modules[owner].PRESETS[args.preset].get("task")
        if task is None or task not in modules[owner].TASKS:
            return owner
    if task is None:
        return next(iter(RECIPES))
    owner = next((name for name, m in modules.items() if task in m.TASKS), None)
    if owner is None:
        raise ValueError(f"unknown task {task!r}; tasks: " + "; ".join(f"{n}: {', '.join(sorted(m.TASKS))}" for n, m in modules.items()))
    return owner


def _train(args) -> None:
    from .config import resolve_config

    name = _recipe_for(args)
    module = recipe(name)
    flags = {"model": args.model, "data": args.data, "task": args.task, "train_file": args.train_file, "eval_file": args.eval_file, "dataset": args.dataset, "output_dir": args.output_dir}
    fields = {f for f in module.Config.__dataclass_fields__}
    unsupported = [k for k, v in flags.items() if v is not None and k not in fields and k != "task"]  # the task picked the recipe
    if unsupported:
        raise ValueError(f"--{unsupported[0].replace('_', '-')} is not a setting of the {name} recipe; it reads --train-file / --eval-file")
    overrides = [o for o in args.overrides if not (o.startswith("task=") and "task" not in fields)]
    cfg = resolve_config(args.preset, args.config, {k: v for k, v in flags.items() if k in fields}, overrides, cls=module.Config, presets=module.PRESETS)
    out = Path(cfg.output_dir)
    fresh = not out.exists()
    try:
        result = module.train(cfg)
    except BaseException:
        if fresh:  # a run that failed before producing anything leaves no directory behind
            _remove_if_only_config(out)
        raise
    _end_distributed()
    shown = {k: v for k, v in result.items() if k != "model"}
    if "train_seconds" in shown:
        shown["train_seconds"] = round(shown["train_seconds"], 1)
    print(json.dumps(shown, indent=2))


def _end_distributed() -> None:
    """After a launched run (torchrun / accelerate / DeepSpeed) every process meets once more and the process
    group is closed in order; left to interpreter exit, gloo's threads can abort one process after all the
    work is done ("terminate called without an active exception"), and the launcher then reports a failure."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _remove_if_only_config(run_dir: Path) -> None:
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"config.yaml"}:
        (run_dir / "config.yaml").unlink(missing_ok=True)
        run_dir.rmdir()


def _generate(args) -> None:
    from . import causal_lm

    tokenizer, model, info = causal_lm.load_for_generation(args.adapter, args.model)
    task = info.get("task", "instruction")
    templated = task == "instruction" and bool(getattr(tokenizer, "chat_template", None))
    max_new = args.max_new_tokens or info.get("max_new_tokens", 64)
    prompts = [args.prompt] if args.prompt is not None else (line.rstrip("\n") for line in sys.stdin)
    for text in prompts:
        if not text.strip():
            continue
        example = text if task == "e2e" else {"instruction": text}
        prompt = causal_lm.build_prompt(tokenizer, task, example)
        print(causal_lm.generate(model, tokenizer, [prompt], max_new, info.get("num_beams", 1), templated=templated)[0], flush=True)


if __name__ == "__main__":
    main()

"""The ``fourierft`` command. Subcommands import what they need lazily and name the pip extra if missing.

    fourierft demo                      offline demo: MiniLM on Rotten Tomatoes (needs [train] + assets)
    fourierft quickstart                tiny model built from a config: train, save, reload, merge (needs [hf])
    fourierft train [opts] [key=value]  text classification / regression from a YAML config and/or flags
    fourierft eval | predict | merge    with a saved adapter on its base model
    fourierft inspect DIR               adapter summary, LoRA comparison, spectrum / dW plots
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

TRAIN_MODULES = ("transformers", "accelerate", "sklearn", "scipy", "matplotlib", "yaml")


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
    from .io import WEIGHTS_NAME
    from .model import read_adapter_files

    config, state, metadata, directory = read_adapter_files(path) if Path(path).is_dir() else _not_a_directory(path)
    weights = directory / WEIGHTS_NAME
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
    """One PNG per adapted layer: the learned coefficients at their spectral positions and the dW they give."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    from .functional import delta_weight, spectral_positions

    summary = inspect_adapter(path)
    tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, s in summary["layer_shapes"].items():
        coeffs = tensors[f"base_model.model.{name}.fourierft_spectrum"].float().reshape(len(s["slices"]), -1)[0]
        rows, cols = spectral_positions(s["grid_rows"], s["d_in"], s["n"], s["seed"], s["sampler"], s["f_c"], s["width"])
        dw = delta_weight(coeffs, rows, cols, s["grid_rows"], s["d_in"], s["scaling"])
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        points = a.scatter(cols, rows, c=coeffs.abs(), s=4, cmap="viridis")
        a.set(title="|coefficient| at spectral positions", xlabel="input frequency k", ylabel="output frequency j", xlim=(0, s["d_in"]), ylim=(s["grid_rows"], 0))
        fig.colorbar(points, ax=a)
        image = b.imshow(dw, cmap="RdBu_r", aspect="auto")
        b.set(title="dW (first adapted slice)" if len(s["slices"]) > 1 else "dW", xlabel="input", ylabel="output")
        fig.colorbar(image, ax=b)
        fig.suptitle(name, fontsize=9)
        fig.tight_layout()
        target = out / f"{name}.png"
        fig.savefig(target, dpi=90)
        plt.close(fig)
        written.append(target)
    return written


# ---------------------------------------------------------------- parser
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, help="adapter directory written by fourierft train (or best-adapter/)")
    p.add_argument("--model", default=None, help="base model (default: the one recorded with the adapter)")
    p.add_argument("--data", default=None, help="GLUE-style folder (uses dev.tsv)")
    p.add_argument("--file", default=None, help="CSV / TSV / JSON / JSONL file (image adapters: an image folder or .npz)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column", default=None)
    p.add_argument("--label-column", default="label")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourierft", description="FourierFT fine-tuning: fast, exact, PEFT-compatible.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="offline demo: MiniLM on Rotten Tomatoes snippets", add_help=False)
    sub.add_parser("quickstart", help="train, save, reload and merge an adapter on a small model built from a config", add_help=False)
    t = sub.add_parser("train", help="fine-tune a text classifier / regressor", description="Settings: preset, then --config YAML, then flags, then key=value overrides.")
    t.add_argument("--config", default=None, help="YAML file of settings")
    t.add_argument("--preset", default=None, help="paper hyperparameters, e.g. glue-rte-roberta-base")
    t.add_argument("--model", default=None)
    t.add_argument("--data", default=None, help="GLUE-style folder with train.tsv / dev.tsv")
    t.add_argument("--task", default=None)
    t.add_argument("--train-file", default=None)
    t.add_argument("--eval-file", default=None)
    t.add_argument("--dataset", default=None, help="Hugging Face dataset name")
    t.add_argument("--output-dir", default=None)
    t.add_argument("overrides", nargs="*", help="key=value settings (see TrainConfig)")
    e = sub.add_parser("eval", help="metrics of a saved adapter on labelled data")
    _data_args(e)
    pr = sub.add_parser("predict", help="predictions of a saved adapter, one JSON line per example")
    _data_args(pr)
    pr.add_argument("--out", required=True, help="JSONL file to write")
    m = sub.add_parser("merge", help="write a plain model directory with the adapter merged in")
    m.add_argument("--adapter", required=True)
    m.add_argument("--model", default=None)
    m.add_argument("--out", required=True)
    g = sub.add_parser("generate", help="generate with a saved causal-LM adapter (--prompt, or one prompt per line on stdin)")
    g.add_argument("--adapter", required=True)
    g.add_argument("--model", default=None)
    g.add_argument("--prompt", default=None, help="an instruction (instruction adapters) or a meaning representation (E2E)")
    g.add_argument("--max-new-tokens", type=int, default=None)
    i = sub.add_parser("inspect", help="summarise a saved adapter")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--lora-rank", type=int, default=8)
    i.add_argument("--plot", default=None, help="write one PNG per layer into this directory")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":  # key=value overrides may stand anywhere among the options
        args.overrides += [r for r in rest if "=" in r and not r.startswith("-")]
        rest = [r for r in rest if r not in args.overrides]
    if rest and args.command not in ("demo", "quickstart"):
        option = next((r for r in rest if r.startswith("--")), None)
        if args.command == "train" and option:
            key = option[2:].split("=", 1)[0].replace("-", "_")
            given = list(sys.argv[1:] if argv is None else argv)
            after = given[given.index(option) + 1 : given.index(option) + 2] if option in given else []
            value = option.split("=", 1)[1] if "=" in option else (after[0] if after and not after[0].startswith("-") else "...")
            parser.error(f"unrecognized option {option}; settings are given as key=value, e.g. {key}={value}")
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "quickstart":
        _require("transformers", extra="hf")
        from .recipes import quickstart

        quickstart.main(rest)
    elif args.command == "demo":
        _require(*TRAIN_MODULES)
        from .recipes import demo

        demo.main(rest)
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
        _run_recipe(args)


def _run_recipe(args) -> None:
    from .recipes import text_classification as tc
    from .recipes.config import resolve_config
    from .recipes.data import DataError

    try:
        if args.command == "train":
            flags = {"model": args.model, "data": args.data, "task": args.task, "train_file": args.train_file, "eval_file": args.eval_file, "dataset": args.dataset, "output_dir": args.output_dir}
            kind = _recipe_kind(args)
            if kind != "text":
                _train_other(kind, args, flags)
                return
            cfg = resolve_config(args.preset, args.config, flags, args.overrides)
            result = tc.train(cfg)
            print(json.dumps({"eval": result["eval"], "train_seconds": round(result["train_seconds"], 1), "run_dir": result["run_dir"]}, indent=2))
            return
        if args.command == "generate":
            _generate(args)
            return
        if args.command == "merge":
            print(f"merged model written to {tc.merge(args.adapter, args.out, args.model)}")
            return
        if _adapter_kind(args.adapter) == "AutoModelForImageClassification":
            from .recipes import image_classification as ic

            data = args.file or args.data
            if args.command == "eval":
                print(json.dumps(ic.evaluate(args.adapter, data, args.model), indent=2))
            else:
                print(f"wrote {ic.predict(args.adapter, data, args.out, args.model)} predictions to {args.out}")
            return
        columns = {"text_column": args.text_column, "pair_column": args.text_pair_column, "label_column": args.label_column}
        if args.command == "eval":
            print(json.dumps(tc.evaluate(args.adapter, args.data, args.file, args.model, columns), indent=2))
        elif args.command == "predict":
            n = tc.predict(args.adapter, args.out, args.data, args.file, args.model, columns)
            print(f"wrote {n} predictions to {args.out}")
    except (DataError, ValueError, OSError) as err:
        _fail(err)


def _fail(err: BaseException):
    """One line on stderr naming the problem, exit code 2 (bad input), no traceback."""
    print(f"error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}", file=sys.stderr)
    sys.exit(2)


def _adapter_kind(adapter: str) -> str | None:
    info = Path(adapter) / "run_info.json"
    return json.loads(info.read_text()).get("auto_class") if info.is_file() else None


def _recipe_kind(args) -> str:
    """"lm" for tasks e2e / instruction, "image" for task image, else "text" (flag, override, YAML or preset)."""
    from .recipes.causal_lm import LM_PRESETS
    from .recipes.image_classification import IMAGE_PRESETS

    task = args.task or next((o.split("=", 1)[1] for o in args.overrides if o.startswith("task=")), None)
    if task is None and args.config:
        from .recipes.config import load_yaml

        task = load_yaml(args.config).get("task")
    if args.preset in IMAGE_PRESETS or task == "image":
        return "image"
    if task is None and args.preset in LM_PRESETS:
        task = LM_PRESETS[args.preset]["task"]
    return "lm" if task in ("e2e", "instruction") else "text"


def _train_other(kind: str, args, flags) -> None:
    from .recipes import causal_lm, image_classification
    from .recipes.config import resolve_config

    unsupported = [k for k in ("data", "dataset") if flags.get(k)]
    if unsupported:
        raise ValueError(f"--{unsupported[0]} is for text classification; this task reads --train-file / --eval-file")
    flags = {k: v for k, v in flags.items() if k not in ("data", "dataset")}
    if kind == "image":
        flags = {"model": flags["model"], "output_dir": flags["output_dir"], "train_data": flags["train_file"], "eval_data": flags["eval_file"]}
        overrides = [o for o in args.overrides if not o.startswith("task=")]
        cfg = resolve_config(args.preset, args.config, flags, overrides, cls=image_classification.ImageConfig, presets=image_classification.IMAGE_PRESETS)
        result = image_classification.train(cfg)
    else:
        cfg = resolve_config(args.preset, args.config, flags, args.overrides, cls=causal_lm.LMConfig, presets=causal_lm.LM_PRESETS)
        result = causal_lm.train(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "model"}, indent=2))


def _generate(args) -> None:
    from .recipes import causal_lm

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

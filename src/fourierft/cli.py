"""The ``fourierft`` command. Subcommands import what they need lazily and name the pip extra if missing."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

EXTRAS = {"transformers": "hf", "huggingface_hub": "hf", "datasets": "train", "accelerate": "train"}


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extra = EXTRAS.get(missing[0], "train")
        sys.exit(f"this command needs {', '.join(missing)}: pip install 'fourierft[{extra}]'")


def inspect_adapter(path: str) -> dict:
    """Summary of a saved adapter directory (ours or PEFT's): config, layers, parameters, size."""
    from safetensors import safe_open

    directory = Path(path)
    config = json.loads((directory / "adapter_config.json").read_text())
    weights = directory / "adapter_model.safetensors"
    layers, other, coefficients = [], [], 0
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():
            shape = list(f.get_slice(key).get_shape())
            if key.endswith(".fourierft_spectrum"):
                layers.append((key.removeprefix("base_model.model.").removesuffix(".fourierft_spectrum"), shape))
                coefficients += int(torch_prod(shape))
            else:
                other.append((key.removeprefix("base_model.model."), shape))
    return {
        "peft_type": config.get("peft_type"),
        "n_frequency": config.get("n_frequency"),
        "scaling": config.get("scaling"),
        "random_loc_seed": config.get("random_loc_seed"),
        "target_modules": config.get("target_modules"),
        "adapted_layers": layers,
        "coefficients": coefficients,
        "other_tensors": other,
        "other_parameters": sum(int(torch_prod(s)) for _, s in other),
        "file_bytes": weights.stat().st_size,
        "position_sets": {k.removeprefix("fourierft.positions."): v for k, v in metadata.items() if k.startswith("fourierft.positions.")},
    }


def torch_prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _print_inspect(summary: dict) -> None:
    print(f"peft_type {summary['peft_type']}  n_frequency {summary['n_frequency']}  scaling {summary['scaling']}  seed {summary['random_loc_seed']}")
    print(f"target_modules {summary['target_modules']}")
    for name, shape in summary["adapted_layers"]:
        print(f"  {name:60s} coefficients {shape}")
    for name, shape in summary["other_tensors"]:
        print(f"  {name:60s} trained {shape}")
    print(f"coefficients {summary['coefficients']:,d}  other trained parameters {summary['other_parameters']:,d}  file {summary['file_bytes'] / 1024:.1f} KB")
    for key, fingerprint in summary["position_sets"].items():
        print(f"positions {key}: {fingerprint}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="fourierft", description="FourierFT fine-tuning: fast, exact, PEFT-compatible.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("quickstart", help="train, save, reload and merge an adapter on a small model (needs [hf])", add_help=False)
    inspect = sub.add_parser("inspect", help="summarise a saved adapter directory")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    args, rest = parser.parse_known_args(argv)
    if args.command == "quickstart":
        _require("transformers")
        from .recipes import quickstart

        quickstart.main(rest)
    elif args.command == "inspect":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        summary = inspect_adapter(args.path)
        print(json.dumps(summary, indent=2)) if args.json else _print_inspect(summary)


if __name__ == "__main__":
    main()

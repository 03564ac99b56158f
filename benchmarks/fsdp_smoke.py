"""A causal-LM recipe run through `accelerate launch --config_file examples/fsdp.yaml` on a tiny Llama
built from a config (no download): on GPUs it trains under FSDP2 and checks that the adapter written
from the sharded model loads back and generates; on a CPU Accelerate trains without sharding (the
plumbing only). Prints one line per check.

    python benchmarks/fsdp_smoke.py --out /tmp/fsdp-smoke [--processes 1]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

WORDS = "the a pub cafe near river centre serves italian french food cheap high rated family friendly is in city".split()


def tiny_llama(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=len(vocab),
                      max_position_embeddings=128, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(directory)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--processes", type=int, default=max(torch.cuda.device_count(), 1))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir, data = args.out / "tiny-llama", args.out / "train.jsonl"
    tiny_llama(model_dir)
    g = torch.Generator().manual_seed(0)
    rows = [{"instruction": " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (6,), generator=g)), "output": "the pub is near the river"} for _ in range(64)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = Path(__file__).parents[1] / "examples" / "fsdp.yaml"
    cmd = ["accelerate", "launch", "--config_file", str(config), "--num_processes", str(args.processes), "-m", "fourierft.cli", "train", "--task", "instruction",
           "--model", str(model_dir), "--train-file", str(data), "--output-dir", str(args.out / "run"), "epochs=2", "batch_size=4", "lr=5e-4", "init_weights=true",
           "target_modules=q_proj,v_proj", "n_frequency=64", "logging_steps=4", "mixed_precision=" + ("bf16" if torch.cuda.is_available() else "no")]
    if not torch.cuda.is_available():
        cmd[1:2] = ["launch", "--cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    print("accelerate launch rc", done.returncode, "(FSDP2)" if torch.cuda.is_available() else "(CPU: no sharding)")
    if done.returncode:
        print(done.stderr[-4000:])
        sys.exit(1)
    log = [json.loads(line) for line in (args.out / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    print(f"losses {losses[0]:.3f} -> {losses[-1]:.3f}", "decreasing" if losses[-1] < losses[0] else "NOT decreasing")
    from transformers import AutoModelForCausalLM

    from fourierft import FourierFTModel

    adapter = args.out / "run" / "adapter"
    loaded = FourierFTModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)
    spectra = [p for n, p in loaded.named_parameters() if "fourierft_spectrum" in n]
    print("adapter loads:", len(spectra), "coefficient tensors, all finite:", all(torch.isfinite(p).all().item() for p in spectra))
    print("warnings in the run:", json.loads((args.out / "run" / "results.json").read_text()).get("warnings", []))


if __name__ == "__main__":
    main()

"""Memory of many resident FourierFT adapters on one base model (CPU): the base is allocated in bf16
without initialisation (its pages touched), then --count adapters are added; prints the coefficient
bytes and the growth of the resident set size against the base model's bytes.

    python benchmarks/bench_resident_adapters.py                   # Llama-3.2-3B shape, 1,024 q,v adapters
"""

import argparse
import os
import time

import torch


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1024)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--layers", type=int, default=28)
    args = p.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    from fourierft import FourierFTConfig, get_fourierft_model

    cfg = LlamaConfig(hidden_size=3072, num_hidden_layers=args.layers, num_attention_heads=24, num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    for param in model.parameters():
        param.data.zero_()  # touch every page, so the resident set holds the base
    base = sum(p.numel() * p.element_size() for p in model.parameters())
    before, start = rss_mib(), time.time()
    config = FourierFTConfig(n_frequency=args.n, target_modules=["q_proj", "v_proj"])
    wrapped = get_fourierft_model(model, config, "a0")
    for i in range(1, args.count):
        wrapped.add_adapter(f"a{i}", config)
    grown = rss_mib() - before
    coefficients = sum(p.numel() * p.element_size() for n, p in wrapped.named_parameters() if "fourierft_spectrum" in n)
    print(f"base {base / 2**20:.0f} MiB (bf16); {args.count} adapters: coefficients {coefficients / 2**20:.1f} MiB = {100 * coefficients / base:.2f}% "
          f"of the base, resident set +{grown:.0f} MiB = {100 * grown * 2**20 / base:.2f}% ({time.time() - start:.0f} s to add them)")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# One short GPU run (for the device tool): the CUDA tests, then the Llama-3B-shaped benchmark in bf16
# (training step and prefill), results under $OUT. Run from the repository root with PYTHONPATH=src.
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/fourierft-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tail -5 | tee "$OUT/cuda-tests.txt"
common="--shape llama-3b --device cuda --dtype bf16 --batch 4 --seq 768 --rounds 5 --warmup 2"
python benchmarks/bench_train.py $common --modes auto separate fft --json "$OUT/llama3b-train.json" 2>&1 | grep -v -i warn | tee "$OUT/llama3b-train.md"
python benchmarks/bench_train.py $common --inference --json "$OUT/llama3b-infer.json" 2>&1 | grep -v -i warn | tee "$OUT/llama3b-infer.md"

#!/usr/bin/env bash
# One GPU run (for the device tool, about 5 minutes on an H200): the CUDA tests, then the
# Llama-shaped benchmarks (bf16 training and inference, fp16 and fp32 training, the full
# Llama-3.2-3B shape, a Llama-3.1-8B slice), a profile, the many-adapter batch and a recipe run under
# Accelerate FSDP2 (examples/fsdp.yaml, one process); tables under $OUT.
# Run from the repository root: OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fourierft-gpu}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch, transformers, peft, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/env.txt"
python -m pytest -q -s -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | grep -v -i warn > "$OUT/cuda-tests.txt"; tail -4 "$OUT/cuda-tests.txt"; grep -E "error / output|bf16 losses|FAILED|Error" "$OUT/cuda-tests.txt" | head -20
bench() { name=$1; shift; python benchmarks/bench_train.py --device cuda "$@" --json "$OUT/$name.json" 2>&1 | grep -v -i warn > "$OUT/$name.md"; grep -E "^\||^[a-z].*batch" "$OUT/$name.md"; }
qvall="frozen lora-qv peft-fourierft-qv ours-auto-qv lora-all peft-fourierft-all ours-auto-all"
bench llama3b-bf16-train --shape llama-3b --dtype bf16 --batch 4 --seq 768 --rounds 10 --warmup 3 --cases $qvall
bench llama3b-bf16-infer --shape llama-3b --dtype bf16 --batch 4 --seq 768 --rounds 10 --warmup 3 --inference --cases frozen lora-qv ours-auto-qv merged-qv lora-all ours-auto-all merged-all
bench llama3b-fp16-train --shape llama-3b --dtype fp16 --batch 4 --seq 768 --rounds 6 --warmup 2 --cases frozen lora-qv ours-auto-qv lora-all ours-auto-all
bench llama3b-fp32-train --shape llama-3b --dtype fp32 --batch 4 --seq 768 --rounds 5 --warmup 2 --cases frozen lora-qv ours-auto-qv ours-fft-qv lora-all ours-auto-all ours-fft-all
bench llama3b-full-bf16-train --shape llama-3b-full --dtype bf16 --batch 4 --seq 768 --rounds 5 --warmup 2 --cases frozen lora-qv peft-fourierft-qv ours-auto-qv lora-all ours-auto-all
bench llama8b-slice-bf16-train --shape llama-8b-slice --dtype bf16 --batch 4 --seq 1024 --rounds 6 --warmup 2 --cases frozen lora-qv ours-auto-qv lora-all ours-auto-all
python benchmarks/profile_step.py --shape llama-3b --case ours-auto-all lora-all > "$OUT/profile.txt" 2>&1; grep -E "^## " "$OUT/profile.txt"
python benchmarks/bench_multi_adapter.py --shape llama-3b --device cuda --dtype bf16 --batch 32 --seq 256 --distinct 1 8 32 --rounds 5 2>&1 | grep -v -i warn > "$OUT/multi-adapter.md"; grep -E "^\||per resident" "$OUT/multi-adapter.md"
python benchmarks/fsdp_smoke.py --out "$OUT/fsdp-smoke" --processes 1 2>&1 | grep -v -i warn | tail -6 | tee "$OUT/fsdp-smoke.txt"

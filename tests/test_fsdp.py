"""FSDP2 (torch.distributed.fsdp.fully_shard) with FourierFT adapters, 2 CPU processes over gloo: the
loss curve matches one process on the whole batch, the adapter is gathered and saved once, and it
loads back exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

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

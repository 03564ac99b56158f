"""kill -9 at random moments: a save leaves the old or the new complete adapter (never a mix) and,
after the next save, no temporary files; training resumes past an interrupted checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model

SAVER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from fourierft import FourierFTConfig, get_fourierft_model
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    models = []
    for scaling, seed in ((10.0, 0), (30.0, 1)):  # two adapters that differ in config and weights
        torch.manual_seed(seed)
        base = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 40))
        torch.manual_seed(100 + seed)
        models.append(get_fourierft_model(base, FourierFTConfig(n_frequency=200, target_modules=["0", "1"], scaling=scaling)))
    i = 0
    while True:
        models[i % 2].save_pretrained(sys.argv[1])
        i += 1
    """
)


def _models():
    out = []
    for scaling, seed in ((10.0, 0), (30.0, 1)):
        torch.manual_seed(seed)
        base = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 40))
        torch.manual_seed(100 + seed)
        out.append(get_fourierft_model(base, FourierFTConfig(n_frequency=200, target_modules=["0", "1"], scaling=scaling)))
    return out


def _base():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 40))


def _leftovers(directory: Path) -> list[str]:
    siblings = [p.name for p in directory.parent.iterdir() if p.name.startswith(".") and "fourierft-tmp" in p.name]
    inside = [p.name for p in directory.iterdir() if "tmp" in p.name]
    return siblings + inside


def kill_saves(tmp_path, trials, seed):
    rng = random.Random(seed)
    models = _models()
    x = torch.randn(4, 64)
    with torch.no_grad():  # both adapters on one base model: same base, different adapters
        wants = [FourierFTModel.from_pretrained(_base(), _save(m, tmp_path / f"ref{i}"))(x) for i, m in enumerate(models)]
    directory = tmp_path / "adapter"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    seen = set()
    for _ in range(trials):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(directory)], stdout=subprocess.PIPE, env=env)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.5, 1.5))  # imports done; saves run back to back
        child.send_signal(signal.SIGKILL)
        child.wait()
        if not (directory / "adapter_config.json").exists():
            continue  # killed before the first save finished: nothing there yet, nothing half-there
        with torch.no_grad():
            got = FourierFTModel.from_pretrained(_base(), directory)(x)
        match = [i for i, w in enumerate(wants) if torch.equal(got, w)]
        assert match, "a killed save left an adapter that is neither the old nor the new one"
        seen.add(match[0])
        models[0].save_pretrained(directory)  # the next save sweeps what the kill left
        assert _leftovers(directory) == []
    return seen


def _save(model, path):
    model.save_pretrained(path)
    return path


def test_killed_saves_leave_old_or_new_adapter(tmp_path):
    kill_saves(tmp_path, trials=4, seed=0)


@pytest.mark.slow
def test_killed_saves_many(tmp_path):
    assert kill_saves(tmp_path, trials=40, seed=1) == {0, 1}

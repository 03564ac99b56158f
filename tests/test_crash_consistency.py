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


@pytest.mark.slow
def test_killed_cli_training_resumes_to_the_same_adapter(tmp_path):
    """kill -9 of `fourierft train` at random moments, then resume=true: the same final adapter as an
    uninterrupted run, bit for bit."""
    pytest.importorskip("sklearn")
    from safetensors.torch import load_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "bad", "awful", "film", "plot"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    model_dir = tmp_path / "model"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(model_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)).save_pretrained(model_dir)
    rng = random.Random(0)
    rows = ["text,label"] + [f"{rng.choice(['good', 'great'])} film {rng.choice(['plot', 'film'])},1" if i % 2 else f"{rng.choice(['bad', 'awful'])} plot,0" for i in range(96)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "eval.csv").write_text("\n".join(rows[:33]) + "\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")

    def command(out, resume=False):
        return [sys.executable, "-m", "fourierft.cli", "train", "--model", str(model_dir), "--train-file", str(tmp_path / "train.csv"),
                "--eval-file", str(tmp_path / "eval.csv"), "--output-dir", str(out), "epochs=10", "batch_size=16", "n_frequency=100",
                "scaling=20", "max_length=8", "save_total_limit=20", "seed=0", f"resume={str(resume).lower()}"]

    start = time.monotonic()
    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    duration = time.monotonic() - start
    want = load_file(tmp_path / "whole" / "last-adapter" / "adapter_model.safetensors")
    for trial in range(3):
        out = tmp_path / f"cut{trial}"
        child = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 0.95) * duration)
        child.send_signal(signal.SIGKILL)
        child.wait()
        subprocess.run(command(out, resume=True), env=env, check=True, capture_output=True)
        got = load_file(out / "last-adapter" / "adapter_model.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), f"trial {trial}"

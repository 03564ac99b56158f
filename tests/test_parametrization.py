"""The default parametrization: c = coefficient_scale * p and scaling "auto", trained at LoRA's rates,
saved in PEFT's format (per-layer factors folded into the coefficients, exactly), and the checks that
say when settings will not train."""

import copy
import json
import math

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import load_file
from torch import nn

import fourierft
from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model
from fourierft.config import auto_scaling
from fourierft.diagnostics import layer_scales, movement_warnings, snapshot, start_warnings
from fourierft.functional import delta_weight
from fourierft.layer import FourierFTLayer

TARGETS = ["q_proj", "v_proj", "gate_proj", "down_proj"]


def layers(model):
    return {n: m for n, m in model.model.named_modules() if isinstance(m, FourierFTLayer)}


def test_auto_scaling_is_150_at_768_and_a_power_of_two_multiple_elsewhere():
    assert auto_scaling(768, 768) == 150.0
    assert auto_scaling(384, 384) == 75.0  # MiniLM
    assert auto_scaling(576, 576) == 150.0  # SmolLM2's q: sqrt / 768 = 0.75 rounds to 2^0
    assert auto_scaling(3072, 3072) == 600.0 and auto_scaling(4096, 4096) == 600.0
    assert auto_scaling(1024, 4096) == 300.0
    for rows, cols in [(7, 13), (192, 576), (11008, 4096), (50257, 768)]:
        ratio = auto_scaling(rows, cols) / 150.0
        assert math.log2(ratio) == round(math.log2(ratio))
        assert abs(math.log2(ratio) - math.log2(math.sqrt(rows * cols) / 768)) <= 0.5


def test_layers_get_their_own_scaling_and_the_dw_the_formula_gives():
    torch.manual_seed(0)
    model = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=30, target_modules=TARGETS))
    scalings = set()
    for name, layer in layers(model).items():
        spec = layer.specs["default"]
        assert spec.scaling == auto_scaling(layer.d_out, layer.d_in) and spec.coefficient_scale == 512.0
        scalings.add(spec.scaling)
        rows, cols = layer.positions("default")
        c = (layer.fourierft_spectrum["default"] * 512).double()  # c = k p
        reference = delta_weight(c, rows, cols, layer.d_out, layer.d_in, spec.scaling)
        torch.testing.assert_close(layer.delta_weight("default").double(), reference, rtol=1e-5, atol=1e-7)
    assert len(scalings) == 2  # q, v (32-wide) and gate, down (48-wide) differ


def test_auto_adapter_is_a_peft_file_with_identical_outputs_and_reloads_exactly(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = tiny_llama()
    ours = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(n_frequency=30, target_modules=TARGETS))
    ours.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["peft_type"] == "FOURIERFT" and written["scaling"] == 150.0 and "coefficient_scale" not in written
    ids = torch.randint(2, 100, (2, 9))
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    torch.testing.assert_close(theirs(input_ids=ids).logits, ours.eval()(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for name, layer in layers(ours).items():  # saved c = p * k * scaling / 150, exactly (powers of two)
        spec = layer.specs["default"]
        expected = layer.fourierft_spectrum["default"].detach() * (512 * spec.scaling / 150.0)
        assert torch.equal(saved[f"base_model.model.{name}.fourierft_spectrum"], expected)
    again = FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert again.peft_config["default"].scaling == "auto" and again.peft_config["default"].coefficient_scale == 512.0
    for name, layer in layers(again).items():  # the same trained parameters and per-layer scalings come back
        assert torch.equal(layer.fourierft_spectrum["default"], layers(ours)[name].fourierft_spectrum["default"])
        assert layer.specs["default"] == layers(ours)[name].specs["default"]


def test_peft_written_files_load_into_the_default_parametrization(tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(n_frequency=30, scaling=120.0, target_modules=TARGETS)).eval()
    theirs.save_pretrained(tmp_path)
    ours = FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert ours.peft_config["default"].scaling == 120.0 and ours.peft_config["default"].coefficient_scale == 512.0
    ids = torch.randint(2, 100, (2, 9))
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    ours.save_pretrained(tmp_path / "again")  # and writes the same coefficients back, bit for bit
    a, b = load_file(tmp_path / "adapter_model.safetensors"), load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_edited_scaling_in_the_config_is_refused(tmp_path):
    model = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=30, target_modules=TARGETS))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "scaling": 300.0}))
    with pytest.raises(fourierft.AdapterFileError, match="scaling"):
        FourierFTModel.from_pretrained(tiny_llama(), tmp_path)


def test_coefficient_scale_changes_training_speed_not_the_model(tmp_path):
    """Same c, same outputs for any coefficient_scale; Adam's step on c is lr * coefficient_scale."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(48, 40))
    x = torch.randn(16, 48)
    outs, steps = [], []
    for k in (1.0, 512.0, 3.0):
        torch.manual_seed(1)
        model = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(target_modules=["0"], n_frequency=50, scaling=20.0, coefficient_scale=k))
        outs.append(model(x))
        layer = model.model[0]
        before = layer.fourierft_spectrum["default"].detach() * k
        opt = torch.optim.Adam([layer.fourierft_spectrum["default"]], lr=1e-3)
        model(x).pow(2).mean().backward()
        opt.step()
        steps.append((layer.fourierft_spectrum["default"].detach() * k - before).abs().median().item())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-5, atol=1e-6)
    assert steps[0] == pytest.approx(1e-3, rel=1e-3) and steps[1] == pytest.approx(0.512, rel=1e-3)


def test_paper_presets_keep_the_paper_parametrization():
    from fourierft.recipes import causal_lm, image_classification
    from fourierft.recipes import config as rconfig

    sst2 = rconfig.resolve_config("glue-sst2-roberta-base", None, {}, [])
    assert (sst2.coefficient_scale, sst2.scaling, sst2.lr, sst2.head_lr) == (1.0, 140.0, 0.05, 0.006)
    for presets in (causal_lm.PRESETS, image_classification.PRESETS):
        assert all(p["coefficient_scale"] == 1.0 and isinstance(p["scaling"], float) for p in presets.values())
    assert rconfig.TrainConfig().scaling == "auto" and rconfig.TrainConfig().coefficient_scale == 512.0
    assert rconfig.coerce("scaling", "auto") == "auto" and rconfig.coerce("scaling", "120") == 120.0


# ---- a plain training loop with no optimizer settings ----
def test_plain_hf_trainer_with_its_default_optimizer_learns(tmp_path):
    """transformers.Trainer with no optimizer and no learning rate given (AdamW, 5e-5, linear decay):
    the adapters (heads frozen) learn a task a frozen random encoder cannot solve."""
    from transformers import Trainer, TrainingArguments

    from fourierft.recipes.quickstart import accuracy, make_base_model, make_data

    g = torch.Generator().manual_seed(0)
    train_x, train_y = make_data(4000, g)
    test_x, test_y = make_data(1000, g)
    majority = max(test_y.float().mean().item(), 1 - test_y.float().mean().item())
    data = [{"input_ids": x, "labels": y} for x, y in zip(train_x, train_y)]
    model = get_fourierft_model(make_base_model(), FourierFTConfig(n_frequency=500, target_modules=["query", "key", "value", "dense"], modules_to_save=["classifier"], init_weights=True))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=600, per_device_train_batch_size=32, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    check = fourierft.TrainingCheck()
    Trainer(model=model, args=args, train_dataset=data, callbacks=[check]).train()
    assert args.learning_rate == 5e-5 and check.messages == []
    assert accuracy(model, test_x, test_y) > majority + 0.1


# ---- saying when settings will not train ----
def _linear(d_out, d_in, **config):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(d_in, d_out))
    nn.init.normal_(base[0].weight, std=0.02)
    return get_fourierft_model(base, FourierFTConfig(target_modules=["0"], n_frequency=200, **config))


def test_start_warnings_name_negligible_and_huge_steps():
    assert start_warnings(_linear(256, 256), 2e-4) == []
    (huge,) = start_warnings(_linear(256, 256, init_weights=True), 5e-2)  # the paper's rate with coefficient_scale 512
    assert "diverge" in huge and "Lower lr" in huge
    (small,) = start_warnings(_linear(2048, 2048, scaling=150.0, coefficient_scale=1.0, init_weights=True), 1e-4)  # PEFT's defaults
    assert "barely move" in small and "0.04-0.3" in small
    (init,) = start_warnings(_linear(64, 64, scaling=2000.0, coefficient_scale=1.0), 1e-4)
    assert "before training" in init


def test_layer_scales_match_the_dense_dw():
    model = _linear(96, 80, scaling=30.0)
    (scale,) = layer_scales(model, lr=1e-4)
    dw = model.model[0].delta_weight("default")
    assert scale.delta_norm == pytest.approx(dw.norm().item(), rel=0.05)  # Parseval, up to self-conjugate entries
    assert scale.weight_norm == pytest.approx(model.model[0].weight_matrix().norm().item(), rel=1e-6)
    assert scale.step_norm == pytest.approx(30.0 * 512 * 1e-4 * math.sqrt(200 / (2 * 96 * 80)), rel=1e-9)


def test_movement_warning_when_coefficients_do_not_move():
    model = _linear(128, 128)
    before = snapshot(model)
    (message,) = movement_warnings(model, before, 50)
    assert "did not move" in message
    with torch.no_grad():
        model.model[0].fourierft_spectrum["default"].add_(0.01)
    assert movement_warnings(model, before, 50) == []


def test_param_groups_keep_separate_rates_for_the_paper_parametrization():
    model = _linear(64, 64, scaling=150.0, coefficient_scale=1.0)
    groups = fourierft.param_groups(model, lr=5e-2, head_lr=1e-3)  # no warning: k = 1
    assert [g["lr"] for g in groups] == [5e-2]

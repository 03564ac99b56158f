"""Parity with PEFT's FourierFT: same config and seed -> same outputs and coefficient gradients; files
load both ways with identical outputs; adapters PEFT cannot express are refused by PEFT, loudly."""

import copy
import json

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta, tiny_vit

from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model
from fourierft.layer import FourierFTLayer

peft = pytest.importorskip("peft")

CASES = {
    "bert": (tiny_bert, dict(target_modules=["query", "value"], modules_to_save=["classifier"]), "ids"),
    "roberta-bias": (tiny_roberta, dict(target_modules=["query", "value", "output.dense"], modules_to_save=["classifier"], bias="fourier_only"), "ids"),
    "bert-bias-all": (tiny_bert, dict(target_modules=["query", "value"], modules_to_save=["classifier"], bias="all"), "ids"),
    "gpt2-conv1d": (tiny_gpt2, dict(target_modules=["c_attn", "c_proj"], bias="all"), "ids"),
    "llama": (tiny_llama, dict(target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"], n_frequency_pattern={"down_proj": 70}), "ids"),
    "llama-all-linear": (tiny_llama, dict(target_modules="all-linear"), "ids"),
    "gpt2-all-linear": (tiny_gpt2, dict(target_modules="all-linear"), "ids"),
    "bert-all-linear": (tiny_bert, dict(target_modules="all-linear", task_type="SEQ_CLS", modules_to_save=["classifier"]), "ids"),
    "vit": (tiny_vit, dict(target_modules=["q_proj", "v_proj", "query", "value"], modules_to_save=["classifier"]), "pixels"),
}
TOL = dict(rtol=1e-5, atol=1e-6)


def tol(case):
    """float32 rounding adds up over every adapted layer ("all-linear": each of the model's linear layers)"""
    return dict(rtol=1e-5, atol=5e-6) if "all-linear" in case else TOL


def inputs_for(kind):
    g = torch.Generator().manual_seed(7)
    if kind == "pixels":
        return {"pixel_values": torch.randn(3, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(1, 100, (3, 11), generator=g)}


def logits(model, inputs):
    return model(**inputs).logits


def build_pair(case, **extra):
    factory, kwargs, kind = CASES[case]
    kwargs = {"n_frequency": 50, "scaling": 80.0, **kwargs, **extra}
    base = factory()
    torch.manual_seed(11)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(**copy.deepcopy(kwargs)))  # PEFT extends lists in place
    torch.manual_seed(11)
    ours = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(**kwargs))
    for model in (theirs, ours):  # identical, non-trivial heads and biases
        torch.manual_seed(3)
        for name, p in model.named_parameters():
            if p.requires_grad and "fourierft_spectrum" not in name:
                p.data.normal_(0, 0.02)
    return base, theirs, ours, inputs_for(kind)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_init_outputs_and_gradients(case):
    _, theirs, ours, inputs = build_pair(case)
    their_params = dict(theirs.base_model.model.named_parameters())
    our_layers = dict(ours.model.named_modules())
    names = [n for n, m in our_layers.items() if isinstance(m, FourierFTLayer)]
    assert names
    k = ours.peft_config["default"].coefficient_scale  # our parameter is c / k (k = 512, a power of two)
    for name in names:  # same global seed -> same N(0, 1) coefficients c, same positions
        torch.testing.assert_close(our_layers[name].fourierft_spectrum["default"] * k, their_params[f"{name}.fourierft_spectrum.default"], rtol=0, atol=0)
        their_idx = theirs.base_model.model.get_submodule(name).indices["default"]
        assert torch.equal(torch.stack(our_layers[name].positions("default")), their_idx)
    theirs.train(), ours.train()
    torch.manual_seed(0)
    y_theirs = logits(theirs.eval(), inputs)
    y_ours = logits(ours.eval(), inputs)
    torch.testing.assert_close(y_ours, y_theirs, **tol(case))
    y_theirs.pow(2).mean().backward()
    y_ours.pow(2).mean().backward()
    ours_grads = {n: p.grad for n, p in ours.model.named_parameters() if p.requires_grad}
    theirs_grads = {n.replace(".modules_to_save.default.", ".modules_to_save.default."): p.grad for n, p in theirs.base_model.model.named_parameters() if p.requires_grad}
    assert set(ours_grads) == set(theirs_grads)
    for name, grad in ours_grads.items():
        theirs_grad = theirs_grads[name] * (k if name.endswith("fourierft_spectrum.default") else 1)  # dL/dp = k dL/dc
        scale = theirs_grad.abs().max().item()  # key biases get only rounding noise (softmax is shift-invariant)
        relative = 5e-5 if "all-linear" in case else 1e-5
        torch.testing.assert_close(grad, theirs_grad, rtol=1e-4, atol=max(relative * scale, 1e-8), msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_files_load_both_ways(case, tmp_path):
    base, theirs, ours, inputs = build_pair(case)
    theirs.eval(), ours.eval()
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    written = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert written["peft_type"] == "FOURIERFT"
    peft_loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(peft_loaded, inputs), logits(ours, inputs), **tol(case))
    ours_loaded = FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs")
    torch.testing.assert_close(logits(ours_loaded, inputs), logits(theirs, inputs), **tol(case))
    # same tensor names and values in both files
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "ours" / "adapter_model.safetensors"), load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("case", ["bert", "gpt2-conv1d"])
def test_merge_and_unload_matches_peft(case):
    _, theirs, ours, inputs = build_pair(case)
    plain_theirs = theirs.merge_and_unload().eval()
    plain_ours = ours.merge_and_unload().eval()
    torch.testing.assert_close(logits(plain_ours, inputs), logits(plain_theirs, inputs), **TOL)
    for (n1, p1), (n2, p2) in zip(plain_ours.named_parameters(), plain_theirs.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "extension",
    [
        dict(scaling_pattern={"value": 3.0}),
        dict(sampler="frequency-bias", frequency_bias_center=4.0, frequency_bias_width=5.0),
        dict(target_modules=["query", "word_embeddings"]),
        dict(n_frequency=2000, clamp_n_frequency=True),
    ],
)
def test_extended_adapters_are_refused_by_peft(extension, tmp_path):
    base = tiny_bert()
    ours = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(**{"target_modules": ["query", "value"], "n_frequency": 50, **extension}))
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "FOURIERFT_EXTENDED"
    with pytest.raises(KeyError, match="FOURIERFT_EXTENDED"):
        peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    inputs = inputs_for("ids")
    again = FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits(again, inputs), logits(ours, inputs), rtol=1e-6, atol=1e-6)


def test_peft_token_classification_adapter_loads(tmp_path):
    """PEFT adds both "classifier" and "score" to a TOKEN_CLS config's modules_to_save; a model has one."""
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    base = BertForTokenClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100, num_labels=4)).eval()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(task_type="TOKEN_CLS", target_modules=["query", "value"], n_frequency=50)).eval()
    with torch.no_grad():
        theirs.base_model.model.classifier.modules_to_save["default"].weight.normal_()
    theirs.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"] == ["classifier", "score"]
    ours = FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path)
    inputs = inputs_for("ids")
    torch.testing.assert_close(logits(ours, inputs), logits(theirs, inputs), **TOL)


def test_fused_gpt2_adapter_is_extended_and_round_trips(tmp_path):
    base = tiny_gpt2()
    cfg = FourierFTConfig(n_frequency=40, target_modules=["c_attn"], fused_slices={"c_attn": {"chunks": 3, "adapt": [0, 2]}})
    ours = get_fourierft_model(copy.deepcopy(base), cfg)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "FOURIERFT_EXTENDED"
    inputs = inputs_for("ids")
    again = FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits(again, inputs), logits(ours, inputs), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["bert", "gpt2-conv1d", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accelerate_peft_keeps_outputs_and_gradients(case, dtype):
    import fourierft

    factory, kwargs, kind = CASES[case]
    base = factory().to(dtype)
    torch.manual_seed(11)
    plain = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(n_frequency=50, scaling=80.0, **kwargs))
    fast = copy.deepcopy(plain)
    assert fourierft.accelerate_peft(fast) > 0
    inputs = inputs_for(kind)
    y_plain, y_fast = logits(plain, inputs), logits(fast, inputs)
    tol = TOL if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2 * y_plain.abs().max().item())
    torch.testing.assert_close(y_fast, y_plain, **tol)
    y_plain.float().pow(2).mean().backward()
    y_fast.float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if "fourierft_spectrum" in n}
    for n, p in fast.named_parameters():
        if n in grads:
            scale = grads[n].abs().max()
            gtol = dict(rtol=1e-4, atol=1e-5 * scale) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2 * scale)
            torch.testing.assert_close(p.grad, grads[n], **gtol)
    # merged / disabled calls keep PEFT's own behaviour
    with fast.disable_adapter():
        torch.testing.assert_close(logits(fast, inputs), logits(base, inputs), rtol=0, atol=0)
    assert fourierft.accelerate_peft(fast, enable=False) > 0
    torch.testing.assert_close(logits(fast, inputs), y_plain, **tol)


def test_accelerate_peft_needs_peft_fourierft_layers():
    import fourierft

    with pytest.raises(ValueError, match="no PEFT FourierFT layer"):
        fourierft.accelerate_peft(tiny_bert())

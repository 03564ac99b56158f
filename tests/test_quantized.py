"""Quantized bases (torchao int8 weight-only, on the CPU): adapters train beside the quantized layers,
which stay quantized; outputs and gradients equal the same adapter on the dequantized weights; merging
into packed weights is refused; saved adapters load onto the unquantized base."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_llama

from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model, param_groups

torchao = pytest.importorskip("torchao")
from torchao.quantization import Int8WeightOnlyConfig, quantize_  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj"]


def quantized_and_reference():
    """(int8 weight-only model, fp32 model with exactly the dequantized weights, fp32 original)."""
    original = tiny_llama()
    quantized = copy.deepcopy(original)
    quantize_(quantized, Int8WeightOnlyConfig(), filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and name.split(".")[-1] in TARGETS)
    reference = copy.deepcopy(original)
    for (name, module), (_, q) in zip(reference.named_modules(), quantized.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in TARGETS:
            module.weight.data.copy_(q.weight.dequantize())
    return quantized, reference, original


def adapt(model, seed=1):
    torch.manual_seed(seed)
    return get_fourierft_model(model, FourierFTConfig(n_frequency=80, scaling=300.0, target_modules=TARGETS))


def batch():
    ids = torch.randint(2, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def test_adapters_on_int8_layers_equal_the_dequantized_model_in_values_and_gradients():
    quantized, reference, _ = quantized_and_reference()
    q, r = adapt(quantized), adapt(reference)
    layers = [m for m in q.modules() if getattr(m, "quantized", None)]
    assert len(layers) == 2 * 3 and all(type(m.base_layer.weight).__module__.startswith("torchao") for m in layers)
    lq, lr = q(**batch()).loss, r(**batch()).loss
    torch.testing.assert_close(lq, lr, rtol=1e-5, atol=1e-5)
    lq.backward(), lr.backward()
    gq = {n: p.grad for n, p in q.named_parameters() if p.requires_grad}
    gr = {n: p.grad for n, p in r.named_parameters() if p.requires_grad}
    assert set(gq) == set(gr) and len(gq) == 6
    for name in gq:
        torch.testing.assert_close(gq[name], gr[name], rtol=1e-4, atol=1e-6 * gr[name].abs().max().item(), msg=name)


def _train(model, steps=25):
    model.train()
    opt = torch.optim.AdamW(param_groups(model, lr=1e-4))
    losses = []
    for _ in range(steps):
        loss = model(**batch()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_training_on_an_int8_base_lowers_the_loss_like_the_dequantized_model():
    quantized, reference, _ = quantized_and_reference()
    model = adapt(quantized)
    losses, reference_losses = _train(model), _train(adapt(reference))
    assert losses[-1] < losses[0] - 0.15, losses
    assert abs(losses[-1] - reference_losses[-1]) < 0.01  # the same training, up to rounding
    assert all(type(m.base_layer.weight).__module__.startswith("torchao") for m in model.modules() if getattr(m, "quantized", None))


def test_gradient_checkpointing_on_an_int8_base():
    quantized, _, _ = quantized_and_reference()
    model = adapt(quantized)
    model.train()
    loss = model(**batch()).loss
    loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    loss2 = model(**batch()).loss
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-7)


def test_merge_is_refused_and_the_adapter_loads_on_the_unquantized_base(tmp_path):
    quantized, _, original = quantized_and_reference()
    model = adapt(quantized).eval()
    with pytest.raises(RuntimeError, match="cannot merge into this layer's torchao-quantized weight.*bf16 / fp32"):
        model.merge_and_unload()
    model.save_pretrained(tmp_path)
    full = FourierFTModel.from_pretrained(copy.deepcopy(original), tmp_path).eval()
    with torch.no_grad():
        adapted_gap = (full(**batch()).logits - model(**batch()).logits).abs().max()
        with model.disable_adapter():
            base_gap = (original(**batch()).logits - model(**batch()).logits).abs().max()
    assert adapted_gap <= 2 * base_gap + 1e-5  # the same outputs up to the quantization error


def test_requantized_merge_is_opt_in_reports_its_error_and_unmerges_exactly():
    quantized, _, _ = quantized_and_reference()
    model = adapt(quantized).eval()
    q_proj = model.model.model.layers[0].self_attn.q_proj
    packed = q_proj.base_layer.weight.dequantize().clone()
    with pytest.raises(RuntimeError, match=r"merge_and_unload\(requantize="):
        model.merge_adapter()
    dw = q_proj.delta_weight("default")
    with torch.no_grad():
        unmerged = model(**batch()).logits
    with pytest.warns(UserWarning, match="quantization error is up to"):
        report = model.merge_adapter(requantize=Int8WeightOnlyConfig())
    assert type(q_proj.base_layer.weight).__name__ == type(quantized_and_reference()[0].model.layers[0].self_attn.q_proj.weight).__name__  # still packed
    name = "model.layers.0.self_attn.q_proj"
    error = q_proj.base_layer.weight.dequantize().float() - (packed.float() + dw)
    assert report[name]["error_norm"] == pytest.approx(error.norm().item(), rel=1e-5)
    assert report[name]["dw_norm"] == pytest.approx(dw.norm().item(), rel=1e-4)
    with torch.no_grad():
        merged = model(**batch()).logits  # merged adapters are not added again
    assert 0 < (merged - unmerged).abs().max() < 0.1 * unmerged.abs().max()
    model.unmerge_adapter()
    assert torch.equal(q_proj.base_layer.weight.dequantize(), packed)  # the packed weight as it was
    with torch.no_grad():
        torch.testing.assert_close(model(**batch()).logits, unmerged)


def test_base_quantized_by_transformers_loader_with_kbit_preparation_trains(tmp_path):
    """A model loaded with transformers' TorchAoConfig (int8 weight-only) and prepared as PEFT's
    prepare_model_for_kbit_training does, with gradient checkpointing: adapters train at one lr."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, TorchAoConfig

    tiny_llama().save_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()), device_map="cpu")
    base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_fourierft_model(base, FourierFTConfig(n_frequency=80, target_modules=["q_proj", "v_proj"], init_weights=True))
    layer = model.model.model.layers[0].self_attn.q_proj
    assert layer.quantized == "torchao"
    model.train()
    losses = _train(model, steps=25)
    assert losses[-1] < losses[0] - 0.1, losses
    assert layer.quantized == "torchao" and hasattr(layer.base_layer.weight, "dequantize")  # stayed quantized


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_bitsandbytes_layers_on_the_cpu(kind):
    """bitsandbytes 4-bit (NF4) and 8-bit linear layers, on bitsandbytes' CPU backend: detected despite
    their own forward and packed storage; output = the layer's own output + x dW^T; coefficients train."""
    bnb = pytest.importorskip("bitsandbytes")
    from fourierft.layer import FourierFTLinear, adapter_class_for

    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 48)
    layer = bnb.nn.Linear4bit(64, 48, compute_dtype=torch.float32, quant_type="nf4") if kind == "nf4" else bnb.nn.Linear8bitLt(64, 48, has_fp16_weights=False)
    layer.load_state_dict(dense.state_dict())
    layer = layer.to("cpu")
    assert adapter_class_for(layer) is FourierFTLinear
    adapted = FourierFTLinear(layer)
    assert adapted.quantized == "bitsandbytes" and (adapted.d_out, adapted.d_in) == (48, 64)
    from fourierft.layer import AdapterSpec

    adapted.add_adapter("default", AdapterSpec.make(48, 100, 50.0, 0))
    adapted.set_active(["default"])
    x = torch.randn(5, 64)
    y = adapted(x)
    dw = adapted.delta_weight("default")
    with torch.no_grad():
        want = layer(x) + x @ dw.T
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    from fourierft.functional import delta_weight

    c = adapted.fourierft_spectrum["default"].detach().clone().requires_grad_()
    rows, cols = adapted.positions("default")
    with torch.no_grad():
        base_out = layer(x)
    (base_out + x @ delta_weight(c, rows, cols, 48, 64, 50.0).T).square().sum().backward()  # autograd through the reference
    torch.testing.assert_close(adapted.fourierft_spectrum["default"].grad, c.grad, rtol=1e-4, atol=1e-4 * c.grad.abs().max().item())
    with pytest.raises(RuntimeError, match="bitsandbytes-quantized weight"):
        adapted.merge()

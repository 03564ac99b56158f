"""The behaviour battery, run on every layer type: Linear, GPT-2 Conv1D, Conv2d, Embedding."""

import copy

import pytest
import torch
from conftest import tiny_bert, tiny_cnn, tiny_embedder, tiny_gpt2, tiny_llama
from torch import nn
from torch.func import functional_call

from fourierft import BASE_ADAPTER, FourierFTConfig, FourierFTModel, get_fourierft_model
from fourierft.layer import AdapterSpec, FourierFTConv2d, FourierFTEmbedding, FourierFTLayer, FourierFTLinear, ModulesToSave


def ids_input(vocab):
    def make():
        g = torch.Generator().manual_seed(1)
        return {"input_ids": torch.randint(1, vocab, (4, 9), generator=g)}

    return make


def image_input():
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(4, 3, 8, 8, generator=g)}


def embed_input():
    g = torch.Generator().manual_seed(1)
    return {"ids": torch.randint(0, 50, (4, 7), generator=g)}


CASES = {
    "linear-bert": (tiny_bert, dict(target_modules=["query", "value"], modules_to_save=["classifier"], n_frequency=40), ids_input(100), FourierFTLinear),
    "linear-llama": (tiny_llama, dict(target_modules=["q_proj", "v_proj", "down_proj"], n_frequency=60), ids_input(100), FourierFTLinear),
    "conv1d-gpt2": (tiny_gpt2, dict(target_modules=["c_attn", "c_fc"], n_frequency=50), ids_input(100), FourierFTLinear),
    "conv2d-cnn": (tiny_cnn, dict(target_modules=["stem", "pointwise", "grouped"], n_frequency=30, modules_to_save=["head"]), image_input, FourierFTConv2d),
    "embedding": (tiny_embedder, dict(target_modules=["embed"], n_frequency=70, scaling=500.0), embed_input, FourierFTEmbedding),
}


def out(model, inputs):
    with torch.no_grad():
        y = model(**inputs)
    return y.logits if hasattr(y, "logits") else y


def build(case, **overrides):
    factory, kwargs, make_input, layer_type = CASES[case]
    base = factory()
    reference = copy.deepcopy(base)
    model = get_fourierft_model(base, FourierFTConfig(**{**kwargs, **overrides}))
    return model, reference, make_input(), layer_type


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_wraps_expected_layers_and_changes_output(case):
    model, reference, inputs, layer_type = build(case)
    layers = [m for m in model.modules() if isinstance(m, FourierFTLayer)]
    assert layers and all(type(m) is layer_type for m in layers)
    assert (out(model, inputs) - out(reference, inputs)).abs().max() > 1e-4  # N(0, 1) init: dW != 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_equals_unmerged_equals_merge_and_unload(case):
    model, _, inputs, _ = build(case)
    unmerged = out(model, inputs)
    model.merge_adapter()
    assert all(m.merged_adapters == ["default"] for m in model.modules() if isinstance(m, FourierFTLayer))
    assert_close(out(model, inputs), unmerged)
    model.unmerge_adapter()
    assert_close(out(model, inputs), unmerged)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, (FourierFTLayer, ModulesToSave)) for m in plain.modules())
    assert_close(out(plain, inputs), unmerged)


@pytest.mark.parametrize("case", sorted(CASES))
def test_disabled_equals_base_even_when_merged(case):
    model, reference, inputs, _ = build(case)
    adapted = out(model, inputs)
    with model.disable_adapter():
        assert_close(out(model, inputs), out(reference, inputs))
    assert_close(out(model, inputs), adapted)
    model.merge_adapter()
    with model.disable_adapter():
        assert_close(out(model, inputs), out(reference, inputs))
    assert_close(out(model, inputs), adapted)


@pytest.mark.parametrize("case", sorted(CASES))
def test_save_load_round_trip(case, tmp_path):
    model, reference, inputs, _ = build(case)
    model.save_pretrained(tmp_path)
    loaded = FourierFTModel.from_pretrained(copy.deepcopy(reference), tmp_path)
    assert_close(out(loaded, inputs), out(model, inputs))
    assert not any(p.requires_grad for p in loaded.parameters())  # inference by default
    trainable = FourierFTModel.from_pretrained(copy.deepcopy(reference), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0] > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_several_adapters_switch_delete_and_mixed_batch(case, tmp_path):
    factory, kwargs, make_input, _ = CASES[case]
    model, reference, inputs, _ = build(case)
    second = FourierFTConfig(**{**kwargs, "random_loc_seed": 5})
    model.add_adapter("other", second)
    y_default = out(model, inputs)  # adding does not activate
    only_other = get_fourierft_model(copy.deepcopy(reference), second, adapter_name="other")
    for name, p in model.named_parameters():
        if ".other" in name or name.endswith("other"):
            target = dict(only_other.named_parameters())[name]
            target.data.copy_(p.data)
    model.set_adapter("other")
    y_other = out(model, inputs)
    assert_close(y_other, out(only_other, inputs))
    assert (y_other - y_default).abs().max() > 1e-4
    # only the active adapter trains
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("other" in n for n in trainable)

    # one batch, one adapter per row
    batch = inputs[next(iter(inputs))]
    names = ["default", "other", BASE_ADAPTER, "other"][: batch.shape[0]]
    mixed = model(**inputs, adapter_names=names)
    mixed = mixed.logits if hasattr(mixed, "logits") else mixed
    y_base = out(reference, inputs)
    for i, name in enumerate(names):
        expected = {"default": y_default, "other": y_other, BASE_ADAPTER: y_base}[name]
        assert_close(mixed[i], expected[i])
    with pytest.raises(ValueError, match="unknown adapters"):
        model(**inputs, adapter_names=["nope"] * batch.shape[0])
    with pytest.raises(ValueError, match="one name per row"):
        model(**inputs, adapter_names=["default"])

    # sub-directory per extra adapter, as PEFT
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "other" / "adapter_model.safetensors").exists()
    loaded = FourierFTModel.from_pretrained(copy.deepcopy(reference), tmp_path)
    loaded.load_adapter(tmp_path / "other", "other")
    loaded.set_adapter("other")
    assert_close(out(loaded, inputs), y_other)

    model.delete_adapter("other")
    assert model.active_adapters == ["default"]
    assert_close(out(model, inputs), y_default)
    assert not any("other" in n for n, _ in model.named_parameters())
    model.delete_adapter("default")
    assert not any(isinstance(m, (FourierFTLayer, ModulesToSave)) for m in model.modules())
    assert_close(out(model, inputs), y_base)


@pytest.mark.parametrize("case", sorted(CASES))
def test_unload_restores_base(case):
    model, reference, inputs, _ = build(case)
    model.merge_adapter()
    plain = model.unload()
    assert_close(out(plain, inputs), out(reference, inputs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_reach_coefficients_only(case):
    model, _, inputs, _ = build(case)
    model.train()
    y = model(**inputs)
    (y.logits if hasattr(y, "logits") else y).float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def _double_layer(layer_cls, base):
    base = base.double()
    layer = layer_cls(base)
    layer.add_adapter("a", AdapterSpec.make(layer.d_out, 9, 40.0, 0, sampler="uniform-fast" if layer_cls is FourierFTEmbedding else "uniform"))
    layer.set_active(["a"])
    layer.double()
    return layer


@pytest.mark.parametrize(
    "layer_cls, base, make_x",
    [
        (FourierFTConv2d, lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), lambda: torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)),
        (FourierFTConv2d, lambda: nn.Conv2d(3, 5, (1, 2), stride=2), lambda: torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)),
        (FourierFTLinear, lambda: nn.Linear(7, 5), lambda: torch.randn(3, 7, dtype=torch.float64, requires_grad=True)),
        (FourierFTEmbedding, lambda: nn.Embedding(13, 6), lambda: torch.randint(0, 13, (3, 4))),
    ],
)
def test_layer_gradcheck_float64(layer_cls, base, make_x):
    torch.manual_seed(0)
    layer = _double_layer(layer_cls, base())
    x = make_x()
    c = layer.fourierft_spectrum["a"].detach().clone().requires_grad_()

    def fn(c, *xs):
        return functional_call(layer, {"fourierft_spectrum.a": c}, (xs[0] if xs else x,))

    inputs = (c, x) if x.is_floating_point() else (c,)
    assert torch.autograd.gradcheck(fn, inputs)


def test_conv2d_delta_layout_is_documented_row_major():
    conv = nn.Conv2d(4, 6, (2, 3), groups=2).double()
    layer = FourierFTConv2d(conv)
    assert (layer.d_out, layer.d_in) == (6, 2 * 2 * 3)
    layer.add_adapter("a", AdapterSpec.make(layer.d_out, 5, 1.0, 0))
    layer.set_active(["a"])
    layer.double()
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64)
    dw = layer.delta_weight("a").reshape(6, 2, 2, 3)  # (out, in/groups, kh, kw)
    expected = conv(x) + torch.nn.functional.conv2d(x, dw, groups=2)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["linear-llama", "conv1d-gpt2", "conv2d-cnn", "embedding"])
def test_low_precision_base_models_run_and_track_float32(case, dtype, tmp_path):
    model, reference, inputs, _ = build(case)
    y32 = out(model, inputs)
    model.save_pretrained(tmp_path)
    low_model = FourierFTModel.from_pretrained(reference.to(dtype), tmp_path)
    assert all(p.dtype == torch.float32 for n, p in low_model.named_parameters() if "fourierft_spectrum" in n)
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    y = out(low_model, low)
    assert y.dtype == dtype
    assert ((y.float() - y32).abs().max() / y32.abs().max()) < 0.05
    with low_model.disable_adapter():
        y_base = out(low_model, low)
    assert (y.float() - y_base.float()).abs().max() > 0.05 * y32.abs().max() * 0.1  # the adapter is not lost


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_cache_follows_every_change(dtype):
    model, _, inputs, _ = build("linear-llama")
    model.model.to(dtype)
    model.add_adapter("other", FourierFTConfig(target_modules=["q_proj", "v_proj", "down_proj"], n_frequency=60, random_loc_seed=3))

    def fresh():  # the training path, no cache
        y = model(**inputs)
        return y.logits.detach()

    for step in range(3):
        cached = out(model, inputs)
        torch.testing.assert_close(cached, fresh(), rtol=0, atol=0)
        with torch.no_grad():  # coefficients change (as after an optimizer step)
            for name, p in model.named_parameters():
                if "fourierft_spectrum" in name:
                    p.add_(0.1)
        assert (out(model, inputs) - cached).abs().max() > 0
    model.set_adapter("other")
    torch.testing.assert_close(out(model, inputs), fresh(), rtol=0, atol=0)
    model.merge_adapter()
    torch.testing.assert_close(out(model, inputs), fresh(), rtol=0, atol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(out(model, inputs), fresh(), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["linear-llama", "conv1d-gpt2"])
def test_every_mode_matches_reference_in_training(case):
    results = {}
    for mode in ("reference", "auto", "merged", "separate", "fft"):
        model, _, inputs, _ = build(case)
        model.set_mode(mode)
        model.train()
        y = model(**inputs).logits
        y.pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[mode] = (y.detach(), grads)
    y_ref, g_ref = results.pop("reference")
    for mode, (y, grads) in results.items():
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5, msg=mode)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, g_ref[name], rtol=1e-4, atol=1e-5 * g_ref[name].abs().max().item(), msg=f"{mode} {name}")
    with pytest.raises(ValueError, match="unknown mode"):
        model.set_mode("fastest")


class SamePadConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (TF-style "same" padding), like EfficientNet-Lite's."""

    def forward(self, x):
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 0, 2)), self.weight, self.bias, self.stride)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_subclass_runs_its_own_forward(dtype, bias):
    torch.manual_seed(0)
    conv = SamePadConv(4, 6, 3, stride=2, bias=bias).to(dtype)
    reference = copy.deepcopy(conv)
    layer = FourierFTConv2d(conv)
    layer.add_adapter("a", AdapterSpec.make(layer.d_out, 20, 5.0, 0))
    layer.set_active(["a"])
    if dtype == torch.float64:
        layer.double()
    x = torch.randn(2, 4, 7, 7, dtype=dtype)
    with torch.no_grad():
        reference.weight += layer.delta_weight("a").view_as(reference.weight).to(dtype)
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(layer(x), reference(x), **tol)

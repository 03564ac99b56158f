"""Each defect found in review, with a test that failed before its fix: stale inference results,
float64 merges through float32, wrappers that could not be copied, PEFT's layer-index and pattern
rules, exact unmerge below float32, regexes from files that never return."""

import copy
import io
import json

import pytest
import torch
from conftest import tiny_bert
from torch import nn

from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model

peft = pytest.importorskip("peft")


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 40), nn.GELU(), nn.Linear(40, 32)).to(dtype)


def adapted(dtype=torch.float32, **kw):
    torch.manual_seed(1)
    return get_fourierft_model(mlp(dtype), FourierFTConfig(n_frequency=60, target_modules=["0", "2"], scaling=200.0, **kw))


WRITES = {
    "coeffs .data.add_": lambda m: m.model[0].fourierft_spectrum["default"].data.add_(1.0),
    "coeffs .data.copy_": lambda m: m.model[0].fourierft_spectrum["default"].data.copy_(torch.randn(60)),
    "weight .data.mul_": lambda m: m.model[0].base_layer.weight.data.mul_(2),
    "fused AdamW step": lambda m: _fused_adamw_step(m),
}


def _fused_adamw_step(model):
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    torch.optim.AdamW(params, lr=0.5, fused=True).step()


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("tokens", [1, 64], ids=["decode", "prefill"])
def test_no_grad_output_follows_every_write(write, tokens):
    """D2: no result computed before a write is reused after it, whatever the write."""
    model = adapted()
    x = torch.randn(tokens, 48)
    with torch.no_grad():
        model(x)
        WRITES[write](model)
        after = model(x)
    fresh = copy.deepcopy(model)  # no history at all
    with torch.no_grad():
        want = fresh(x)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)


def test_float64_merge_stays_float64():
    """D1: merged == unmerged to float64 rounding; unmerge restores the weight to ~1e-15."""
    model = adapted(torch.float64)
    x = torch.randn(5, 48, dtype=torch.float64)
    weight = model.model[0].base_layer.weight.detach().clone()
    with torch.no_grad():
        y = model(x)
        model.merge_adapter()
        y_merged = model(x)
        model.unmerge_adapter()
    assert (y - y_merged).abs().max() < 1e-12
    assert (model.model[0].base_layer.weight - weight).abs().max() < 1e-14


def test_bf16_merge_then_unmerge_restores_the_base_exactly():
    model = adapted(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        model.merge_adapter()
        assert not torch.equal(model.model[0].base_layer.weight, before["model.0.base_layer.weight"])
        model.unmerge_adapter()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_wrapper_deepcopies_and_pickles(tmp_path):
    """D3: copy.deepcopy and torch.save of the wrapped model (Trainer, EMA and model soups copy models)."""
    model = get_fourierft_model(tiny_bert(), FourierFTConfig(n_frequency=30, target_modules=["query", "value"], modules_to_save=["classifier"]))
    ids = torch.randint(1, 100, (2, 9))
    model.eval()
    twin = copy.deepcopy(model)
    assert type(twin) is type(model)
    torch.testing.assert_close(twin(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    with torch.no_grad():  # independent parameters
        next(p for n, p in twin.named_parameters() if "fourierft_spectrum" in n).add_(1.0)
    assert not torch.equal(twin(input_ids=ids).logits, model(input_ids=ids).logits)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # the user's own pickle, not an adapter file
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    loaded.save_pretrained(tmp_path)  # still a working wrapper
    assert (tmp_path / "adapter_config.json").is_file()


def _adapted_names(model):
    from fourierft.inject import adapter_layers

    return sorted(name for name, _ in adapter_layers(model))


def test_layers_to_transform_without_pattern_is_peft_rule():
    """D5: the first numbered path segment is the layer index (T5: encoder.block.1.layer.0...)."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=3, num_heads=4)
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(cfg)
    kwargs = dict(n_frequency=20, target_modules=["q", "v"], layers_to_transform=[1])
    ours = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(**kwargs))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(**kwargs))
    their_names = sorted(n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if type(m).__name__ == "FourierFTLinear")
    assert _adapted_names(ours.model) == their_names
    assert all(".block.1." in n for n in their_names)


@pytest.mark.parametrize("pattern", [{"query|value": 20}, {"(query|value)": 20}, {"value": 20}, {"attention.self.query": 7}])
def test_n_frequency_pattern_read_as_peft_reads_it(pattern, tmp_path):
    base = tiny_bert()
    kwargs = dict(n_frequency=30, target_modules=["query", "value"], n_frequency_pattern=pattern)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(**kwargs))
    ours = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(**kwargs))
    their_n = {n.removeprefix("base_model.model."): m.fourierft_n_frequency["default"] for n, m in theirs.named_modules() if type(m).__name__ == "FourierFTLinear"}
    our_n = {n: layer.specs["default"].n for n, layer in __import__("fourierft.inject", fromlist=["x"]).adapter_layers(ours.model)}
    assert our_n == their_n
    ours.save_pretrained(tmp_path)
    peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)  # PEFT loads what we wrote


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "n_frequency_pattern"])
def test_pathological_regex_from_a_file_does_not_hang(field, tmp_path):
    """Nested quantifiers from adapter_config.json (Python's re takes minutes on these): matched by
    a linear-time-guarded engine, so loading ends within seconds, loaded or with a clear error."""
    import time

    model = get_fourierft_model(tiny_bert(), FourierFTConfig(n_frequency=20, target_modules=["query", "value"]))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    evil = r"(.*)*(.*)*(.*)*z"
    config[field] = {evil: 10} if field == "n_frequency_pattern" else evil
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    start = time.monotonic()
    try:
        FourierFTModel.from_pretrained(tiny_bert(), tmp_path)
    except ValueError as err:
        assert "matched no module" in str(err) or "regular expression" in str(err)
    assert time.monotonic() - start < 10


def test_regex_timeout_and_syntax_errors_are_clear(monkeypatch):
    from fourierft import inject

    with pytest.raises(ValueError, match="invalid regular expression"):
        inject.regex_match("(unclosed", "bert.encoder")

    def slow(*args, **kwargs):
        raise TimeoutError("regex timed out")

    monkeypatch.setattr(inject.regex, "match", slow)
    with pytest.raises(ValueError, match="took over .* simplify it"):
        inject.regex_match("(a+)+b", "aaaa")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_thousand_merge_unmerge_cycles_stay_bounded(dtype):
    model = adapted(dtype)
    weight = model.model[0].base_layer.weight
    before = weight.detach().clone()
    for _ in range(1000):
        model.merge_adapter()
        model.unmerge_adapter()
    drift = (weight.float() - before.float()).abs().max().item()
    assert drift == 0.0 if dtype == torch.bfloat16 else drift < 1e-6


def test_remote_code_is_never_trusted_by_the_library():
    from pathlib import Path

    src = Path(__file__).parents[1] / "src" / "fourierft"
    offenders = [p.name for p in src.rglob("*.py") if "trust_remote_code=True" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("how", ["greedy", "beams", "sampling"])
def test_generate_with_one_adapter_per_prompt_matches_each_alone(how):
    """Beams and returned sequences expand the per-prompt adapter list; every prompt's output equals
    generating it alone with its adapter active."""
    from conftest import tiny_llama

    torch.manual_seed(0)
    model = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=40, scaling=300.0, target_modules=["q_proj", "v_proj"]), "a")
    torch.manual_seed(1)
    model.add_adapter("b", FourierFTConfig(n_frequency=40, scaling=300.0, target_modules=["q_proj", "v_proj"]))
    model.eval()
    prompts = torch.randint(2, 100, (3, 6), generator=torch.Generator().manual_seed(2))
    names = ["a", "b", "__base__"]
    kwargs = {"greedy": dict(do_sample=False), "beams": dict(num_beams=3, num_return_sequences=2, do_sample=False), "sampling": dict(do_sample=True, num_return_sequences=2, top_k=1)}[how]  # top_k=1: the sampling path, deterministic
    kwargs.update(max_new_tokens=6, pad_token_id=0)

    def run(ids, adapter_names=None):
        torch.manual_seed(7)
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=adapter_names, **kwargs)

    together = run(prompts, names)
    per = together.shape[0] // len(names)
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                alone = run(prompts[i : i + 1])
        else:
            model.set_adapter(name)
            alone = run(prompts[i : i + 1])
        assert torch.equal(together[i * per : (i + 1) * per], alone), (how, name)


@pytest.mark.parametrize("mode", ["auto", "fft"])
def test_coefficient_gradient_follows_an_input_rewritten_in_place(mode):
    """An input buffer reused across steps (written through .data) gives the gradient of its new
    values: no spectrum of an earlier input is reused."""
    model = adapted()
    model.set_mode(mode)
    x = torch.randn(16, 48)

    def grads(inp):
        model.zero_grad()
        model(inp).square().sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    grads(x)
    x.data.copy_(torch.randn(16, 48))
    got = grads(x)
    want = grads(x.clone())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

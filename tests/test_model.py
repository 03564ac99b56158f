"""Config, target matching, model API, clear errors, optimizer groups, HF integration."""

import copy
import dataclasses
import subprocess
import sys

import pytest
import torch
from conftest import tiny_bert, tiny_cnn, tiny_embedder, tiny_gpt2, tiny_llama, tiny_vit
from torch import nn

import fourierft
from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model, param_groups
from fourierft.layer import FourierFTLayer
from fourierft.config import auto_scaling


def adapted_names(model):
    return sorted(n for n, m in model.model.named_modules() if isinstance(m, FourierFTLayer))


# ---- config ----
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_frequency=0), "n_frequency must be a positive integer"),
        (dict(n_frequency=1.5), "n_frequency must be a positive integer"),
        (dict(scaling=float("nan")), 'scaling must be "auto" or a finite number'),
        (dict(scaling="big"), 'scaling must be "auto" or a finite number'),
        (dict(coefficient_scale=0), "coefficient_scale must be a positive number"),
        (dict(bias="some"), "bias must be one of"),
        (dict(sampler="gauss"), "sampler must be one of"),
        (dict(target_modules=".*q", layers_to_transform=[0]), "layers_to_transform cannot be used"),
        (dict(target_modules=["q"], layers_pattern="layers"), "layers_pattern needs layers_to_transform"),
        (dict(n_frequency_pattern={"q": -1}), r"n_frequency_pattern\['q'\]"),
        (dict(fused_slices={"c_attn": {"chunks": 3, "adapt": [3]}}), "distinct slice indices in"),
        (dict(fused_slices={"c_attn": {"chunks": 3}}), "exactly the keys"),
        (dict(target_modules=[1, 2]), "target_modules must hold str"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        FourierFTConfig(**kwargs)


def test_config_defaults_match_peft_and_round_trip():
    peft = pytest.importorskip("peft")
    ours, theirs = FourierFTConfig(), peft.FourierFTConfig()
    for field in ("n_frequency", "random_loc_seed", "init_weights", "bias", "fan_in_fan_out"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.scaling == "auto" and ours.file_scaling == theirs.scaling == 150.0  # "auto" is 150 at 768 x 768
    cfg = FourierFTConfig(target_modules=["a", "b"], n_frequency_pattern={"a": 3}, fused_slices={"c": {"chunks": 2, "adapt": [1]}})
    assert FourierFTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_frequency = 5  # frozen
    targets = ["query"]
    FourierFTConfig(target_modules=targets)
    assert targets == ["query"]


def test_user_config_is_never_mutated():
    cfg = FourierFTConfig(n_frequency=20)  # target_modules resolved from the model type
    model = get_fourierft_model(tiny_bert(), cfg)
    assert cfg.target_modules is None
    assert model.peft_config["default"].target_modules == ("query", "value")


# ---- matching ----
def test_list_regex_exclude_layers_and_patterns():
    m = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=10, target_modules=["q_proj", "mlp.up_proj"], exclude_modules=["model.layers.1.self_attn.q_proj"]))
    assert adapted_names(m) == ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    m = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=10, target_modules=r".*layers\.1\.self_attn\.(k|v)_proj"))
    assert adapted_names(m) == ["model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"]
    m = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=10, target_modules=["v_proj"], layers_to_transform=[1], layers_pattern="layers"))
    assert adapted_names(m) == ["model.layers.1.self_attn.v_proj"]
    m = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=10, target_modules=["q_proj", "v_proj"], n_frequency_pattern={r"layers\.0\.self_attn\.q_proj": 33}, scaling_pattern={"v_proj": 7.0}))
    layers = dict(m.model.named_modules())
    assert layers["model.layers.0.self_attn.q_proj"].specs["default"].n == 33
    assert layers["model.layers.1.self_attn.q_proj"].specs["default"].n == 10
    assert layers["model.layers.1.self_attn.v_proj"].specs["default"].scaling == 7.0
    q = layers["model.layers.1.self_attn.q_proj"]
    assert q.specs["default"].scaling == auto_scaling(q.d_out, q.d_in)


def test_default_targets_by_model_type():
    names = adapted_names(get_fourierft_model(tiny_vit(), FourierFTConfig(n_frequency=10)))
    assert len(names) == 4 and all(n.endswith(("query", "value", "q_proj", "v_proj")) for n in names)
    with pytest.raises(ValueError, match="no default for model type"):
        get_fourierft_model(tiny_cnn(), FourierFTConfig(n_frequency=10))


def test_all_linear_targets_every_linear_layer_but_the_heads(tmp_path):
    import json

    from conftest import tiny_roberta

    llama = get_fourierft_model(tiny_llama(tie=True), FourierFTConfig(n_frequency=10, target_modules="All-Linear"))
    assert len(adapted_names(llama)) == 14 and "lm_head" not in adapted_names(llama)  # 7 per layer; the tied output layer stays
    saved = llama.peft_config["default"].target_modules
    assert sorted(saved) == adapted_names(llama)  # spelled out, as PEFT saves it
    llama.save_pretrained(tmp_path / "a")
    assert sorted(json.loads((tmp_path / "a" / "adapter_config.json").read_text())["target_modules"]) == adapted_names(llama)
    gpt2 = get_fourierft_model(tiny_gpt2(), FourierFTConfig(n_frequency=10, target_modules=["all-linear"]))
    assert adapted_names(gpt2) == sorted(f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    one_layer = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=10, target_modules="all-linear", layers_to_transform=[1]))
    assert len(adapted_names(one_layer)) == 7 and all(".layers.1." in n for n in adapted_names(one_layer))
    roberta = get_fourierft_model(tiny_roberta(), FourierFTConfig(n_frequency=10, target_modules="all-linear", task_type="SEQ_CLS", modules_to_save=["classifier"]))
    assert adapted_names(roberta) and not [n for n in adapted_names(roberta) if n.startswith("classifier")]
    bert = get_fourierft_model(tiny_bert(), FourierFTConfig(n_frequency=10, target_modules="all-linear", task_type="SEQ_CLS"))
    assert "classifier" not in adapted_names(bert) and "bert.pooler.dense" in adapted_names(bert)
    bert.add_adapter("second", FourierFTConfig(n_frequency=10, target_modules="all-linear", task_type="SEQ_CLS"))  # already wrapped layers count
    assert sorted(bert.peft_config["second"].target_modules) == adapted_names(bert)
    with pytest.raises(ValueError, match="found no linear layer"):
        get_fourierft_model(nn.Sequential(nn.Embedding(10, 4)), FourierFTConfig(n_frequency=10, target_modules="all-linear"))


# ---- errors that name the module and the fix ----
def test_n_too_large_names_layer_and_clamp_opt_in():
    with pytest.raises(ValueError, match=r"exceeds the 12x8 = 96 spectral entries of 'pointwise'.*clamp_n_frequency"):
        get_fourierft_model(tiny_cnn(), FourierFTConfig(n_frequency=100, target_modules=["pointwise"]))
    m = get_fourierft_model(tiny_cnn(), FourierFTConfig(n_frequency=100, target_modules=["pointwise"], clamp_n_frequency=True))
    assert m.model.pointwise.specs["default"].n == 96


def test_nothing_matched_lists_candidates():
    with pytest.raises(ValueError, match=r"matched no module of BertForSequenceClassification; adaptable modules include \[.*query"):
        get_fourierft_model(tiny_bert(), FourierFTConfig(target_modules=["q_proj"]))


def test_target_inside_modules_to_save_refused():
    from conftest import tiny_roberta

    with pytest.raises(ValueError, match=r"target 'classifier.dense' lies inside modules_to_save entry 'classifier'"):
        get_fourierft_model(tiny_roberta(), FourierFTConfig(n_frequency=10, target_modules=["dense"], modules_to_save=["classifier"]))


def test_unsupported_layer_type_names_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(TypeError, match=r"module '1' is a LayerNorm, which FourierFT cannot adapt"):
        get_fourierft_model(model, FourierFTConfig(n_frequency=4, target_modules=["1"]))
    assert isinstance(model[0], nn.Linear)  # nothing left half-wrapped


def test_failed_injection_leaves_model_unchanged():
    model = tiny_cnn()
    with pytest.raises(ValueError, match="'pointwise'"):
        get_fourierft_model(model, FourierFTConfig(n_frequency=100, target_modules=["stem", "pointwise"]))
    assert type(model.stem) is nn.Conv2d and type(model.pointwise) is nn.Conv2d


def test_tied_weights_refused_unless_untied(ids):
    model = tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match=r"weight of 'lm_head' is tied to \['model.embed_tokens.weight'\].*untie_weights=True"):
        get_fourierft_model(model, FourierFTConfig(n_frequency=10, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match=r"'model.embed_tokens' is tied"):
        get_fourierft_model(model, FourierFTConfig(n_frequency=10, target_modules=["embed_tokens"]))
    before = model(input_ids=ids).logits
    wrapped = get_fourierft_model(model, FourierFTConfig(n_frequency=10, target_modules=["embed_tokens"], untie_weights=True, init_weights=True))
    assert wrapped.model.lm_head.weight is not wrapped.model.model.embed_tokens.base_layer.weight
    torch.testing.assert_close(wrapped(input_ids=ids).logits, before)


# ---- fused projections ----
def test_fused_slices_adapt_q_and_v_of_gpt2_c_attn(ids):
    base = tiny_gpt2()
    reference = copy.deepcopy(base)
    cfg = FourierFTConfig(n_frequency=30, target_modules=["c_attn"], fused_slices={"c_attn": {"chunks": 3, "adapt": [0, 2]}})
    model = get_fourierft_model(base, cfg)
    assert model.get_nb_trainable_parameters()[0] == 2 * 2 * 30  # layers x (q, v) x n
    layer = model.model.transformer.h[0].attn.c_attn
    dw = layer.delta_weight("default")  # (3 * 32, 32) as (d_out, d_in)
    assert dw[32:64].abs().max() == 0 and dw[:32].abs().max() > 0 and dw[64:].abs().max() > 0
    # the key projection output is untouched
    x = torch.randn(2, 5, 32)
    ref_layer = reference.transformer.h[0].attn.c_attn
    torch.testing.assert_close(layer(x)[..., 32:64], ref_layer(x)[..., 32:64])
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged.transformer.h[0].attn.c_attn.weight[:, 32:64], ref_layer.weight[:, 32:64])


# ---- optimizer groups and training defaults ----
def test_param_groups_split_coefficients_and_head(tmp_path):
    model = get_fourierft_model(tiny_bert(), FourierFTConfig(n_frequency=10, target_modules=["query"], modules_to_save=["classifier"], bias="fourier_only"))
    groups = param_groups(model, lr=0.05, head_lr=0.002, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["fourierft_coefficients", "head"]
    assert groups[0]["lr"] == 0.05 and groups[1]["lr"] == 0.002
    assert sum(p.numel() for p in groups[0]["params"]) == 2 * 10
    assert sum(p.numel() for p in groups[1]["params"]) == (32 * 3 + 3) + 2 * 32  # classifier + 2 query biases
    torch.optim.AdamW(groups)  # accepted as is
    model.save_pretrained(tmp_path)
    frozen = FourierFTModel.from_pretrained(tiny_bert(), tmp_path)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(frozen)


def test_one_lora_style_lr_trains_by_default_and_not_in_peft_parametrization():
    """Recover a teacher's spectral update of a 256x256 layer at one LoRA-style lr of 1e-4: the default
    parametrization fits it; PEFT's (coefficient_scale=1, scaling 150) leaves the loss where it started
    and needs the paper's separate coefficient rate (param_groups, 5e-2)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(256, 256))
    teacher = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(target_modules=["0"], random_loc_seed=1))
    x = torch.randn(512, 256)
    with torch.no_grad():
        target = teacher(x)

    def run(groups_fn, **config):
        torch.manual_seed(1)
        model = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(target_modules=["0"], random_loc_seed=1, **config))
        opt = torch.optim.AdamW(groups_fn(model))
        losses = []
        for _ in range(150):
            loss = (model(x) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses[0], losses[-1]

    one_lr = lambda m: [{"params": [p for p in m.parameters() if p.requires_grad], "lr": 1e-4}]  # noqa: E731
    start, good = run(one_lr)
    start_peft, bad = run(one_lr, scaling=150.0, coefficient_scale=1.0)
    _, paper = run(lambda m: param_groups(m, lr=5e-2), scaling=150.0, coefficient_scale=1.0)
    assert good < 0.05 * start, (start, good)
    assert bad > 0.8 * start_peft, (start_peft, bad)
    assert paper < 0.05 * start_peft, (start_peft, paper)


def test_param_groups_warns_about_paper_rates_in_the_default_parametrization():
    model = get_fourierft_model(nn.Sequential(nn.Linear(32, 32)), FourierFTConfig(target_modules=["0"], n_frequency=10))
    with pytest.warns(UserWarning, match="coefficient_scale=512 moves each coefficient by about 25.6"):
        param_groups(model, lr=5e-2)
    groups = param_groups(model)  # the defaults: one rate, no warning
    assert [g["lr"] for g in groups] == [2e-4]


# ---- HF integration ----
def test_trainer_step_gradient_checkpointing_and_generate(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    model = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=20, target_modules=["q_proj", "v_proj"]))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    data = [{"input_ids": torch.randint(2, 100, (8,)).tolist(), "labels": torch.randint(2, 100, (8,)).tolist()} for _ in range(8)]

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=0.05, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate).train()
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every coefficient moved
    model.eval()
    out = model.generate(input_ids=torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_trainer_keeps_model_columns():
    import inspect

    model = get_fourierft_model(tiny_bert(), FourierFTConfig(n_frequency=10, target_modules=["query"]))
    assert "input_ids" in inspect.signature(model.forward).parameters


def test_embedding_adapter_on_plain_module():
    model = get_fourierft_model(tiny_embedder(), FourierFTConfig(n_frequency=30, target_modules=["embed"]))
    layer = model.model.embed
    assert layer.specs["default"].sampler == "uniform-fast"
    ids = torch.tensor([[0, 1, 2]])
    dense = layer.base_layer.weight + layer.delta_weight("default")
    torch.testing.assert_close(layer(ids), dense[ids])


def test_import_does_not_load_transformers():
    code = "import sys, fourierft; bad = [m for m in ('transformers', 'datasets', 'peft', 'fourierft.recipes') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_is_small_and_explicit():
    assert set(fourierft.__all__) == {
        "AdapterFileError", "BASE_ADAPTER", "FourierFTConfig", "FourierFTModel", "accelerate_peft", "default_target_modules",
        "functional", "get_fourierft_model", "param_groups", "read_adapter_files", "TrainingCheck",
    }


def test_recipes_and_cli_use_only_the_public_api():
    """The command line and recipes import fourierft's top-level names only (no io / state / inject / layer / kernels)."""
    import re
    from pathlib import Path

    src = Path(fourierft.__file__).parent
    private = re.compile(r"from fourierft\.(io|state|inject|layer|kernels|spectral)\b|import fourierft\.(io|state|inject|layer|kernels)|from \.\.(io|state|inject|layer|kernels)\b")
    offenders = [p.name for p in (src / "recipes").glob("*.py") if private.search(p.read_text())]
    assert offenders == []

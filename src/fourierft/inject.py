"""Find target modules, wrap them in adapter layers, and set what trains.

Matching follows PEFT: a list entry matches a module name exactly or as a ".suffix"; a str is a
full regex match; "all-linear" is every linear layer except the model's output layer, the
modules_to_save and the task head, expanded to their full names.
n_frequency_pattern / scaling_pattern keys are regexes matched against the end of the module name
(``(.*\\.)?key$``); the first matching key wins.
"""

from __future__ import annotations

import regex
from collections.abc import Iterator

from torch import nn

from .config import ALL_LINEAR, FourierFTConfig
from .layer import AdapterSpec, FourierFTEmbedding, FourierFTLayer, FourierFTLinear, ModulesToSave, adapter_class_for

__all__ = [
    "inject_adapter", "adapter_layers", "modules_to_save_wrappers", "set_trainable", "default_target_modules", "resolve_targets", "replace_module",
]

# Defaults for transformers model types when target_modules is None (attention query and value).
_DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "vit": ["query", "value", "q_proj", "v_proj"],  # names before / after transformers 5
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "t5": ["q", "v"],
}


def default_target_modules(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _DEFAULT_TARGETS:
        raise ValueError(
            f"target_modules is not set and there is no default for model type {model_type!r}; "
            "pass target_modules=[...] with the names of the layers to adapt (e.g. ['q_proj', 'v_proj'])"
        )
    return _DEFAULT_TARGETS[model_type]


# Task heads PEFT adds to modules_to_save (by attribute name) for these task types.
_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}


def all_linear_modules(model: nn.Module, config: FourierFTConfig) -> list[str]:
    """Full names of the layers "all-linear" adapts: nn.Linear (quantized ones included), GPT-2's Conv1D and
    already wrapped linear layers, less the output layer (``get_output_embeddings``), the modules_to_save
    and the task head of classification / QA task types (all with their children)."""
    heads = [model.get_output_embeddings()] if hasattr(model, "get_output_embeddings") else []
    heads += [getattr(model, n, None) for n in _TASK_HEADS.get(config.task_type, ())]
    skip = {name for name, m in model.named_modules() if any(m is h for h in heads)}
    skip |= set(_modules_to_save_names(model, config))
    names = []
    for name, module in model.named_modules():
        if not name or _inside_wrapper(name) or isinstance(module, ModulesToSave) or any(_within(name, s) for s in skip):
            continue
        if isinstance(module, FourierFTLinear) or (not isinstance(module, FourierFTLayer) and adapter_class_for(module) is FourierFTLinear):
            names.append(name)
    if not names:
        raise ValueError(f"target_modules={ALL_LINEAR!r} found no linear layer in {type(model).__name__} besides its output layer; name the layers to adapt")
    return names


def resolve_targets(model: nn.Module, config: FourierFTConfig) -> FourierFTConfig:
    """``config`` with the layers to adapt spelled out where they depend on the model: the model type's
    default when target_modules is None, the full names when it is "all-linear" (as PEFT saves them)."""
    if config.target_modules is None:
        return config.replace(target_modules=default_target_modules(model))
    if config.target_modules == ALL_LINEAR:
        return config.replace(target_modules=all_linear_modules(model, config))
    return config


REGEX_TIMEOUT_S = 0.25  # per match: patterns may come from adapter files


def regex_match(pattern: str, name: str, full: bool = False):
    """``re.match`` / ``re.fullmatch`` with a time bound (the ``regex`` engine), for patterns that may
    come from files: a pattern with nested quantifiers is refused instead of hanging."""
    try:
        return (regex.fullmatch if full else regex.match)(pattern, name, timeout=REGEX_TIMEOUT_S)
    except regex.error as err:
        raise ValueError(f"invalid regular expression {pattern!r} in the adapter config: {err}") from None
    except TimeoutError:
        raise ValueError(
            f"regular expression {pattern!r} took over {REGEX_TIMEOUT_S} s to match the module name {name!r} "
            "(nested quantifiers?); simplify it"
        ) from None


def _name_matches(name: str, spec) -> bool:
    if isinstance(spec, str):
        return regex_match(spec, name, full=True) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def _layer_index_ok(name: str, config: FourierFTConfig) -> bool:
    """PEFT's rule: the first numbered path segment (after ``layers_pattern`` when given) is the layer index."""
    if config.layers_to_transform is None:
        return True
    wanted = [config.layers_to_transform] if isinstance(config.layers_to_transform, int) else config.layers_to_transform
    if not config.layers_pattern:
        match = regex_match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [config.layers_pattern] if isinstance(config.layers_pattern, str) else config.layers_pattern
        match = next((m for m in (regex_match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name) for p in patterns) if m), None)
    return match is not None and int(match.group("idx")) in wanted


def pattern_value(patterns: dict, name: str, default):
    """The value of the first key that matches ``name`` as PEFT reads n_frequency_pattern: the key is
    spliced unbracketed into ``(.*[.])?{key}$`` (re.match), so write alternatives as "(query|value)"."""
    for key, value in patterns.items():
        if regex_match(rf"(.*\.)?{key}$", name):
            return value
    return default


def _fused_spec(config: FourierFTConfig, name: str):
    for key, spec in config.fused_slices.items():
        if _name_matches(name, [key]):
            return spec["chunks"], tuple(spec["adapt"])
    return 1, (0,)


def _parameter_owners(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """id(parameter) -> every (module name, parameter name) holding it (tied weights have several)."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, p in mod.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append((mod_name, p_name))
    return owners


def _tied_elsewhere(owners: dict, name: str, module: nn.Module) -> list[str]:
    return [
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, p_name in owners.get(id(module.weight), [])
        if mod_name != name and mod_name != f"{name}.base_layer"
    ]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` of ``model`` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _within(name: str, root: str) -> bool:
    """``name`` is the module ``root`` or one of its children."""
    return name == root or name.startswith(root + ".")


def _inside_wrapper(name: str) -> bool:
    return not {"base_layer", "original_module", "modules_to_save"}.isdisjoint(name.split("."))


def _targets(model: nn.Module, config: FourierFTConfig) -> list[tuple[str, nn.Module]]:
    targets = resolve_targets(model, config).target_modules
    found = []
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSave) or _inside_wrapper(name):
            continue
        if not name or not _name_matches(name, targets) or not _layer_index_ok(name, config):
            continue
        if config.exclude_modules is not None and _name_matches(name, config.exclude_modules):
            continue
        found.append((name, module))
    if not found:
        candidates = [n for n, m in model.named_modules() if adapter_class_for(m) is not None][:12]
        raise ValueError(
            f"target_modules={targets!r} matched no module of {type(model).__name__}; "
            f"adaptable modules include {candidates} - use their names or '.suffix's"
        )
    return found


def inject_adapter(model: nn.Module, config: FourierFTConfig, adapter_name: str) -> list[str]:
    """Wrap every target of ``config`` (adding ``adapter_name`` to already wrapped ones). Returns their names."""
    targets = _targets(model, config)
    saved = _modules_to_save_names(model, config)
    inside = [(t, s) for t, _ in targets for s in saved if _within(t, s)]
    if inside:
        target, head = inside[0]
        raise ValueError(
            f"target {target!r} lies inside modules_to_save entry {head!r}, which is trained and saved in full; "
            "exclude it (exclude_modules) or narrow target_modules"
        )
    names = []
    owners = _parameter_owners(model)
    for name, module in targets:
        layer = module if isinstance(module, FourierFTLayer) else None
        base = layer.base_layer if layer is not None else module
        cls = adapter_class_for(base)
        if cls is None:
            raise TypeError(
                f"module {name!r} is a {type(base).__name__}, which FourierFT cannot adapt; supported: nn.Linear, "
                "transformers Conv1D, nn.Conv2d, nn.Embedding (without an overridden forward). Exclude it or pick other targets"
            )
        tied = _tied_elsewhere(owners, name, base)
        if tied and not config.untie_weights:
            raise ValueError(
                f"the weight of {name!r} is tied to {tied}; adapting it would change those too. Set untie_weights=True "
                "to give the adapted module its own copy of the weight, or choose another target"
            )
        if tied and layer is None:
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=base.weight.requires_grad)
        if layer is None:
            layer = cls(base)
            replace_module(model, name, layer)
        _add_to_layer(layer, name, config, adapter_name)
        names.append(name)
    for name in saved:
        wrapper = model.get_submodule(name)
        if not isinstance(wrapper, ModulesToSave):
            wrapper = ModulesToSave(wrapper)
            replace_module(model, name, wrapper)
        wrapper.add_adapter(adapter_name)
    return names


def _add_to_layer(layer: FourierFTLayer, name: str, config: FourierFTConfig, adapter_name: str) -> None:
    chunks, adapt = _fused_spec(config, name)
    if chunks > 1 and isinstance(layer, FourierFTEmbedding):
        raise ValueError(f"fused_slices cannot apply to the embedding {name!r}")
    n = pattern_value(config.n_frequency_pattern, name, config.n_frequency)
    grid = (layer.d_out // chunks) * layer.d_in
    if n > grid:
        if not config.clamp_n_frequency:
            raise ValueError(
                f"n_frequency={n} exceeds the {layer.d_out // chunks}x{layer.d_in} = {grid} spectral entries of {name!r}; "
                "lower n_frequency (or set it for this layer in n_frequency_pattern), or set clamp_n_frequency=True"
            )
        n = grid
    sampler = config.sampler
    if isinstance(layer, FourierFTEmbedding) and sampler == "uniform":
        sampler = "uniform-fast"
    pattern = pattern_value(config.scaling_pattern, name, None)
    scaling = config.layer_scaling(pattern, layer.d_out // chunks, layer.d_in)
    file_scaling = config.file_scaling if pattern is None else float(pattern)
    spec = AdapterSpec.make(
        layer.d_out, n, scaling, config.random_loc_seed, sampler, config.frequency_bias_center, config.frequency_bias_width, chunks, adapt,
        coefficient_scale=config.coefficient_scale, file_scaling=file_scaling,
    )
    layer.add_adapter(adapter_name, spec, init_zeros=config.init_weights)


def _modules_to_save_names(model: nn.Module, config: FourierFTConfig) -> list[str]:
    wanted = config.modules_to_save or ()
    names = []
    for name, module in model.named_modules():
        if _inside_wrapper(name):
            continue
        if wanted and _name_matches(name, list(wanted)):
            names.append(name)
    missing = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in names)]
    missing = [w for w in missing if w not in _TASK_HEADS.get(config.task_type, ())]  # PEFT adds every head name
    if missing:
        raise ValueError(f"modules_to_save {missing} matched no module of {type(model).__name__}")
    return names


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, FourierFTLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, FourierFTLayer):
            yield name, module


def modules_to_save_wrappers(model: nn.Module) -> Iterator[tuple[str, ModulesToSave]]:
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSave):
            yield name, module


def set_trainable(model: nn.Module, adapter_name: str | None, bias: str) -> None:
    """Freeze everything, then unfreeze the coefficients and saved modules of ``adapter_name`` and the biases
    that ``bias`` asks for. ``adapter_name=None`` freezes all (inference)."""
    model.requires_grad_(False)
    if adapter_name is None:
        return
    for _, layer in adapter_layers(model):
        if adapter_name in layer.fourierft_spectrum:
            layer.fourierft_spectrum[adapter_name].requires_grad_(True)
            if bias == "fourier_only" and getattr(layer.base_layer, "bias", None) is not None:
                layer.base_layer.bias.requires_grad_(True)
    for _, wrapper in modules_to_save_wrappers(model):
        if adapter_name in wrapper.modules_to_save:
            wrapper.modules_to_save[adapter_name].requires_grad_(True)
    if bias == "all":  # every bias, as PEFT does; not the originals or other adapters' copies of saved modules
        for name, param in model.named_parameters():
            parts = name.split(".")
            copy_of = parts[parts.index("modules_to_save") + 1] if "modules_to_save" in parts[:-1] else adapter_name
            if name.endswith("bias") and copy_of == adapter_name and "original_module" not in parts:
                param.requires_grad_(True)

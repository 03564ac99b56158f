"""FourierFTModel: a thin wrapper around any nn.Module (or transformers PreTrainedModel) whose target
layers were replaced, in place, by adapter layers. Everything else passes through to the model.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from .config import FourierFTConfig
from .inject import adapter_layers, inject_adapter, modules_to_save_wrappers, replace_module, resolve_targets, set_trainable
from .io import CONFIG_NAME, AdapterFileError, read_adapter, write_adapter
from .layer import BASE_ADAPTER, check_adapter_name, check_mode, per_example_adapters
from .state import adapter_metadata, adapter_state_dict, check_file, check_layers, check_positions, check_values, load_adapter_state_dict, peft_expressible, restore_parametrization

__all__ = ["FourierFTModel", "get_fourierft_model", "read_adapter_files"]


class FourierFTModel(nn.Module):
    """The adapted model. ``model.model`` is the original model, its target layers now adapter layers."""

    def __init__(self, model: nn.Module, config: FourierFTConfig, adapter_name: str = "default"):
        super().__init__()
        self.model = model
        self.peft_config: dict[str, FourierFTConfig] = {}
        self.active_adapters: list[str] = []
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    # ---- calling the model ----
    def __new__(cls, model: nn.Module | None = None, *args, **kwargs):
        # A subclass per base model class whose forward carries the base forward's signature, so that
        # tools inspecting it (HF Trainer's column pruning and label detection) see the same arguments.
        if cls is FourierFTModel and model is not None:
            cls = _class_for(type(model))
        return super().__new__(cls)

    def __reduce_ex__(self, protocol):
        # copy.deepcopy and pickle: the per-base-class subclass is rebuilt from the base class (which
        # pickle can name), then the module state is restored as for any nn.Module.
        return (_new_wrapper, (type(self.__dict__["_modules"]["model"]),), self.__dict__)

    def forward(self, *args, adapter_names=None, **kwargs):
        """The model's forward, plus ``adapter_names=[...]``: one adapter name per batch row ("__base__": none)."""
        if adapter_names is None:
            return self.model(*args, **kwargs)
        with self._rows_use(adapter_names):
            return self.model(*args, **kwargs)

    def generate(self, *args, adapter_names=None, **kwargs):
        """The model's generate, plus ``adapter_names=[...]``: one adapter per prompt, kept by the
        prompt's beams and returned sequences (greedy, sampling and beam search)."""
        if adapter_names is None:
            return self.model.generate(*args, **kwargs)
        with self._rows_use(adapter_names, expands=True):
            return self.model.generate(*args, **kwargs)

    @contextmanager
    def _rows_use(self, adapter_names, expands=False):
        unknown = sorted(set(adapter_names) - set(self.peft_config) - {BASE_ADAPTER})
        if unknown:
            raise ValueError(f"adapter_names holds unknown adapters {unknown}; known: {sorted(self.peft_config)} and {BASE_ADAPTER!r}")
        with per_example_adapters(adapter_names, expands=expands):
            yield

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def get_base_model(self) -> nn.Module:
        return self.model

    # ---- adapters ----
    @property
    def active_adapter(self) -> str | None:
        return self.active_adapters[0] if self.active_adapters else None

    def add_adapter(self, adapter_name: str, config: FourierFTConfig) -> None:
        """Add an adapter (inactive and frozen unless it is the first). ``config`` is not changed."""
        check_adapter_name(adapter_name)
        if not isinstance(config, FourierFTConfig):
            raise TypeError(f"config must be a FourierFTConfig, got {type(config).__name__}")
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists; delete_adapter() it first or pick another name")
        config = resolve_targets(self.model, config)
        try:
            inject_adapter(self.model, config, adapter_name)
        except Exception:
            self._remove_everywhere(adapter_name)
            raise
        self.peft_config[adapter_name] = config
        for _, layer in self._layers():
            layer.set_active(self.active_adapters)
        for _, wrapper in self._wrappers():
            wrapper.set_active(self.active_adapters)
        if self.active_adapters:  # keep the new adapter frozen
            self._set_trainable()

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make these adapters active (their sum is applied); the first one's parameters train."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown or not names:
            raise ValueError(f"unknown adapters {unknown}; known: {sorted(self.peft_config)}")
        self.active_adapters = names
        for _, layer in self._layers():
            layer.set_active(names)
        for _, wrapper in self._wrappers():
            wrapper.set_active(names)
        self._set_trainable()

    def _set_trainable(self) -> None:
        config = self.peft_config[self.active_adapter]
        set_trainable(self.model, None if config.inference_mode else self.active_adapter, config.bias)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"unknown adapter {adapter_name!r}; known: {sorted(self.peft_config)}")
        self._remove_everywhere(adapter_name)
        del self.peft_config[adapter_name]
        remaining = [n for n in self.active_adapters if n != adapter_name] or list(self.peft_config)[:1]
        if remaining:
            self.set_adapter(remaining)
        else:
            self.active_adapters = []

    def _remove_everywhere(self, adapter_name: str) -> None:
        for name, layer in list(self._layers()):
            if adapter_name in layer.specs:
                layer.delete_adapter(adapter_name)
            if not layer.specs:
                replace_module(self.model, name, layer.base_layer)
        for name, wrapper in list(self._wrappers()):
            if adapter_name in wrapper.modules_to_save:
                wrapper.delete_adapter(adapter_name)
            if not len(wrapper.modules_to_save):
                replace_module(self.model, name, wrapper.original_module)

    def _layers(self):
        return adapter_layers(self.model)

    def _wrappers(self):
        return modules_to_save_wrappers(self.model)

    def set_mode(self, mode: str) -> None:
        """Force a compute path for linear layers: "auto", "merged", "separate" or "reference" (see kernels)."""
        check_mode(mode)
        for _, layer in self._layers():
            layer.mode = mode

    @contextmanager
    def disable_adapter(self):
        """Run the base model: adapters and saved-module copies are bypassed inside the block.

        Merged adapters are unmerged on entry and merged again on exit.
        """
        layers, wrappers = [layer for _, layer in self._layers()], [w for _, w in self._wrappers()]
        merged = {layer: list(layer.merged_adapters) for layer in layers if layer.merged_adapters}
        for layer in merged:
            layer.unmerge()
        for module in layers + wrappers:
            module.disabled = True
        try:
            yield
        finally:
            for module in layers + wrappers:
                module.disabled = False
            for layer, names in merged.items():
                layer.merge(names)

    # ---- merging ----
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = True, requantize=None) -> dict[str, dict]:
        """Add dW of the active (or named) adapters into the base weights. All or nothing when safe_merge.

        Quantized (torchao) layers are refused unless ``requantize`` gives the torchao config to quantize
        W + dW with; returns {layer: {"dw_norm", "error_norm", "max_error"}} for those layers and warns
        when the requantization error is not small against dW."""
        done, report = [], {}
        try:
            for name, layer in self._layers():
                before = len(layer.merged_adapters)
                errors = layer.merge(adapter_names, safe_merge=safe_merge, requantize=requantize)
                if errors:
                    report[name] = {k: sum(e[k] for e in errors) if k != "max_error" else max(e[k] for e in errors) for k in errors[0]}
                if len(layer.merged_adapters) > before:
                    done.append((layer, before))
        except Exception:
            for layer, before in done:
                while len(layer.merged_adapters) > before:
                    layer.unmerge_last()
            raise
        if report:
            worst = max(report, key=lambda n: report[n]["error_norm"] / max(report[n]["dw_norm"], 1e-30))
            ratio = report[worst]["error_norm"] / max(report[worst]["dw_norm"], 1e-30)
            warnings.warn(
                f"requantized merge into {len(report)} quantized layers: the quantization error is up to {ratio:.0%} of dW's norm "
                f"({worst}); " + ("the merged model keeps the adaptation only roughly, keep the adapter unmerged for exact outputs"
                                  if ratio > 0.1 else "small against the adaptation"),
                stacklevel=2,
            )
        return report

    def unmerge_adapter(self) -> None:
        for _, layer in self._layers():
            layer.unmerge()

    def merge_and_unload(self, safe_merge: bool = True, adapter_names: list[str] | None = None, requantize=None) -> nn.Module:
        """Merge, then put plain modules back: returns the original model type with no adapter modules left.
        ``requantize``: see merge_adapter (quantized bases)."""
        self.merge_adapter(adapter_names, safe_merge=safe_merge, requantize=requantize)
        return self._unwrap(keep_heads=True)

    def unload(self) -> nn.Module:
        """Remove all adapters without merging: returns the base model as it was."""
        self.unmerge_adapter()
        return self._unwrap(keep_heads=False)

    def _unwrap(self, keep_heads: bool) -> nn.Module:
        for name, layer in list(self._layers()):
            replace_module(self.model, name, layer.base_layer)
        for name, wrapper in list(self._wrappers()):
            head = wrapper.modules_to_save[wrapper.active_adapter] if keep_heads and wrapper.active_adapter else wrapper.original_module
            replace_module(self.model, name, head)
        self.model.requires_grad_(False)
        return self.model

    # ---- parameters ----
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        params = list(self.model.parameters())
        count = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731 - ZeRO-3 partitions hold ds_numel
        return sum(count(p) for p in params if p.requires_grad), sum(count(p) for p in params)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}")

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Enable the model's gradient checkpointing; inputs get requires_grad so frozen embeddings still
        pass gradients through checkpointed blocks."""
        self._checkpointing("gradient_checkpointing_enable", **kwargs)

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """transformers >= 5 name of gradient_checkpointing_enable."""
        self._checkpointing("activation_checkpointing_enable", **kwargs)

    def _checkpointing(self, method: str, **kwargs) -> None:
        getattr(self.model, method)(**kwargs)
        if hasattr(self.model, "enable_input_require_grads"):
            self.model.enable_input_require_grads()

    # ---- files ----
    def save_pretrained(self, save_directory, selected_adapters: list[str] | None = None, is_main_process: bool = True) -> None:
        """Write each adapter as adapter_config.json + adapter_model.safetensors ("default" at the top level,
        others in a sub-directory named after them, as PEFT does). Sharded (FSDP2) models: call it on every
        rank (the coefficients are gathered together) with ``is_main_process`` true on one rank only."""
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"unknown adapters {unknown}; known: {sorted(self.peft_config)}")
        for name in names:
            config = self.peft_config[name]
            if config.base_model_name_or_path is None:
                base_name = getattr(getattr(self.model, "config", None), "name_or_path", None) or None
                config = config.replace(base_model_name_or_path=base_name)
            directory = Path(save_directory) if name == "default" else Path(save_directory) / name
            payload = config.file_dict(peft_format=peft_expressible(self.model, config, name))
            if any(getattr(layer, "transposed", False) for _, layer in self._layers() if name in layer.specs):
                payload["fan_in_fan_out"] = True  # what PEFT records for GPT-2 Conv1D targets
            tensors = adapter_state_dict(self.model, name, config.bias)
            if is_main_process:
                write_adapter(directory, payload, tensors, adapter_metadata(self.model, name, config))

    @classmethod
    def from_pretrained(cls, model: nn.Module, path_or_id, adapter_name: str = "default", is_trainable: bool = False, subfolder: str | None = None, **hub_kwargs) -> FourierFTModel:
        """Wrap ``model`` with a saved adapter (ours or PEFT's FourierFT), from a directory or a hub id."""
        config, state, metadata, directory = _read(path_or_id, subfolder, **hub_kwargs)
        try:
            wrapped = cls(model, config.replace(inference_mode=not is_trainable), adapter_name)
            wrapped._load_state(adapter_name, state, metadata, str(directory))
        except BaseException as err:
            _restore_base(model)  # the caller's model as it was: no adapter layers left behind
            if isinstance(err, (TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError, RuntimeError)):
                raise AdapterFileError(f"{directory}: the adapter does not fit this model ({type(err).__name__}: {err})") from None
            raise
        return wrapped

    def load_adapter(self, path_or_id, adapter_name: str, is_trainable: bool = False, subfolder: str | None = None, **hub_kwargs) -> None:
        config, state, metadata, directory = _read(path_or_id, subfolder, **hub_kwargs)
        try:
            self.add_adapter(adapter_name, config.replace(inference_mode=not is_trainable))
        except (TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError, RuntimeError) as err:
            raise AdapterFileError(f"{directory}: the adapter does not fit this model ({type(err).__name__}: {err})") from None
        try:
            self._load_state(adapter_name, state, metadata, str(directory))
        except Exception:
            self.delete_adapter(adapter_name)
            raise

    def load_adapter_weights(self, path_or_id, adapter_name: str | None = None, subfolder: str | None = None, **hub_kwargs) -> None:
        """Load saved weights into an adapter this model already has (default: the active one), e.g. to
        resume training. The file must describe the same adapter: layers, shapes, positions, scaling."""
        name = adapter_name or self.active_adapter
        if name not in self.peft_config:
            raise ValueError(f"no adapter {name!r} to load weights into; known: {sorted(self.peft_config)}")
        _, state, metadata, directory = _read(path_or_id, subfolder, **hub_kwargs)
        self._load_state(name, state, metadata, str(directory))

    def _load_state(self, adapter_name, state, metadata, source):
        config = self.peft_config[adapter_name]
        check_layers(self.model, adapter_name, metadata, source)
        check_positions(self.model, adapter_name, metadata, source)
        load_adapter_state_dict(self.model, state, adapter_name, config.bias, source=source)
        check_values(self.model, adapter_name, source)


@functools.lru_cache(maxsize=None)
def _class_for(base_cls: type) -> type:
    try:
        signature = inspect.signature(base_cls.forward)
    except (TypeError, ValueError):
        return FourierFTModel
    params = list(signature.parameters.values())
    if "adapter_names" not in signature.parameters:
        extra = inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None)
        at = len(params) - (params[-1].kind is inspect.Parameter.VAR_KEYWORD if params else 0)
        params.insert(at, extra)

    def forward(self, *args, **kwargs):
        return FourierFTModel.forward(self, *args, **kwargs)

    forward.__signature__ = signature.replace(parameters=params)
    forward.__doc__ = FourierFTModel.forward.__doc__
    name = f"FourierFTModel[{base_cls.__name__}]"
    return type(name, (FourierFTModel,), {"forward": forward, "__module__": __name__, "__qualname__": name})


def read_adapter_files(path_or_id, subfolder: str | None = None, **hub_kwargs) -> tuple[FourierFTConfig, dict, dict, Path]:
    """(config, tensors, metadata, directory) of a saved adapter, with every check that needs no model."""
    raw, state, metadata, directory = read_adapter(path_or_id, subfolder, **hub_kwargs)
    try:
        config = FourierFTConfig.from_dict(raw)
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError) as err:
        raise AdapterFileError(f"{directory / CONFIG_NAME}: {err}") from None
    config = restore_parametrization(config, metadata, str(directory))
    check_file(config, state, metadata, str(directory))
    return config, state, metadata, directory


_read = read_adapter_files


def _restore_base(model: nn.Module) -> None:
    """Put back the original modules wherever adapter layers or saved-module wrappers were placed."""
    for name, layer in list(adapter_layers(model)):
        replace_module(model, name, layer.base_layer)
    for name, wrapper in list(modules_to_save_wrappers(model)):
        replace_module(model, name, wrapper.original_module)


def _new_wrapper(base_cls: type) -> FourierFTModel:
    return nn.Module.__new__(_class_for(base_cls))


def get_fourierft_model(model: nn.Module, config: FourierFTConfig, adapter_name: str = "default") -> FourierFTModel:
    """Replace the target layers of ``model`` in place by FourierFT adapter layers; return the wrapper."""
    return FourierFTModel(model, config, adapter_name)


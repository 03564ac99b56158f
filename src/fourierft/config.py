"""FourierFTConfig: PEFT's field names, meanings and defaults, plus the options PEFT lacks.

A frozen dataclass, validated once in ``__post_init__``. Per-layer facts (a GPT-2 Conv1D stores its
weight transposed, a layer is too small for n_frequency, ...) are worked out when layers are
wrapped and kept on the layers, never written back here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["FourierFTConfig", "PEFT_TYPE", "EXTENDED_PEFT_TYPE", "PEFT_FIELDS", "auto_scaling", "AUTO_REFERENCE", "ALL_LINEAR"]

ALL_LINEAR = "all-linear"  # target_modules shorthand (PEFT's): every linear layer but the output / classifier head

PEFT_TYPE = "FOURIERFT"
# Written for adapters that use features PEFT lacks: PEFT fails loudly on an unknown peft_type
# (KeyError: 'FOURIERFT_EXTENDED') instead of loading such an adapter wrong.
EXTENDED_PEFT_TYPE = "FOURIERFT_EXTENDED"

_BIAS = ("none", "all", "fourier_only")
_SAMPLERS = ("uniform", "frequency-bias")
# The fields PEFT's FourierFTConfig has: what a file in PEFT's format holds.
PEFT_FIELDS = (
    "n_frequency", "scaling", "random_loc_seed", "target_modules", "exclude_modules", "fan_in_fan_out", "bias",
    "modules_to_save", "layers_to_transform", "layers_pattern", "n_frequency_pattern", "init_weights",
    "base_model_name_or_path", "task_type", "inference_mode", "revision",
)
# PEFT bookkeeping keys found in adapter_config.json that carry no meaning here.
_PEFT_ONLY_KEYS = {"peft_type", "auto_mapping", "peft_version", "modules_to_tie", "ensure_weight_tying"}


# scaling="auto": the paper's 150 at a 768 x 768 grid (RoBERTa-base), times a power of two near
# sqrt(rows * cols) / 768 for other grids. Powers of two keep the file coefficients exact (see below).
AUTO_REFERENCE = (150.0, 768)


def auto_scaling(rows: int, cols: int) -> float:
    """The scaling "auto" gives a (rows, cols) spectral grid: 150 * 2^round(log2(sqrt(rows * cols) / 768)).

    The paper's tuned (scaling x coefficient lr) products, from RoBERTa-base to LLaMA-2-7B, grow about
    as sqrt(rows * cols) (per-entry dW constant would need rows * cols and overshoots big layers 3-5x);
    see docs/results.md.
    """
    reference, side = AUTO_REFERENCE
    return reference * 2.0 ** round(math.log2(math.sqrt(rows * cols) / side))


def _as_tuple(value, name, item_type):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, item_type):
        return (value,)
    items = tuple(value)
    if not all(isinstance(v, item_type) for v in items):
        raise TypeError(f"{name} must hold {item_type.__name__} values, got {items!r}")
    return items


@dataclass(frozen=True)
class FourierFTConfig:
    """Configuration of FourierFT adapters.

    dW = scaling * Re(ifft2(ToDense(E, c))) per adapted layer, with n_frequency coefficients c at
    positions E drawn from ``random_loc_seed`` (see ``fourierft.functional``). The trainable parameter
    is p = c / coefficient_scale: with the defaults, Adam at LoRA's learning rates (1e-4 - 2e-4, one
    parameter group) trains the coefficients as the paper's recipes do at 0.05 with coefficient_scale=1.

    Files keep PEFT's format: the saved coefficients are the c that PEFT multiplies by the saved scaling
    (for "auto", the reference 150 with each layer's factor folded into its coefficients, exactly).
    """

    n_frequency: int = 1000
    """Learned coefficients per adapted layer (per adapted slice of a fused layer)."""
    scaling: float | str = "auto"
    """Scale of dW: "auto" (150 at 768 x 768, scaled by a power of two near sqrt(d_out*d_in)/768 per
    layer) or a number for every layer (the paper uses 29-300: GLUE ~100-150, LLaMA and ViT 300)."""
    coefficient_scale: float = 512.0
    """c = coefficient_scale * p for the trained parameter p. 512 lets one learning rate of 1e-4 - 2e-4
    train coefficients and heads alike; 1 is the paper's and PEFT's parametrization (coefficient
    rates 0.04-0.3). A power of two keeps saved coefficients exact."""
    random_loc_seed: int = 777
    """Seed of the spectral positions; the same seed and shape give the same positions (as PEFT)."""
    target_modules: tuple[str, ...] | str | None = None
    """Modules to adapt. A list matches a module name exactly or as a ".suffix"; a str is a full
    regex match. None: the default for the model type (transformers models), else an error."""
    exclude_modules: tuple[str, ...] | str | None = None
    """Modules never adapted; same matching rules as target_modules."""
    fan_in_fan_out: bool = False
    """Kept for PEFT files. Whether a weight is stored transposed (GPT-2 Conv1D) is detected per layer."""
    bias: str = "none"
    """Which biases train and are saved: "none", "all" (every bias), "fourier_only" (adapted layers)."""
    modules_to_save: tuple[str, ...] | None = None
    """Modules trained fully and saved with the adapter (task heads), e.g. ["classifier"]."""
    layers_to_transform: tuple[int, ...] | int | None = None
    """Only adapt these layer indices (the number after ``layers_pattern`` in the module name)."""
    layers_pattern: tuple[str, ...] | str | None = None
    """Name of the layer list (e.g. "layers", "h") used with layers_to_transform."""
    n_frequency_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module n_frequency: regex matched against the end of the module name (as PEFT)."""
    init_weights: bool = False
    """False: c ~ N(0, 1) (paper and PEFT default, dW != 0 at step 0). True: zeros (adapted = base)."""
    scaling_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module scaling, matched like n_frequency_pattern. Not expressible in PEFT's format."""
    sampler: str = "uniform"
    """Position sampler: "uniform" (PEFT's) or "frequency-bias" (paper Eq. 5). Embeddings always use
    the exact "uniform-fast" sampler, since a permutation of a vocab x dim grid is too costly."""
    frequency_bias_center: float = 0.0
    """f_c of the frequency-bias sampler, in grid cells from the zero frequency."""
    frequency_bias_width: float = 200.0
    """W of the frequency-bias sampler (the paper uses 200)."""
    fused_slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Adapt chosen output slices of fused weights, each with its own n_frequency coefficients:
    {"c_attn": {"chunks": 3, "adapt": [0, 2]}} splits GPT-2's c_attn (q, k, v) into 3 equal
    output slices and adapts q and v. Keys match module names like target_modules list entries."""
    clamp_n_frequency: bool = False
    """If a layer has fewer than n_frequency spectral entries, use all of them instead of failing."""
    untie_weights: bool = False
    """Allow adapting a weight shared with another module (tied embeddings) by giving the adapted
    module its own copy of the weight. Without it such targets are refused."""
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    inference_mode: bool = False
    revision: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass normalisation
        set_("target_modules", _as_tuple(self.target_modules, "target_modules", str))
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules or ()
        if [t.lower() for t in targets] == [ALL_LINEAR]:  # "all-linear" / ["all-linear"] in any case
            set_("target_modules", ALL_LINEAR)
        set_("exclude_modules", _as_tuple(self.exclude_modules, "exclude_modules", str))
        set_("modules_to_save", _as_tuple(self.modules_to_save, "modules_to_save", str))
        set_("layers_pattern", _as_tuple(self.layers_pattern, "layers_pattern", str))
        if self.layers_to_transform is not None and not isinstance(self.layers_to_transform, int):
            set_("layers_to_transform", tuple(int(i) for i in self.layers_to_transform))
        set_("n_frequency_pattern", dict(self.n_frequency_pattern or {}))
        set_("scaling_pattern", dict(self.scaling_pattern or {}))
        set_("fused_slices", {k: dict(v) for k, v in (self.fused_slices or {}).items()})
        if isinstance(self.modules_to_save, str):
            set_("modules_to_save", (self.modules_to_save,))
        self._validate()

    def _validate(self):
        def positive_int(value, what):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")

        positive_int(self.n_frequency, "n_frequency")
        for key in ("target_modules", "exclude_modules", "modules_to_save", "layers_pattern"):
            value = getattr(self, key)
            if value is not None and (value == "" if isinstance(value, str) else not all(v.strip(".") for v in value)):
                raise ValueError(f"{key} holds an empty module name ({value!r}); give module names such as 'classifier'")
        for key, n in self.n_frequency_pattern.items():
            positive_int(n, f"n_frequency_pattern[{key!r}]")
        if self.scaling != "auto" and (isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)) or not math.isfinite(self.scaling)):
            raise ValueError(f'scaling must be "auto" or a finite number, got {self.scaling!r}')
        for key, s in self.scaling_pattern.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise ValueError(f"scaling_pattern[{key!r}] must be a finite number, got {s!r}")
        k = self.coefficient_scale
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise ValueError(f"coefficient_scale must be a positive number, got {k!r}; 1 is the paper's parametrization")
        if self.bias not in _BIAS:
            raise ValueError(f"bias must be one of {_BIAS}, got {self.bias!r}")
        if self.sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS}, got {self.sampler!r}")
        if self.frequency_bias_width <= 0:
            raise ValueError(f"frequency_bias_width must be > 0, got {self.frequency_bias_width}")
        regex_targets = isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR
        if regex_targets and self.layers_to_transform is not None:
            raise ValueError("layers_to_transform cannot be used when target_modules is a regex str; use a list")
        if regex_targets and self.layers_pattern is not None:
            raise ValueError("layers_pattern cannot be used when target_modules is a regex str; use a list")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform (which layer indices to adapt)")
        for name, spec in self.fused_slices.items():
            chunks, adapt = spec.get("chunks"), spec.get("adapt")
            if set(spec) != {"chunks", "adapt"}:
                raise ValueError(f"fused_slices[{name!r}] must have exactly the keys 'chunks' and 'adapt', got {sorted(spec)}")
            positive_int(chunks, f"fused_slices[{name!r}]['chunks']")
            adapt = list(adapt) if adapt is not None else []
            if not adapt or len(set(adapt)) != len(adapt) or not all(isinstance(a, int) and 0 <= a < chunks for a in adapt):
                raise ValueError(
                    f"fused_slices[{name!r}]['adapt'] must list distinct slice indices in [0, {chunks}), got {spec.get('adapt')!r}"
                )
            spec["adapt"] = sorted(adapt)

    # ---- per-layer scalings ----
    @property
    def file_scaling(self) -> float:
        """The scaling written to adapter_config.json: the number given, or the reference 150 for "auto"."""
        return AUTO_REFERENCE[0] if self.scaling == "auto" else float(self.scaling)

    def layer_scaling(self, scaling_for_layer: float | None, rows: int, cols: int) -> float:
        """A layer's scaling: its scaling_pattern value if any, else "auto" resolved for its (rows, cols)
        grid, else the number given."""
        if scaling_for_layer is not None:
            return float(scaling_for_layer)
        return auto_scaling(rows, cols) if self.scaling == "auto" else float(self.scaling)

    @property
    def parametrization(self) -> dict[str, Any]:
        """What a PEFT-format file cannot hold but training continues from: written to file metadata."""
        return {"scaling": self.scaling, "coefficient_scale": self.coefficient_scale}

    # ---- (de)serialisation: adapter_config.json ----
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target_modules", "exclude_modules", "modules_to_save", "layers_pattern", "layers_to_transform"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    def file_dict(self, peft_format: bool) -> dict[str, Any]:
        """What adapter_config.json holds: PEFT's fields and peft_type "FOURIERFT" when PEFT can rebuild
        the adapter from them, else every field and "FOURIERFT_EXTENDED" (which PEFT refuses loudly)."""
        full = self.to_dict()
        out = {k: full[k] for k in PEFT_FIELDS} if peft_format else full
        if peft_format:
            out["scaling"] = self.file_scaling
        out["peft_type"] = PEFT_TYPE if peft_format else EXTENDED_PEFT_TYPE
        return out

    @property
    def uses_extensions(self) -> bool:
        """True if the config itself asks for something PEFT's FourierFT cannot express."""
        return bool(self.scaling_pattern or self.fused_slices or self.sampler != "uniform")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FourierFTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - _PEFT_ONLY_KEYS
        if unknown:
            warnings.warn(f"ignoring unknown adapter_config.json keys: {sorted(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes) -> FourierFTConfig:
        """A copy with some fields changed (the config itself is immutable)."""
        return type(self).from_dict({**self.to_dict(), **changes})

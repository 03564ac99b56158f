"""fourierft: fast, exact FourierFT adapters for PyTorch and Transformers models, in PEFT's format.

    from fourierft import FourierFTConfig, get_fourierft_model
    model = get_fourierft_model(base_model, FourierFTConfig(target_modules=["query", "value"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
"""

from . import functional
from .config import FourierFTConfig
from .inject import default_target_modules
from .io import AdapterFileError
from .layer import BASE_ADAPTER
from .model import FourierFTModel, get_fourierft_model, read_adapter_files
from .optim import param_groups
from .peft_compat import accelerate_peft

__version__ = "0.1.0"


def __getattr__(name):  # TrainingCheck needs transformers, which is optional
    if name == "TrainingCheck":
        from .callbacks import TrainingCheck

        return TrainingCheck
    raise AttributeError(f"module 'fourierft' has no attribute {name!r}")


__all__ = [
    "AdapterFileError",
    "BASE_ADAPTER",
    "FourierFTConfig",
    "FourierFTModel",
    "TrainingCheck",
    "accelerate_peft",
    "default_target_modules",
    "functional",
    "get_fourierft_model",
    "param_groups",
    "read_adapter_files",
]

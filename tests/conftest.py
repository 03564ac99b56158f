"""Tiny models built from configs (no download) shared by the tests."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def dft(n: int, inverse: bool = False) -> torch.Tensor:
    """Explicit DFT matrix (complex128): F[a, b] = exp(-+2 pi i a b / n), inverse includes 1/n."""
    a = torch.arange(n, dtype=torch.float64)
    sign = 1.0 if inverse else -1.0
    angle = sign * 2 * torch.pi * torch.outer(a, a) / n
    m = torch.polar(torch.ones_like(angle), angle)
    return m / n if inverse else m


def tiny_bert(num_labels=3, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100, num_labels=num_labels, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def tiny_roberta(seed=0):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100, num_labels=2, max_position_embeddings=70)
    return RobertaForSequenceClassification(cfg).eval()


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(seed=0, tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def tiny_vit(seed=0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=16, patch_size=4, num_channels=3, num_labels=5)
    return ViTForImageClassification(cfg).eval()


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pointwise = nn.Conv2d(8, 12, 1)
        self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=3, bias=False)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pointwise(x))
        x = self.grouped(x)
        return self.head(x.mean((2, 3)))


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return TinyCNN().eval()


class TinyEmbedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16, padding_idx=0)
        self.proj = nn.Linear(16, 3)

    def forward(self, ids):
        return self.proj(self.embed(ids).mean(1))


def tiny_embedder(seed=0):
    torch.manual_seed(seed)
    return TinyEmbedder().eval()


@pytest.fixture
def ids():
    torch.manual_seed(123)
    return torch.randint(1, 100, (4, 9))

"""GPU checks (run with ``python -m pytest -m cuda`` on a machine with CUDA): the GPU paths against
the float64 CPU reference, bf16 precision, and PEFT parity on the device."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fourierft import FourierFTConfig, accelerate_peft, get_fourierft_model
from fourierft.functional import delta_weight, spectral_positions
from fourierft.kernels import Block, fourier_linear

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def plan(d_out, d_in, n, device):
    rows, cols = spectral_positions(d_out, d_in, n, 0)
    return (Block(0, d_out, rows.to(device), cols.to(device), 0),)


@pytest.mark.parametrize("shape", [(384, 384), (768, 3072), (3072, 1024), (257, 129)])
def test_fp32_values_and_gradients_match_cpu_float64(shape):
    d_out, d_in = shape
    torch.manual_seed(0)
    x = torch.randn(4, 96, d_in, dtype=torch.float64)
    w = torch.randn(d_out, d_in, dtype=torch.float64) * 0.02
    c = torch.randn(1000, dtype=torch.float64) * 150
    g = torch.randn(4, 96, d_out, dtype=torch.float64)
    x64, c64 = x.clone().requires_grad_(), c.clone().requires_grad_()
    fourier_linear(x64, w, None, c64, plan(d_out, d_in, 1000, "cpu"), "reference").backward(g)
    xg, cg = x.float().cuda().requires_grad_(), c.float().cuda().requires_grad_()
    y = fourier_linear(xg, w.float().cuda(), None, cg, plan(d_out, d_in, 1000, "cuda"), "auto")
    y.backward(g.float().cuda())
    for got, want in ((xg.grad, x64.grad), (cg.grad, c64.grad)):
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-3, atol=1e-4 * want.abs().max().item())


def test_bf16_adapter_term_error_is_output_rounding():
    d_out, d_in, n = 1024, 1536, 1000
    torch.manual_seed(0)
    p = plan(d_out, d_in, n, "cuda")
    w = (torch.randn(d_out, d_in, device="cuda") * 0.02).bfloat16()
    x = torch.randn(2048, d_in, device="cuda").bfloat16()
    c = torch.randn(n, device="cuda") * 20
    dw = delta_weight(c.double().cpu(), p[0].rows.cpu(), p[0].cols.cpu(), d_out, d_in, 1.0).cuda()
    base64, adapter64 = x.double() @ w.double().T, x.double() @ dw.T

    def err(y):
        return ((y.double() - base64 - adapter64).norm() / adapter64.norm()).item()

    rounding = err((base64 + adapter64).bfloat16())
    assert err(fourier_linear(x, w, None, c, p, "auto")) <= 1.25 * rounding
    assert err(F.linear(x, (w.double() + dw).bfloat16())) > 1.3 * err(fourier_linear(x, w, None, c, p, "auto"))


def test_peft_parity_and_accelerate_on_device():
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    base = LlamaForCausalLM(cfg).cuda().bfloat16().eval()
    ids = torch.randint(0, 1000, (2, 64), device="cuda")
    kwargs = dict(n_frequency=1000, scaling=150.0, target_modules=["q_proj", "v_proj", "down_proj"])
    torch.manual_seed(1)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(**kwargs))
    torch.manual_seed(1)
    ours = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(**kwargs))
    y_theirs, y_ours = theirs(input_ids=ids).logits.float(), ours(input_ids=ids).logits.float()
    scale = y_theirs.abs().max().item()
    torch.testing.assert_close(y_ours, y_theirs, rtol=0.05, atol=0.03 * scale)
    fast = copy.deepcopy(theirs)
    accelerate_peft(fast)
    torch.testing.assert_close(fast(input_ids=ids).logits.float(), y_theirs, rtol=0.05, atol=0.03 * scale)

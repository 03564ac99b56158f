"""GPU checks (run with ``python -m pytest -m cuda`` on a machine with CUDA): the GPU paths against
the float64 CPU reference, bf16 precision, and PEFT parity on the device."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fourierft import FourierFTConfig, accelerate_peft, get_fourierft_model
from fourierft.functional import delta_weight, spectral_positions
from fourierft import spectral
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
    ours = err(fourier_linear(x, w, None, c, p, "auto"))
    print(f"bf16 adapter-term error / output rounding: auto {ours / rounding:.3f}, separate {err(fourier_linear(x, w, None, c, p, 'separate')) / rounding:.3f}")
    assert ours <= 1.1 * rounding
    assert err(F.linear(x, (w.double() + dw).bfloat16())) > 1.3 * ours


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


# (d_out, d_in, n): odd, non-square, fused-size, n = 1 and n = d_out * d_in
FFT_SHAPES = [(384, 384, 1000), (1024, 3072, 1000), (3072, 1024, 1000), (257, 129, 1000), (33, 17, 1), (33, 17, 33 * 17), (8192, 3072, 1000)]


@pytest.mark.parametrize("shape", FFT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fft_path_matches_float64_reference(shape, dtype):
    """The CUDA fft path (Triton maps, cuFFT, float32-output GEMM) against autograd through the
    dense float64 reference on the CPU: output, input gradient and coefficient gradient."""
    d_out, d_in, n = shape
    torch.manual_seed(0)
    x = torch.randn(3, 67, d_in, dtype=torch.float64)
    w = torch.randn(d_out, d_in, dtype=torch.float64) * 0.02
    b = torch.randn(d_out, dtype=torch.float64)
    c = torch.randn(n, dtype=torch.float64) * 50
    g = torch.randn(3, 67, d_out, dtype=torch.float64)
    # the reference sees the operands as rounded to dtype
    xr, wr, br = (t.to(dtype).double() for t in (x, w, b))
    x64, c64 = xr.clone().requires_grad_(), c.clone().requires_grad_()
    y64 = fourier_linear(x64, wr, br, c64, plan(d_out, d_in, n, "cpu"), "reference")
    y64.backward(g.to(dtype).double())
    xg = x.to(dtype).cuda().requires_grad_()
    cg = c.float().cuda().requires_grad_()
    p = plan(d_out, d_in, n, "cuda")
    assert spectral.use_triton(torch.zeros(1, device="cuda"))
    y = fourier_linear(xg, w.to(dtype).cuda(), b.to(dtype).cuda(), cg, p, "fft")
    y.backward(g.to(dtype).cuda())
    assert y.dtype == dtype and xg.grad.dtype == dtype
    tol = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for got, want in ((y, y64), (xg.grad, x64.grad), (cg.grad, c64.grad)):
        rel = ((got.detach().cpu().double() - want).norm() / want.norm()).item()
        assert rel < tol, (rel, tol)


def test_triton_maps_equal_pytorch_maps():
    from fourierft.kernels import _half_spectrum
    from fourierft.spectral import apply_map, build_index, sampled_grad

    d_out, d_in, n, T = 1536, 1024, 1000, 4096
    rows, cols = spectral_positions(d_out, d_in, n, 3)
    idx = build_index((Block(0, d_out, rows, cols, 0),), d_out, d_in, n, "cuda")
    r = idx.ranges[0]
    c = torch.randn(n, device="cuda")
    xv = _half_spectrum(torch.randn(T, d_in, device="cuda"), torch.float32)
    gv = _half_spectrum(torch.randn(T, d_out, device="cuda"), torch.float32)
    spectral_off = lambda t: t.cpu()  # noqa: E731  (the PyTorch code runs on the CPU copies)
    for got, want in (
        (apply_map(xv, r.forward, c), apply_map(spectral_off(xv), _cpu_map(r.forward), c.cpu())),
        (apply_map(gv, r.transpose, c), apply_map(spectral_off(gv), _cpu_map(r.transpose), c.cpu())),
    ):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-4)
    cpu_idx = build_index((Block(0, d_out, rows, cols, 0),), d_out, d_in, n, "cpu")
    torch.testing.assert_close(sampled_grad(gv, xv, r, n).cpu(), sampled_grad(gv.cpu(), xv.cpu(), cpu_idx.ranges[0], n), rtol=1e-4, atol=1e-3)


def _cpu_map(m):
    from dataclasses import replace

    return replace(m, **{k: v.cpu() for k, v in vars(m).items() if isinstance(v, torch.Tensor)})


def _tiny_llama(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    return LlamaForCausalLM(cfg).cuda().to(dtype)


def _adapted(dtype, **kwargs):
    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_fourierft_model(_tiny_llama(dtype), FourierFTConfig(n_frequency=300, scaling=300.0, target_modules=targets, **kwargs))


def _step(model, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n.removeprefix("_orig_mod."): p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _close_grads(a, b, rel):
    for name in a:
        err = ((a[name].float() - b[name].float()).norm() / b[name].float().norm()).item()
        assert err < rel, (name, err)


def test_torch_compile_trains_like_eager():
    ids = torch.randint(0, 1000, (2, 64), device="cuda")
    model = _adapted(torch.bfloat16)
    model.train()
    eager_loss, eager_grads = _step(model, ids)
    explanation = torch._dynamo.explain(lambda i: model(input_ids=i, labels=i).loss)(ids)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    compiled = torch.compile(model)
    loss, grads = _step(compiled, ids)
    torch.testing.assert_close(loss.float(), eager_loss.float(), rtol=2e-2, atol=2e-2)
    _close_grads(grads, eager_grads, 0.05)


def test_gradient_checkpointing_and_autocast():
    ids = torch.randint(0, 1000, (2, 64), device="cuda")
    model = _adapted(torch.bfloat16)
    model.train()
    loss, grads = _step(model, ids)
    model.gradient_checkpointing_enable()
    ck_loss, ck_grads = _step(model, ids)
    torch.testing.assert_close(ck_loss, loss)
    _close_grads(ck_grads, grads, 1e-3)
    # fp32 weights under bf16 autocast train through the same path and agree with the bf16 model
    fp32 = _adapted(torch.float32)
    fp32.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ac_loss, ac_grads = _step(fp32, ids)
    torch.testing.assert_close(ac_loss.float(), loss.float(), rtol=2e-2, atol=2e-2)
    _close_grads(ac_grads, grads, 0.1)


def test_bf16_training_lowers_loss_with_lora_learning_rate_scale():
    """A short bf16 training run on the GPU path: the loss goes down (one rounding, default mode)."""
    ids = torch.randint(0, 1000, (4, 64), device="cuda")
    model = _adapted(torch.bfloat16)
    model.train()
    from fourierft import param_groups

    opt = torch.optim.AdamW(param_groups(model, lr=5e-2))
    losses = []
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print("bf16 losses", [round(v, 3) for v in losses[::5]])
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_adapter_batch_on_the_device(dtype):
    """adapter_names on CUDA: the batched path equals each row alone (fp32) and stays at bf16 accuracy."""
    model = _adapted(dtype)
    torch.manual_seed(5)
    model.add_adapter("other", FourierFTConfig(n_frequency=300, scaling=300.0, target_modules=["q_proj", "v_proj"]))
    model.eval()
    ids = torch.randint(0, 1000, (3, 32), device="cuda")
    names = ["default", "other", "__base__"]
    with torch.no_grad():
        together = model(input_ids=ids, adapter_names=names).logits.float()
        for i, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(input_ids=ids[i : i + 1]).logits.float()
            else:
                model.set_adapter(name)
                alone = model(input_ids=ids[i : i + 1]).logits.float()
            tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05 * alone.abs().max().item())
            torch.testing.assert_close(together[i : i + 1], alone, **tol)

"""Worker for tests/test_fsdp.py: FourierFT on a tiny Llama under DeepSpeed ZeRO-3 (parameters
partitioned over 2 CPU processes, gloo), or the same steps in one plain process."""

import json
import os
import sys

import torch
from conftest import tiny_llama

from fourierft import FourierFTConfig, get_fourierft_model
from fourierft.diagnostics import layer_scales

out, mode = sys.argv[1], sys.argv[2]
torch.manual_seed(1)
model = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=80, target_modules=["q_proj", "v_proj", "down_proj"]))
ids = torch.randint(2, 100, (4, 12), generator=torch.Generator().manual_seed(0))
losses = []
if mode == "zero3":
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank = int(os.environ["RANK"])
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config)
    assert all(p.ds_tensor.numel() < p.ds_numel for p in model.parameters() if p.ds_numel > 8)  # partitioned
    mine = ids[rank * 2 : (rank + 1) * 2]
    for _ in range(4):
        loss = engine(input_ids=mine, labels=mine).loss
        engine.backward(loss)
        engine.step()
        torch.distributed.all_reduce(loss := loss.detach().clone(), op=torch.distributed.ReduceOp.AVG)
        losses.append(loss.item())
else:
    rank = 0
    model.save_pretrained(f"{out}/initial")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(4):
        loss = sum(model(input_ids=ids[r * 2 : (r + 1) * 2], labels=ids[r * 2 : (r + 1) * 2]).loss for r in range(2)) / 2
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
scales = [(s.layer, s.weight_norm, s.delta_norm) for s in layer_scales(model, lr=1e-4)]  # every process, gathered
model.save_pretrained(out, is_main_process=rank == 0)  # every process gathers, rank 0 writes
if mode == "zero3":  # loading into the partitioned model, then saving again
    torch.distributed.barrier()  # rank 0 has written it
    model.load_adapter_weights(out)
    model.save_pretrained(f"{out}/reloaded", is_main_process=rank == 0)
if rank == 0:
    with open(f"{out}/run.json", "w") as f:
        json.dump({"losses": losses, "scales": scales}, f)
if mode == "zero3":
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()

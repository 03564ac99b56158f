"""Worker for tests/test_fsdp.py: FourierFT on a tiny Llama, trained a few steps with FSDP2
(fully_shard per decoder layer and at the root) over gloo, or without it in a single process."""

import json
import sys

import torch
import torch.distributed as dist
from conftest import tiny_llama

from fourierft import FourierFTConfig, get_fourierft_model, param_groups

out, sharded = sys.argv[1], sys.argv[2] == "fsdp"
if sharded:
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
torch.manual_seed(1)
model = get_fourierft_model(tiny_llama(), FourierFTConfig(n_frequency=80, scaling=300.0, target_modules=["q_proj", "v_proj", "down_proj"]))
if sharded:
    for layer in model.model.model.layers:
        fully_shard(layer)
    fully_shard(model.model)
opt = torch.optim.AdamW(param_groups(model, lr=1e-4))
ids = torch.randint(2, 100, (4, 12), generator=torch.Generator().manual_seed(0))
rows = ids.shape[0] // world
mine = ids[rank * rows : (rank + 1) * rows]
losses = []
for _ in range(4):
    loss = model(input_ids=mine, labels=mine).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    if sharded:
        dist.all_reduce(loss := loss.detach().clone(), op=dist.ReduceOp.AVG)
    losses.append(loss.item())
model.save_pretrained(out, is_main_process=rank == 0)  # every rank gathers, rank 0 writes
if sharded:  # resuming / loading the best checkpoint into the sharded model: every rank loads its shards
    dist.barrier()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.zero_()
    model.load_adapter_weights(out)
    model.save_pretrained(f"{out}/reloaded", is_main_process=rank == 0)
    # the recipes' Trainer saves checkpoints on every process together (a rank-0-only save would hang)
    from transformers import TrainingArguments

    from fourierft.recipes.engine import trainer_classes

    trainer_cls, _ = trainer_classes()
    args = TrainingArguments(output_dir=f"{out}/trainer", use_cpu=True, report_to=[])
    trainer_cls(model=model, args=args).save_model(f"{out}/trainer")
if rank == 0:
    with open(f"{out}/losses.json", "w") as f:
        json.dump(losses, f)
if sharded:
    dist.destroy_process_group()

"""Stands in for ``deploykit train`` under the rendered training Job's torchrun command.

It checks what the training code relies on (torchrun's env:// variables, a working
process group across every pod) and writes what it saw to ``--out``/rank<N>.json.
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
args, _ = parser.parse_known_args()

dist.init_process_group("gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)  # every rank must take part, or this hangs until the timeout
seen = {k: os.environ.get(k) for k in
        ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
         "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
seen.update(dist_rank=rank, dist_world=world, all_reduce=total.item())
Path(args.out).mkdir(parents=True, exist_ok=True)
Path(args.out, f"rank{rank}.json").write_text(json.dumps(seen))
dist.destroy_process_group()

"""One process of the FSDP2 checkpoint test (tests/test_sharded.py), launched by torchrun on CPU (gloo).

    torchrun --nproc_per_node 2 tests/fsdp2_worker.py MODEL_DIR OUT METHOD MODE

MODE ``run``: train 4 steps with a checkpoint after step 2, then write the full trainable weights
(``final.safetensors``) and the model files (``model/``) as ``medtune train`` does. MODE ``resume``:
resume from OUT's newest checkpoint and train to step 4 the same way (``final-resumed.safetensors``).
Not collected by pytest (no test_ prefix)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file


def main(model_dir: str, out_dir: str, method: str, mode: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoTokenizer, LlamaForCausalLM, get_scheduler

    from medtune.train import checkpoint, sharded
    from medtune.train.artifacts import save_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(out_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.get_decoder().layers:  # one unit a decoder layer, as the accelerate config wraps
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert sharded.is_sharded(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    sched = get_scheduler("linear", opt, num_warmup_steps=1, num_training_steps=4)
    start = 0
    if mode == "resume":
        resumed = checkpoint.resume(out, model, opt, sched, rank, world, dist.barrier, print)
        assert resumed is not None
        start = resumed[1]["step"]
    for step in range(start, 4):
        ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(100 * step + rank))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step + 1 == 2 and mode == "run":
            checkpoint.save(out, 2, model, opt, sched, {"history": [], "tokens": 0, "seconds": 0.0}, rank, world,
                            2, dist.barrier)
    full = sharded.trainable(model)
    if rank == 0:
        save_file(full, str(out / ("final.safetensors" if mode == "run" else "final-resumed.safetensors")))
        if mode == "run":
            save_model(out / "model", model, AutoTokenizer.from_pretrained(model_dir), full)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

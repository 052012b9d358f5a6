"""One process of ``medtune train`` under FSDP2 on CPU (tests/test_sharded.py), launched by torchrun (gloo).

    torchrun --nproc_per_node 2 tests/fsdp2_worker.py CONFIG [--resume]

accelerate enables FSDP on GPUs only (on CPU it runs MULTI_CPU); this worker runs the real
``medtune train`` and, right after the engine is built, switches its accelerate state to FSDP2 (a
plugin wrapping each decoder layer, as configs/accelerate/fsdp.yaml does). Everything after that is
the engine's FSDP2 path, as on GPUs: ``fully_shard`` in ``accelerator.prepare``, clipping on the
live sharded parameters, its sharded checkpoints and their loading, and medtune's gather of the
final weights. Not collected by pytest (no test_ prefix)."""

from __future__ import annotations

import sys


def force_fsdp2(trainer: object) -> None:
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
                                            reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT")
    state = trainer.accelerator.state  # type: ignore[attr-defined]
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    from medtune.cli import main as cli
    from medtune.train import run

    real = run._trainer

    def trainer(*args: object, **kwargs: object) -> object:
        built = real(*args, **kwargs)  # type: ignore[arg-type]
        force_fsdp2(built)
        return built

    run._trainer = trainer  # type: ignore[assignment]
    cli(["train", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])

"""Continued pretraining (LoRA or full) on packed blocks, through accelerate."""

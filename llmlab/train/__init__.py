"""The training core shared by `method=pretrain` and `method=finetune`: the optimiser step with gradient accumulation
(`step`) and exact-resume checkpoints (`checkpoint`)."""

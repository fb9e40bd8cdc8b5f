"""Training the encoder: the kernels and the one generic contrastive loss with its presets, the
augmentations, the batch samplers, the training loop (gradient cache, AMP, DDP), checkpoints with
resume, representation monitors, `pretrain`, `finetune`, patient heads fitted on bags of frozen features,
and the training-curve plots.

May import the base modules, `data` and `models`; never `evaluation`, `benchmark` or `inference`.
"""

"""Stage 2, slices -> slice scores -> patient score: the encoders (TinyNet, ResNet-18), the heads,
slice features and their patient read, ensembles of fine-tuned members, and probability calibration.
Everything here is needed at prediction time as well as at training time.

May import only the base modules; never `data` or a later stage.
"""

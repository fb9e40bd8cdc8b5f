"""WSPCirrhosis trainer: weakly-supervised positional contrastive learning on liver CT slices."""

__version__ = "0.1.0"

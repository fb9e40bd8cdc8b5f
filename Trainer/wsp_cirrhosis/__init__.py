"""WSPCirrhosis trainer: weakly-supervised positional contrastive learning on liver CT slices.

Public names (imported lazily, so `wsp-cirrhosis --help` does not load torch):
`contrastive_loss`, `predict_patient`, `load_bundle`, `prepare_ct`.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "contrastive_loss": "training.losses",
    "predict_patient": "inference.scoring",
    "load_bundle": "inference.bundle",
    "prepare_ct": "data.slices",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'wsp_cirrhosis' has no attribute {name!r}")


__all__ = ["__version__", *_PUBLIC]

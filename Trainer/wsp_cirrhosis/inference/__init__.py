"""Stage 3, a CT in use: model bundles (`export`), per-slice and patient scoring of one CT
(`scoring`, the API of the Slicer module), batch `predict`, the prediction report (slices.csv,
curve.png, prediction.json) and Grad-CAM relevance maps.

May import the base modules, `data` and `models`; never `training`, `evaluation` or `benchmark`.
The names below are the Slicer module's whole view of the trainer, imported lazily so that
`import wsp_cirrhosis.inference` stays light.
"""

from __future__ import annotations

_API = {  # name -> the module defining it, relative to this package
    "predict_patient": ".scoring", "load_model": ".scoring", "PatientPrediction": ".scoring",
    "SliceScore": ".scoring", "image_from_array": ".scoring", "default_bundle_path": ".bundle",
    "read_prediction": ".report", "binarize_mask": "..data.images",
    "WSPError": "..errors", "InputError": "..errors", "BundleError": "..errors",
    "ConfigError": "..errors", "Cancelled": "..errors",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_API)

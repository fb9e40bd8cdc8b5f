"""Fine-tuned models on disk: one layout for finetune's model.pt, fold models and bundle members.

A fine-tuned model is an encoder and a patient head (``patient_heads``):

- head ``mean`` (the paper's): a SliceClassifier; its weights are ``classifier_state`` (model.pt)
  / ``classifier`` (bundle member), exactly as before patient heads existed, so every older
  model.pt and bundle loads as ``mean``;
- head ``bands`` / ``attention``: a PatientClassifier; its weights are ``patient_head_state`` /
  ``patient_head``, and ``patient_head`` (the head's ``config()``) says how to rebuild it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .encoders import build_encoder
from .heads import SliceClassifier
from .patient_heads import PatientClassifier, head_from_config

MEAN = {"name": "mean"}


def head_config_of(model: nn.Module) -> dict[str, Any]:
    """The patient head's config of a fine-tuned model ({"name": "mean"} for a SliceClassifier)."""
    return model.head.config() if isinstance(model, PatientClassifier) else dict(MEAN)


def stored_head(entries: dict[str, Any]) -> dict[str, Any]:
    """The ``patient_head`` config of a model.pt dict or bundle.json ({"name": "mean"} when absent:
    files older than patient heads)."""
    return dict(entries.get("patient_head") or MEAN)


def model_states(model: nn.Module) -> dict[str, Any]:
    """The model.pt entries of a fine-tuned model: encoder name, weights (CPU) and head config."""
    state = {"encoder_name": model.encoder_name,
             "encoder_state": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
             "patient_head": head_config_of(model)}
    key = "patient_head_state" if isinstance(model, PatientClassifier) else "classifier_state"
    state[key] = {k: v.detach().cpu() for k, v in model.head.state_dict().items()}
    return state


def member_weights(trained: dict[str, Any]) -> dict[str, Any]:
    """A model.pt dict -> a bundle member's weights ({"encoder", "classifier" | "patient_head"})."""
    if "patient_head_state" in trained:
        return {"encoder": trained["encoder_state"], "patient_head": trained["patient_head_state"]}
    return {"encoder": trained["encoder_state"], "classifier": trained["classifier_state"]}


def build_classifier(encoder_name: str, weights: dict[str, Any], head: dict[str, Any] | None = None) -> nn.Module:
    """A fine-tuned model from a bundle member's weights and the head config (None: ``mean``), in eval mode.

    Raises:
        ConfigError, RuntimeError, KeyError: weights that do not fit (the caller names the file).
    """
    head = head or MEAN
    encoder = build_encoder(encoder_name)
    if head.get("name", "mean") == "mean":
        model: nn.Module = SliceClassifier(encoder, encoder_name)
        model.head.load_state_dict(weights["classifier"])
    else:
        model = PatientClassifier(encoder, head_from_config(head), encoder_name)
        model.head.load_state_dict(weights["patient_head"])
    model.encoder.load_state_dict(weights["encoder"])
    return model.eval()

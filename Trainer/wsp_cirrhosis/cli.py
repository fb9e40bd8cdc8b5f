"""`wsp-cirrhosis <command>`: argv -> config dataclass -> one run_* call -> exit code.

Flags are generated from the fields of the command's dataclass in `config.py`, so defaults
and help live in one place. Expected errors (WSPError) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__, config
from .errors import WSPError

# command -> (config class, "module:function", one-line help)
COMMANDS: dict[str, tuple[type, str, str]] = {
    "synth": (config.SynthConfig, "phantom.synth:run_synth", "write a synthetic phantom cohort (CTs, liver masks, manifests)"),
    "manifest": (config.ManifestConfig, "data.manifest_cmd:run_manifest", "folders of CTs (+ masks, + label table) -> cohort manifest and report"),
    "lihc": (config.LihcConfig, "data.lihc:run_lihc", "TCGA-LIHC: the authors' dataframe_lihc.csv + their NIfTI files -> histology manifest"),
    "audit": (config.AuditConfig, "evaluation.audit:run_audit", "shortcut audit: cross-validated AUC of simple cues (volume, scanner, texture, ...)"),
    "preprocess": (config.PreprocessCmdConfig, "data.preprocess:run_preprocess", "build the slice cache of a cohort (+ preview PNG)"),
    "pretrain": (config.PretrainConfig, "training.pretrain:run_pretrain", "contrastive pretraining on weak labels (and slice position)"),
    "finetune": (config.FinetuneConfig, "training.finetune:run_finetune", "train the slice classifier on histology labels"),
    "evaluate": (config.EvaluateConfig, "evaluation.evaluate:run_evaluate", "stratified k-fold patient-level AUC (frozen, finetune)"),
    "benchmark": (config.BenchmarkConfig, "benchmark.run:run_benchmark", "method x encoder x seed grid -> results table and plot"),
    "export": (config.ExportConfig, "inference.bundle:run_export", "package a fine-tuned run as a model bundle"),
    "predict": (config.PredictConfig, "inference.predict:run_predict", "per-slice cirrhosis scores and the patient prediction"),
}


def _parse_type(annotation: str) -> tuple[Callable[[str], Any] | None, bool]:
    """(converter, optional) for a string annotation such as 'Optional[int]'."""
    optional = annotation.startswith("Optional[")
    base = annotation[len("Optional["):-1] if optional else annotation
    conv = {"int": int, "float": _float, "str": str, "Path": Path, "bool": None}.get(base)
    return conv, optional


def _float(text: str) -> float:
    return math.inf if text.strip().lower() in ("inf", "infinity") else float(text)


def _add_fields(parser: argparse.ArgumentParser, cls: type, defaults: Any = None) -> None:
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        default = getattr(defaults, f.name) if defaults is not None else (
            f.default if f.default is not dataclasses.MISSING else None)
        if f.default_factory is not dataclasses.MISSING:  # nested sub-config: flatten its flags
            sub = f.default_factory()
            group = parser.add_argument_group(f.name)
            _add_fields(group, type(sub), sub)  # type: ignore[arg-type]
            continue
        conv, _ = _parse_type(str(f.type))
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": meta.get("help", ""), "dest": f.name}
        if conv is None:  # bool
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if meta.get("positional"):
            parser.add_argument(f.name, type=conv, metavar=f.name.upper(), help=kwargs["help"])
            continue
        kwargs.update(type=conv, metavar=f.name.replace("_", "-").upper())
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
            kwargs.pop("metavar")
        if meta.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None:
                kwargs["help"] += f" (default: {default})"
        parser.add_argument(flag, **kwargs)


def _build_config(cls: type, ns: argparse.Namespace) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            sub = f.default_factory()
            kwargs[f.name] = _build_config_from(type(sub), ns, sub)
        else:
            kwargs[f.name] = getattr(ns, f.name)
    return cls(**kwargs)


def _build_config_from(cls: type, ns: argparse.Namespace, defaults: Any) -> Any:
    return cls(**{f.name: getattr(ns, f.name, getattr(defaults, f.name)) for f in dataclasses.fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render the README's command reference)."""
    parser = argparse.ArgumentParser(
        prog="wsp-cirrhosis",
        description="Weakly-supervised positional contrastive learning for cirrhosis classification from liver CT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, _, help_text) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        _add_fields(sub, cls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0 ok, 1 partial failure, 2 bad input, 130 cancelled)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True,
    )
    cls, target, _ = COMMANDS[ns.command]
    module_name, func_name = target.split(":")
    try:
        cfg = _build_config(cls, ns)
        run = getattr(importlib.import_module(f"wsp_cirrhosis.{module_name}"), func_name)
        code = run(cfg)
    except WSPError as exc:
        _emit_error(ns, str(exc), exc.exit_code)
        if ns.verbose:
            raise
        print(f"wsp-cirrhosis {ns.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _emit_error(ns, "interrupted", 130)
        print(f"wsp-cirrhosis {ns.command}: interrupted; rerun with --resume where supported", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: its traceback goes to stderr; a JSON-lines reader still gets a last line
        _emit_error(ns, f"{type(exc).__name__}: {exc}", 1)
        raise
    return int(code or 0)


def _emit_error(ns: argparse.Namespace, message: str, exit_code: int) -> None:
    """The protocol's "error" event, when the command runs with `--progress jsonl`."""
    if getattr(ns, "progress", None) == "jsonl":
        from .progress import emit_event

        emit_event("error", message=message, exit_code=exit_code)

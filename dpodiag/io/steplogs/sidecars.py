"""Run metadata from the trainer's own files: configs beside a log, banners and args inside it.

Sources, all recorded with source "trainer-config": a W&B `config.yaml` (wandb's
`key: {value: ...}` layout, holding TRL's DPOConfig or OpenRLHF's CLI arguments), LLaMA-Factory's
`training_args.yaml`, the TrainingArguments JSON that HF's TensorBoard callback stores as text,
a console banner (`Beta: 0.1`, `beta=0.2`) and small JSON summaries with a top-level `beta`.
`training_args.bin` is a pickle and is never opened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# Standard names of trainer files that may sit beside a log, and what each one is.
CONFIG_NAMES = ("config.yaml", "training_args.yaml")
SUMMARY_JSON_SUFFIXES = ("_metrics.json", "results.json", "metrics.json")
# Trainer settings that change what is logged or how, copied into RunMeta.trainer_config.
TRAINER_SETTINGS = (
    "use_weighting", "ld_alpha", "rpo_alpha", "f_divergence_type", "f_alpha_divergence_coef",
    "sync_ref_model", "ref_model_sync_steps", "ref_model_mixup_alpha", "reference_free",
    "precompute_ref_log_probs", "loss_weights", "discopop_tau", "cpo_alpha", "padding_free",
    "model_adapter_name", "ref_adapter_name", "force_use_ref_model", "logging_steps",
    "logging_first_step", "logging_nan_inf_filter", "eval_steps", "eval_strategy",
    "gradient_accumulation_steps", "per_device_train_batch_size", "max_steps",
    "num_train_epochs", "transformers_version", "nll_loss_coef", "aux_loss_coef",
    "train_batch_size", "micro_train_batch_size", "max_epochs", "pref_ftx",
)

_BANNER = {
    "beta": re.compile(r"(?<![\w.])beta\s*[:=]\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", re.I),
    "loss_type": re.compile(r"(?<![\w.])loss[ _]type\s*[:=]\s*\[?\s*['\"]?([A-Za-z_]+)", re.I),
    "label_smoothing": re.compile(
        r"(?<![\w.])label[ _]smoothing\s*[:=]\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", re.I),
    "simpo_gamma": re.compile(
        r"(?<![\w.])simpo[ _]gamma\s*[:=]\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", re.I),
}


def run_prefix(path: Path) -> str:
    """Return the file name up to its first dot that starts a word: the run prefix of siblings.

    "trl-cdpo-ls0.05-llama31-8b.console_log.md" -> "trl-cdpo-ls0.05-llama31-8b"; a dot before a
    digit belongs to a number in the name.
    """
    match = re.match(r"^(.*?)\.(?=[A-Za-z_])", path.name)
    return match.group(1) if match else path.name


def siblings(path: Path) -> list[Path]:
    """List files beside `path` that share its run prefix or have a standard trainer file name."""
    folder = path.parent
    prefix = run_prefix(path)
    found = [p for p in folder.glob(f"{glob_escape(prefix)}.*") if p != path] if prefix else []
    found += [folder / name for name in (*CONFIG_NAMES, "training_args.bin")
              if (folder / name).exists()]
    return sorted(set(p for p in found if p.is_file()))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def sibling_meta(path: Path) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Read metadata from the trainer files beside `path`; return (values, notes, hints)."""
    values: dict[str, Any] = {}
    notes: list[str] = []
    hints: dict[str, Any] = {}
    for sibling in siblings(path):
        name = sibling.name
        if name.endswith(".bin"):
            notes.append(f"{name} is a pickle; dpodiag does not unpickle input, so it was not read")
        elif name.endswith(("config.yaml", "training_args.yaml")):
            _merge(values, notes, hints, sibling, config_file_values(sibling))
        elif name.endswith(SUMMARY_JSON_SUFFIXES):
            _merge(values, notes, hints, sibling, summary_json_values(sibling))
    return values, notes, hints


def _merge(values: dict, notes: list, hints: dict, source: Path,
           found: tuple[dict[str, Any], list[str], dict[str, Any]]) -> None:
    new_values, new_notes, new_hints = found
    if new_values:
        notes.append(f"metadata from {source.name}: {describe(new_values)}")
    for key, value in new_values.items():
        values.setdefault(key, value)
    notes.extend(new_notes)
    hints.update(new_hints)


def describe(values: Mapping[str, Any]) -> str:
    """Format meta values for a note; trainer settings are counted, not listed."""
    listed = ", ".join(f"{k}={v}" for k, v in values.items() if k != "trainer_config")
    settings = len(values.get("trainer_config", {}))
    return listed + (f" and {settings} trainer settings" if settings else "")


def trainer_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the settings of TRAINER_SETTINGS that a config sets, as plain values."""
    plain = (str, int, float, bool)
    picked = {}
    for key in TRAINER_SETTINGS:
        value = config.get(key)
        if isinstance(value, plain) or (isinstance(value, list)
                                        and all(isinstance(v, plain) for v in value)):
            picked[key] = value
    return picked


def config_file_values(path: Path) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Read a YAML trainer config (W&B config.yaml or training_args.yaml) into meta values."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (yaml.YAMLError, OSError) as error:
        return {}, [f"{path.name} could not be read as YAML ({type(error).__name__})"], {}
    if not isinstance(data, Mapping):
        return {}, [], {}
    return config_values(unwrap_wandb_config(data))


def unwrap_wandb_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn wandb's `key: {value: v}` layout into `key: v`; other layouts pass unchanged."""
    return {key: value["value"] if isinstance(value, Mapping) and "value" in value else value
            for key, value in data.items()}


def is_wandb_config(data: Any) -> bool:
    """Tell whether parsed YAML is a W&B run config (it has the `_wandb` entry)."""
    return isinstance(data, Mapping) and "_wandb" in data


def config_values(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Map a flat trainer config (TRL, OpenRLHF or LLaMA-Factory arguments) to meta values."""
    program = str((config.get("_wandb") or {}).get("e", "")) if isinstance(
        config.get("_wandb"), Mapping) else ""
    if "ref_pretrain" in config or "nll_loss_coef" in config or "openrlhf" in program:
        values, notes, hints = _openrlhf_values(config)
    elif "pref_beta" in config or "pref_loss" in config:
        values, notes, hints = _llamafactory_values(config)
    elif "beta" in config:
        values, notes, hints = _trl_values(config)
    else:
        return {}, [], {}
    settings = trainer_settings(config)
    if settings:
        values["trainer_config"] = settings
    return values, notes, hints


def _trl_values(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    # TRL's DPOConfig/CPOConfig/ORPOConfig/KTOConfig, as W&B or TensorBoard store them.
    notes: list[str] = []
    loss_type = config.get("loss_type")
    if isinstance(loss_type, list):
        if len(loss_type) == 1:
            loss_type = loss_type[0]
        else:
            notes.append(f"combined loss types {loss_type} with weights "
                         f"{config.get('loss_weights')}; loss_type left unset")
            loss_type = None
    values = {
        "framework": "trl",
        "beta": _number(config.get("beta")),
        "loss_type": loss_type if isinstance(loss_type, str) else None,
        "label_smoothing": _number(config.get("label_smoothing")),
        "simpo_gamma": _number(config.get("simpo_gamma")) if loss_type == "simpo" else None,
        "policy_model": config.get("_name_or_path") or config.get("model_name_or_path"),
    }
    _note_logging(config, notes)
    hints = {"transformers_version": config.get("transformers_version")}
    return _clean(values), notes, _clean(hints)


def _openrlhf_values(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], dict]:
    # OpenRLHF train_dpo: --ipo switches to IPO on summed log-ratios; label smoothing gives cDPO.
    smoothing = _number(config.get("label_smoothing")) or 0.0
    loss_type = "sigmoid"
    if config.get("ipo"):
        loss_type = "ipo"
    elif smoothing > 0:
        loss_type = "cdpo"
    values = {
        "framework": "openrlhf", "beta": _number(config.get("beta")), "loss_type": loss_type,
        "label_smoothing": smoothing, "logps_normalisation": "sum",
        "policy_model": config.get("pretrain"),
        "reference_model": config.get("ref_pretrain") or config.get("pretrain"),
    }
    notes: list[str] = []
    _note_logging(config, notes)
    return _clean(values), notes, {"framework": "openrlhf"}


def _llamafactory_values(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], dict]:
    # LLaMA-Factory averages log-probs per token for ipo, orpo and simpo.
    loss_type = config.get("pref_loss", "sigmoid")
    values = {
        "framework": "llamafactory", "beta": _number(config.get("pref_beta")),
        "loss_type": loss_type, "label_smoothing": _number(config.get("dpo_label_smoothing")),
        "simpo_gamma": _number(config.get("simpo_gamma")) if loss_type == "simpo" else None,
        "logps_normalisation": "mean" if loss_type in ("ipo", "orpo", "simpo") else "sum",
        "policy_model": config.get("model_name_or_path"),
        "reference_model": config.get("ref_model") or config.get("model_name_or_path"),
    }
    return _clean(values), [], {"framework": "llamafactory"}


def summary_json_values(path: Path) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Read beta, loss type and model name from a small project summary JSON beside a log."""
    try:
        if path.stat().st_size > 1_000_000:
            return {}, [], {}
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return {}, [], {}
    if not isinstance(data, Mapping) or "beta" not in data:
        return {}, [], {}
    values = {"beta": _number(data.get("beta")), "loss_type": data.get("loss_type"),
              "label_smoothing": _number(data.get("label_smoothing")),
              "policy_model": data.get("base_model") or data.get("model_name_or_path")}
    return _clean(values), [], {}


def banner_values(text: str) -> dict[str, Any]:
    """Find hyperparameters that a training script printed: `Beta: 0.1`, `loss_type='ipo'`."""
    values: dict[str, Any] = {}
    for name, pattern in _BANNER.items():
        match = pattern.search(text)
        if match:
            raw = match.group(1)
            values[name] = raw.lower() if name == "loss_type" else _number(raw)
    return _clean(values)


def _note_logging(config: Mapping[str, Any], notes: list[str]) -> None:
    # A console log without step keys can be placed on the step axis with logging_steps.
    steps = config.get("logging_steps")
    if isinstance(steps, (int, float)) and steps and steps != 1:
        notes.append(f"the trainer config sets logging_steps={steps:g}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value not in (None, "")}

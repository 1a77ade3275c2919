"""Files that sit beside step logs but are not logs: they are recognised and rejected with a
message that names what they are and what to pass instead.

- a W&B `config.yaml` (run settings in wandb's `key: {value: ...}` layout) and a trainer's
  `training_args.yaml`: run metadata, read automatically when the log beside them is read.
- `training_args.bin`: a pickle, which dpodiag never loads.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dpodiag.errors import InputError
from dpodiag.io.steplogs.sidecars import glob_escape, is_wandb_config, run_prefix

FORMATS = ("wandb-config", "trainer-config", "pickle")


def sniff(path: Path, head: bytes) -> str | None:
    """Return the kind of a recognised non-log file, or None."""
    if path.name.endswith(".bin") and "training_args" in path.name:
        return "pickle"
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(head.decode("utf-8", errors="replace"))
        except yaml.YAMLError:
            return None
        if is_wandb_config(data):
            return "wandb-config"
        if isinstance(data, dict) and ({"pref_beta", "stage"} & set(data) or "beta" in data):
            return "trainer-config"
    return None


def read(path: Path, fmt: str) -> None:
    """Raise an InputError that names what the file is and which file to pass instead."""
    log = _log_beside(path)
    if fmt == "wandb-config":
        raise InputError(path, "is a W&B run config (config.yaml), not a training log",
                         f"pass the log beside it ({log or 'files/output.log, wandb-summary.json'}"
                         " or a history CSV export); its settings are read from there")
    if fmt == "trainer-config":
        log = log or "trainer_state.json or trainer_log.jsonl"
        raise InputError(path, "is a trainer config, not a training log",
                         f"pass the log in the same folder ({log}); its settings are read "
                         "from there")
    raise InputError(path, "is a pickle (training_args.bin); dpodiag never unpickles input",
                     f"pass {log or 'trainer_state.json'} from the same folder instead")


def _log_beside(path: Path) -> str | None:
    # The step log of the same run: a prefixed sibling, files/output.log or trainer_state.json.
    folder = path.parent
    prefix = glob_escape(run_prefix(path))
    candidates = [match for pattern in ("*output.log", "*trainer_state.json", "*wandb-summary.json")
                  for match in sorted(folder.glob(f"{prefix}.{pattern}"))]
    candidates += [folder / name for name in ("output.log", "files/output.log",
                                              "trainer_state.json", "trainer_log.jsonl",
                                              "wandb-summary.json")]
    for candidate in candidates:
        if candidate.is_file() and candidate != path:
            return str(candidate)
    return None

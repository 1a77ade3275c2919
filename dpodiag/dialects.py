"""Framework and version dialects of step logs: metric names, split prefixes, scaling, reductions.

A dialect describes how one trainer family writes its aggregate metrics. Readers use it to map
the logged keys onto the canonical step-table columns, and checks use it to interpret the values
(beta-scaled or not, summed or per-token log-probs, window mean or single micro-batch).
The facts come from each framework's trainer source as of the versions named in `versions`.

Canonical metric names are `dpodiag.schema.STEP_METRICS` plus `EXTRA_METRICS` below. A logged key
that maps to neither becomes an `extra_<sanitised key>` column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from dpodiag.errors import UsageError
from dpodiag.schema import STEP_METRICS

# Relative spread of rewards / policy log-probs across records that still counts as one value
# (beta, for a trainer without a reference): the 4 significant digits of printed dicts leave up
# to 1e-3.
FIXED_RATIO_SPREAD = 3e-3


def fixed_reward_ratio(frame: pl.DataFrame, sides: list[tuple[str, str]]) -> float | None:
    """Return reward / policy log-prob when it is one positive value in every record, else None.

    `sides` are (reward column, log-prob column) pairs, all of which must be in `frame` with
    three or more records each where both are finite and the log-prob is not 0. A trainer
    without a reference logs rewards = beta * log-probs, so the value is its beta; a
    reference-based trainer's rewards start near 0 whatever the log-probs are.
    """
    ratios = []
    for reward, logps in sides:
        if not {reward, logps} <= set(frame.columns):
            return None
        values = frame.select((pl.col(reward).cast(pl.Float64, strict=False)
                               / pl.col(logps).cast(pl.Float64, strict=False)).alias("ratio"),
                              pl.col(logps).cast(pl.Float64, strict=False).alias("logps"))
        values = values.filter(pl.col("ratio").is_finite() & (pl.col("logps") != 0)).get_column("ratio")
        if values.len() < 3:
            return None
        ratios.append(values)
    if not ratios:
        return None
    values = pl.concat(ratios)
    middle = float(values.median())
    if middle <= 0 or float((values - middle).abs().max()) > FIXED_RATIO_SPREAD * middle:
        return None
    return middle

# Canonical names for metrics outside schema.STEP_METRICS, with the meaning of each.
EXTRA_METRICS: dict[str, str] = {
    "sft_loss": "SFT (NLL) term on the chosen response (LLaMA-Factory, NeMo)",
    "odds_ratio_loss": "LLaMA-Factory ORPO odds-ratio term",
    "log_odds_ratio": "TRL ORPO mean log sigmoid(log-odds)",
    "log_odds_chosen": "TRL ORPO mean log-odds of the chosen response",
    "preference_loss": "NeMo preference term of the loss",
    "entropy": "mean token entropy of the policy on completions (TRL >= 0.29)",
    "mean_token_accuracy": "argmax match rate on chosen tokens (TRL >= 0.29)",
    "num_tokens": "tokens seen so far, cumulative (TRL >= 0.29)",
    "aux_loss": "MoE router auxiliary loss",
    "kl": "KTO batch KL estimate z0 (or a GRPO KL term)",
    "avg_logps_chosen": "per-token mean log-prob of chosen responses, logged next to the sums",
    "avg_logps_rejected": "per-token mean log-prob of rejected responses, logged next to the sums",
    "response_length_chosen": "mean chosen response length in tokens",
    "response_length_rejected": "mean rejected response length in tokens",
    "gamma": "SimPO target margin as logged per step",
    "loss_mean": "OpenRLHF running mean of the loss over gradient-accumulation micro-batches",
    "accuracy_mean": "OpenRLHF running mean of the accuracy over micro-batches",
    "rewards_average": "open-instruct mean of chosen and rejected rewards",
    "ref_logps_chosen": "reference log-prob of chosen responses, where a trainer logs it",
    "ref_logps_rejected": "reference log-prob of rejected responses, where a trainer logs it",
    "examples_seen": "examples processed so far (the x-axis of the eric-mitchell DPO repo)",
    "delta": "BCO running mean of rewards",
}
# Every canonical step-log metric name, which --column may map.
STEP_LOG_METRICS = frozenset({*STEP_METRICS, *EXTRA_METRICS})
CANONICAL_METRICS = [*STEP_METRICS, *EXTRA_METRICS]

# Keys of the HF Trainer's end-of-training summary record; they are not per-step metrics.
HF_SUMMARY_KEYS = frozenset({
    "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
    "train_loss",
})
# Keys that hold the step, in decreasing priority. `_step` counts W&B log calls, not updates.
STEP_KEYS = ("step", "global_step", "current_steps", "training_step", "train_step",
             "optimizer_step", "counters/updates", "iteration", "iter", "Step", "_step")
# Bookkeeping keys that are neither metrics nor steps.
IGNORED_KEYS = frozenset({"total_steps", "percentage", "_runtime", "_timestamp", "_wandb"})

_EVAL_PREFIX = re.compile(r"^(?:eval|evaluation|val|valid|validation)(?:-[\w.-]+)?[/_]")
_TRAIN_PREFIX = re.compile(r"^(?:train|training)[/_]")
_INFIX_SPLIT = re.compile(r"^(?P<head>[^/]+?)_(?P<split>train|eval)(?P<tail>/.*)?$")
_TRAILING_SPLIT = re.compile(r"^(?P<head>.+)/(?P<split>train|eval|val)$")

_TRL = {
    "loss": "loss", "grad_norm": "grad_norm", "learning_rate": "learning_rate", "epoch": "epoch",
    "rewards/chosen": "rewards_chosen", "rewards/rejected": "rewards_rejected",
    "rewards/margins": "rewards_margins", "rewards/accuracies": "rewards_accuracies",
    "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected",
    "logits/chosen": "logits_chosen", "logits/rejected": "logits_rejected",
    "nll_loss": "nll_loss", "aux_loss": "aux_loss",
}
_TRL_V1 = {**_TRL, "entropy": "entropy", "mean_token_accuracy": "mean_token_accuracy",
           "num_tokens": "num_tokens"}
_SIMPO = {**_TRL, "avg_logps/chosen": "avg_logps_chosen",
          "avg_logps/rejected": "avg_logps_rejected",
          "response_lengths/chosen": "response_length_chosen",
          "response_lengths/rejected": "response_length_rejected",
          "objective/gamma": "gamma"}
_NEMO = {"loss": "loss", "sft_loss": "sft_loss", "preference_loss": "preference_loss",
         "acc": "rewards_accuracies", "accuracy": "rewards_accuracies",
         "rewards_chosen_mean": "rewards_chosen", "rewards_rejected_mean": "rewards_rejected",
         "grad_norm": "grad_norm", "lr": "learning_rate", "epoch": "epoch"}


@dataclass(frozen=True, eq=False)
class Dialect:
    """Naming, scaling and reduction rules of one framework (and version range) for its metrics."""

    name: str
    framework: str | None
    versions: str
    aliases: Mapping[str, str]
    """Logged key, after the split prefix is removed -> canonical metric name."""
    rewards_beta_scaled: bool = True
    """False where rewards are raw log-ratios without beta (NeMo)."""
    reference_free: bool = False
    """True where rewards are beta * policy log-probs and no reference model exists."""
    per_token_losses: frozenset[str] = frozenset()
    """Loss types for which logged logps/rewards are per-token means instead of sums."""
    reduction: str = "window-mean"
    """window-mean, rank-local-window-mean, last-micro-batch, single-step or per-evaluation."""
    loss_decimals: int | None = None
    """Decimals the logged loss is rounded to, where the trainer rounds it."""
    step_unit: str = "optimizer-step"
    """Unit of the step key: optimizer-step, iteration or examples."""
    preference: bool = True
    """False for logs that are not preference optimisation (GRPO)."""
    paired: bool = True
    """False for unpaired objectives (KTO), where margins and accuracies differ in meaning."""
    implied_loss_type: str | None = None
    """Loss type that the keys alone prove, used when no config declares one."""
    loss_type_markers: Mapping[str, str] = field(default_factory=dict)
    """Canonical column -> the loss type its presence proves (LLaMA-Factory's odds_ratio_loss)."""
    description: str = ""
    guess_names: bool = field(default=False)
    """Map unknown keys by name heuristics (generic logs and hand-written trainers)."""

    def logps_normalisation(self, loss_type: str | None) -> str:
        """Return "mean" when logged log-probs are per-token for `loss_type`, else "sum"."""
        if self.reference_free and not self.per_token_losses:
            return "mean"
        return "mean" if loss_type in self.per_token_losses else "sum"

    def canonical(self, base: str) -> str | None:
        """Return the canonical metric for a logged key without split prefix, or None."""
        if base in self.aliases:
            return self.aliases[base]
        lowered = base.lower()
        if lowered in self.aliases:
            return self.aliases[lowered]
        return guess_canonical(base) if self.guess_names else None


def _dialects() -> dict[str, Dialect]:
    # Build the registry; the union of every alias table serves the generic dialect.
    # The HF Trainer logs the loss rounded to 4 decimals (transformers 4.x, and the TRL 1.x
    # logs in the test fixtures are rounded too).
    hf = dict(loss_decimals=4)
    table = [
        Dialect("trl-legacy", "trl", "trl <= 0.13", _TRL, per_token_losses=frozenset({"ipo"}),
                reduction="rank-local-window-mean", description=(
                    "TRL DPOTrainer up to 0.13: metrics are per-device means, not gathered"), **hf),
        Dialect("trl", "trl", "trl 0.14 - 0.28", _TRL, description=(
            "TRL DPOTrainer 0.14-0.28: gathered metrics averaged over the logging window"), **hf),
        Dialect("trl-v1", "trl", "trl >= 0.29", _TRL_V1, description=(
            "TRL DPOTrainer 0.29 and 1.x: adds entropy, mean_token_accuracy, num_tokens"), **hf),
        Dialect("trl-cpo", "trl", "trl CPOTrainer", _SIMPO, reference_free=True,
                per_token_losses=frozenset({"ipo", "simpo"}), description=(
                    "TRL CPOTrainer: rewards are beta * policy log-probs, no reference"), **hf),
        Dialect("trl-simpo", "trl", "trl CPOTrainer loss_type=simpo and SimPO forks", _SIMPO,
                reference_free=True, implied_loss_type="simpo", description=(
                    "SimPO: rewards are beta * per-token mean policy log-probs"), **hf),
        Dialect("trl-orpo", "trl", "trl ORPOTrainer",
                {**_TRL, "log_odds_ratio": "log_odds_ratio", "log_odds_chosen": "log_odds_chosen"},
                reference_free=True, implied_loss_type="orpo", description=(
                    "ORPO: per-token mean log-probs, rewards are beta * policy log-probs"), **hf),
        Dialect("trl-kto", "trl", "trl KTOTrainer", {**_TRL_V1, "kl": "kl"}, paired=False,
                implied_loss_type="kto", description=(
                    "KTO: unpaired, logs no accuracies, and a per-side mean is NaN when a "
                    "batch has no example of that side"), **hf),
        Dialect("trl-grpo", "trl", "trl GRPOTrainer", {**_TRL_V1, "kl": "kl"}, preference=False,
                description="GRPO (online RL): not a preference-optimisation log", **hf),
        Dialect("llamafactory", "llamafactory", "LLaMA-Factory (pins trl 0.18 - 0.24)",
                {**_TRL, "sft_loss": "sft_loss", "odds_ratio_loss": "odds_ratio_loss",
                 "accuracy": "rewards_accuracies", "lr": "learning_rate"},
                per_token_losses=frozenset({"ipo", "orpo", "simpo"}),
                loss_type_markers={"odds_ratio_loss": "orpo"}, description=(
                    "LLaMA-Factory: TRL keys in trainer_state.json; its trainer_log.jsonl "
                    "has accuracy only"), **hf),
        Dialect("openrlhf", "openrlhf", "OpenRLHF train_dpo",
                {"loss": "loss", "acc": "rewards_accuracies", "chosen_reward": "rewards_chosen",
                 "reject_reward": "rewards_rejected", "lr": "learning_rate",
                 "grad_norm": "grad_norm", "nll_loss": "nll_loss", "loss_mean": "loss_mean",
                 "acc_mean": "accuracy_mean", "epoch": "epoch"},
                reduction="last-micro-batch", description=(
                    "OpenRLHF: last micro-batch before the update; no margins, no logps")),
        Dialect("torchtune", "torchtune", "torchtune DPO recipes",
                {**_TRL, "log_probs/chosen": "logps_chosen", "log_probs/rejected": "logps_rejected",
                 "lr": "learning_rate"},
                reduction="single-step", description=(
                    "torchtune: values of the single logged step; logits average padding too")),
        Dialect("nemo-aligner", "nemo-aligner", "NeMo-Aligner (archived 2025)", _NEMO,
                rewards_beta_scaled=False, description=(
                    "NeMo-Aligner: rewards_* are log-ratios without beta")),
        Dialect("nemo-rl", "nemo-rl", "NeMo-RL DPOLossFn", _NEMO, rewards_beta_scaled=False,
                description="NeMo-RL: rewards_* are log-ratios without beta; logged every step"),
        Dialect("mlx-lm", "mlx-lm", "mlx-lm LoRA trainer with DPO",
                {"loss": "loss", "chosen_reward": "rewards_chosen",
                 "rejected_reward": "rewards_rejected", "accuracy": "rewards_accuracies",
                 "learning_rate": "learning_rate"},
                reduction="single-step", loss_decimals=3, step_unit="iteration", description=(
                    "mlx-lm console: per-iteration values printed with 3 decimals")),
        Dialect("open-instruct", "open-instruct", "open-instruct dpo_tune_cache",
                {**_TRL, "rewards/accuracy": "rewards_accuracies",
                 "rewards/margin": "rewards_margins", "rewards/average": "rewards_average"},
                per_token_losses=frozenset({"dpo_norm", "simpo"}), description=(
                    "open-instruct: singular accuracy/margin keys; dpo_norm is the default")),
        Dialect("eric-mitchell-dpo", "eric-mitchell-dpo",
                "eric-mitchell/direct-preference-optimization",
                {**_TRL, "counters/examples": "examples_seen",
                 "logps_eval_prob/chosen": "logps_chosen",
                 "logps_eval_prob/rejected": "logps_rejected"},
                step_unit="examples", description=(
                    "reference DPO repo: the W&B x-axis is examples seen, not optimizer steps")),
    ]
    union: dict[str, str] = {}
    for dialect in table:
        union.update(dialect.aliases)
    table.append(Dialect("generic", None, "any", union, guess_names=True,
                         description="unknown trainer: known names plus name heuristics"))
    return {dialect.name: dialect for dialect in table}


DIALECTS = _dialects()


def get_dialect(name: str) -> Dialect:
    """Return the dialect called `name`; raise UsageError listing the known names otherwise."""
    if name not in DIALECTS:
        raise UsageError(f"unknown dialect {name!r}; use one of: {', '.join(DIALECTS)}")
    return DIALECTS[name]


def split_key(key: str) -> tuple[str | None, str]:
    """Split a logged key into (split, base key).

    "eval_rewards/chosen" -> ("eval", "rewards/chosen"). The split is None for keys without a
    split marker; the step-table builder gives those the split of the record they sit in.
    Markers: prefixes eval_, eval/, val_, validation-NAME/, train/ and train_ (stripped twice
    for OpenRLHF's eval/eval_loss), infixes such as rewards_train/chosen and suffixes such as
    loss/train (both used by the eric-mitchell DPO repo).
    """
    for pattern, split in ((_EVAL_PREFIX, "eval"), (_TRAIN_PREFIX, "train")):
        match = pattern.match(key)
        if match:
            base = key[match.end():]
            again = pattern.match(base)
            return split, base[again.end():] if again else base
    for pattern in (_INFIX_SPLIT, _TRAILING_SPLIT):
        match = pattern.match(key)
        if match:
            split = "eval" if match["split"] in ("eval", "val") else "train"
            return split, match["head"] + (match.groupdict().get("tail") or "")
    return None, key


def guess_canonical(base: str) -> str | None:
    """Map a hand-written trainer's metric name onto a canonical one by the words it contains."""
    # The words of the name, and the facts they state: side, reward, log-prob.
    words = set(re.split(r"[^a-z0-9]+", base.lower())) - {""}
    logp = bool(words & {"logp", "logps", "logprob", "logprobs"}
                or {"log", "probs"} <= words or {"log", "prob"} <= words)
    side = None
    if "chosen" in words:
        side = "chosen"
    elif words & {"rejected", "reject"}:
        side = "rejected"
    reward = bool(words & {"reward", "rewards"})

    # Rules from the most to the least specific name.
    if words <= {"loss", "losses"} and words:
        return "loss"
    if reward and words & {"margin", "margins", "diff", "gap"}:
        return "rewards_margins"
    if words & {"acc", "accuracy", "accuracies"} and (reward or len(words) == 1):
        return "rewards_accuracies"
    if reward and side:
        return f"rewards_{side}"
    if logp and side:
        reference = bool(words & {"ref", "reference"})
        return f"ref_logps_{side}" if reference else f"logps_{side}"
    if "logits" in words and side:
        return f"logits_{side}"
    if words in ({"lr"}, {"learning", "rate"}):
        return "learning_rate"
    if {"grad", "norm"} <= words or "gradnorm" in words:
        return "grad_norm"
    if words and words <= {"epoch", "epochs", "frac"}:
        return "epoch"
    if words == {"nll", "loss"} or words == {"nll"}:
        return "nll_loss"
    return None


def detect_dialect(keys: Iterable[str], meta: Mapping[str, Any] | None = None) -> Dialect:
    """Pick the dialect that logged `keys` (in first-seen order), helped by `meta` hints.

    `meta` may hold "format" (the reader's format name), "framework" (from a trainer config)
    and "transformers_version". Rules run from the most to the least specific key signature.
    """
    ordered = list(dict.fromkeys(keys))
    bases = {split_key(key)[1] for key in ordered} | set(ordered)
    meta = meta or {}
    framework = meta.get("framework")

    # Formats and frameworks that name their dialect outright.
    by_hint = {"mlx-lm-console": "mlx-lm", "nemo-rl-console": "nemo-rl",
               "torchtune-txt": "torchtune", "llamafactory-jsonl": "llamafactory"}
    if meta.get("format") in by_hint:
        return DIALECTS[by_hint[meta["format"]]]
    if framework in ("openrlhf", "llamafactory", "nemo-rl", "nemo-aligner", "torchtune"):
        return DIALECTS[framework]

    # Key signatures of the trainers other than TRL's DPOTrainer.
    grpo = {"reward_std", "frac_reward_zero_std", "completion_length"} & bases or any(
        re.fullmatch(r"rewards/.+/(mean|std)", base) for base in bases)
    if grpo and "rewards/chosen" not in bases:
        return DIALECTS["trl-grpo"]
    if {"current_steps", "odds_ratio_loss"} & bases:
        return DIALECTS["llamafactory"]
    # OpenRLHF writes "reject_reward"; hand-written loops that log chosen_reward and
    # rejected_reward are read by the generic name rules.
    if "reject_reward" in bases or {"acc_mean", "loss_mean"} <= bases:
        return DIALECTS["openrlhf"]
    if {"log_probs/chosen", "tokens_per_second_per_gpu"} & bases:
        return DIALECTS["torchtune"]
    if "rewards_chosen_mean" in bases:
        nemo_rl = "num_valid_samples" in bases or "accuracy" in bases
        return DIALECTS["nemo-rl" if nemo_rl else "nemo-aligner"]
    if {"training_step", "rewards/average", "rewards/accuracy"} & bases:
        return DIALECTS["open-instruct"]
    if any(key.startswith(("rewards_train/", "logps_train/", "logps_eval_prob_"))
           or key in ("loss/train", "counters/examples") for key in ordered):
        return DIALECTS["eric-mitchell-dpo"]

    # TRL trainers other than DPO, then DPO by generation.
    if {"log_odds_ratio", "log_odds_chosen"} & bases:
        return DIALECTS["trl-orpo"]
    if "kl" in bases and "rewards/chosen" in bases and "rewards/accuracies" not in bases:
        return DIALECTS["trl-kto"]
    if "objective/gamma" in bases or {"avg_logps/chosen", "avg_logps/rejected"} <= bases:
        return DIALECTS["trl-simpo"]
    if "rewards/chosen" not in bases and "logps/chosen" not in bases:
        return DIALECTS["generic"]
    if {"entropy", "mean_token_accuracy", "num_tokens"} & bases:
        return DIALECTS["trl-v1"]
    if legacy_trl_reason(ordered, meta.get("transformers_version"), meta.get("format")) is not None:
        return DIALECTS["trl-legacy"]
    return DIALECTS["trl"]


# Step-log formats that never hold grad_norm: tables of evaluations.
EVAL_TABLE_FORMATS = ("results-table",)


def legacy_trl_reason(ordered: list[str], transformers_version: Any, fmt: str | None = None) -> str | None:
    """Return why a TRL DPOTrainer log with keys `ordered` (in first-seen order) reads as TRL
    0.13 or earlier, or None when it does not.

    TRL 0.14 needs transformers >= 4.46. grad_norm appeared in transformers 4.38 (early 2024),
    and the 2023 DPOTrainer logged rejected before chosen.
    """
    stripped = [split_key(key)[1] for key in ordered]
    if transformers_version:
        parts = re.findall(r"\d+", str(transformers_version))[:2]
        if len(parts) == 2:
            if (int(parts[0]), int(parts[1])) < (4, 46):
                return f"its transformers version {transformers_version} is older than 4.46"
            return None
    if "grad_norm" not in stripped and fmt not in EVAL_TABLE_FORMATS:
        return "it logs no grad_norm, which transformers logs since 4.38"
    if "logps/rejected" in stripped and "logps/chosen" in stripped \
            and stripped.index("logps/rejected") < stripped.index("logps/chosen"):
        return "it logs logps/rejected before logps/chosen, as the 2023 DPOTrainer did"
    return None

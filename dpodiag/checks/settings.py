"""Trainer settings that change the logged loss beyond what beta, the loss type and the
log-probs determine. With one of them on, a check that recomputes the loss from the margin, or
bounds it, does not apply."""

from __future__ import annotations

from typing import Any

# Coefficients of extra loss terms: a value other than 0 adds a term the margin does not give.
EXTRA_TERM_SETTINGS = ("rpo_alpha", "nll_loss_coef", "aux_loss_coef", "pref_ftx", "cpo_alpha")


def loss_altering_settings(config: dict[str, Any]) -> list[str]:
    """Return the settings of `config` (RunMeta.trainer_config) that change the per-pair loss,
    each as "name=value".

    - use_weighting (TRL WPO): each pair's loss is multiplied by a weight computed from its
      per-token probabilities, which summed log-probs do not give.
    - f_divergence_type other than reverse KL (TRL): the margin inside the loss is another
      function of the log-ratios.
    - ld_alpha other than 1 (LD-DPO): the log-probs inside the loss weigh the tokens past the
      shorter response by ld_alpha, so the logged summed log-probs are not the ones the loss saw.
    - loss_weights with several entries or an entry other than 1: a weighted sum of losses.
    - a coefficient of an extra term (rpo_alpha, an NLL or auxiliary loss) other than 0.
    """
    found = []
    if config.get("use_weighting"):
        found.append("use_weighting=True")
    divergence = config.get("f_divergence_type")
    if divergence is not None and str(divergence).lower().rsplit(".", 1)[-1] != "reverse_kl":
        found.append(f"f_divergence_type={divergence}")
    ld_alpha = config.get("ld_alpha")
    if ld_alpha is not None and ld_alpha != 1:
        found.append(f"ld_alpha={ld_alpha}")
    weights = config.get("loss_weights")
    if isinstance(weights, (list, tuple)) and (len(weights) > 1 or any(w != 1 for w in weights)):
        found.append(f"loss_weights={list(weights)}")
    for name in EXTRA_TERM_SETTINGS:
        value = config.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0:
            found.append(f"{name}={value}")
    return found


def settings_skip_reason(config: dict[str, Any]) -> str | None:
    """Return the reason a loss recomputation does not apply under `config`, or None when it does."""
    found = loss_altering_settings(config)
    if not found:
        return None
    return f"{', '.join(found)} change{'s' if len(found) == 1 else ''} the loss beyond the margin"

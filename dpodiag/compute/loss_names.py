"""Names of the loss variants, without torch, for code that validates a declared loss type.

`dpodiag.compute.losses.LOSSES` maps each name in `PAIRED_LOSS_TYPES` to its per-pair function.
Reading a log needs only these names, so it does not wait for torch to import.
"""

from __future__ import annotations

# Variants with a per-pair loss, in the order of the registry.
PAIRED_LOSS_TYPES = ("sigmoid", "cdpo", "robust", "hinge", "ipo", "sigmoid_norm", "exo_pair", "nca_pair",
                     "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop", "simpo", "cpo", "orpo")

# Loss types that exist but have no per-pair form here: unpaired (KTO, BCO) or batch-sorted (AOT).
# A run may declare them; checks that need a per-pair loss skip such runs.
OTHER_LOSS_TYPES = frozenset({"kto", "kto_pair", "apo_zero_unpaired", "bco", "aot", "aot_pair", "aot_unpaired"})

# Names that frameworks use for the same variants.
LOSS_ALIASES = {"dpo": "sigmoid", "slic": "hinge", "rso": "hinge", "dpo_norm": "sigmoid_norm"}


def canonical_loss_type(name: str | None) -> str | None:
    """Return the registry name for `name` (case-insensitive, aliases resolved) or None if unknown."""
    if name is None:
        return None
    key = str(name).strip().lower()
    key = LOSS_ALIASES.get(key, key)
    return key if key in PAIRED_LOSS_TYPES or key in OTHER_LOSS_TYPES else None

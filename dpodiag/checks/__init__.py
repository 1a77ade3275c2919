"""The check catalogue: every module here registers its checks in `REGISTRY` on import."""

from __future__ import annotations

from dpodiag.checks import (  # noqa: F401  (importing a module registers its checks)
    dynamics, identities, inference, objective, reference, values,
)
from dpodiag.checks.base import REGISTRY, SEVERITIES, CheckSpec, Finding, RunData, Skip


def run_checks(data: RunData) -> list[Finding]:
    """Run every registered check that applies to the run's evidence level.

    Checks that skip themselves are listed in one info finding, code checks-skipped.
    """
    findings: list[Finding] = []
    skipped: dict[str, str] = {}
    dialect = data.dialect
    not_preference = dialect is not None and not dialect.preference
    for spec in REGISTRY.values():
        if not_preference:
            skipped[spec.code] = f"the log is not preference optimisation ({dialect.name})"
            continue
        if data.run.level not in spec.levels:
            skipped[spec.code] = f"needs a {' or '.join(l.rstrip('s') for l in spec.levels)} log"
            continue
        try:
            findings.extend(spec.fn(data))
        except Skip as reason:
            skipped[spec.code] = str(reason)
    if skipped:
        listed = "; ".join(f"{code}: {why}" for code, why in skipped.items())
        findings.append(Finding(code="checks-skipped", severity="info", run=data.name,
                                title=f"{len(skipped)} check(s) did not apply",
                                message=f"Skipped: {listed}.", evidence={"skipped": skipped}))
    order = {severity: i for i, severity in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.step if f.step is not None else -1))


__all__ = ["REGISTRY", "CheckSpec", "Finding", "RunData", "Skip", "run_checks"]

"""Info findings for metadata that was inferred or defaulted rather than declared."""

from __future__ import annotations

from dpodiag.checks.base import Finding, RunData, check
from dpodiag.compute.infer import MEAN_RATIO, SUM_RATIO


def _inferred(data: RunData, field: str, code: str, label: str) -> list[Finding]:
    source = data.run.meta.source_of(field)
    if source not in ("inferred", "default"):
        return []
    value = getattr(data.run.meta, field)
    value = round(value, 4) if isinstance(value, float) else value
    evidence = {"value": value, "source": source, **data.run.meta.inference.get(field, {})}
    method = f" ({evidence['method']})" if evidence.get("method") else ""
    if source == "default":
        message = (f"No source declares the {label}; dpodiag assumes {value}{method}. Pass "
                   f"--{field.replace('_', '-')} or write it into the log's metadata.")
    else:
        message = f"No source declares the {label}; the log identifies it as {value}{method}."
    return [data.finding(code, f"{label.capitalize()} {value} was {source == 'default' and 'assumed' or 'inferred'}",
                         message, evidence=evidence)]


@check("beta-inferred", "info", ("pairs", "steps", "unpaired"),
       meaning="Beta was not declared; it was inferred from the log (or assumed).",
       causes="No trainer config, metadata, sidecar or --beta flag gives beta.",
       fix="Declare beta with --beta, a sidecar RUN.dpodiag.json or the parquet metadata.")
def beta_inferred(data: RunData) -> list[Finding]:
    return _inferred(data, "beta", "beta-inferred", "beta")


@check("loss-type-inferred", "info", ("pairs", "steps", "unpaired"),
       meaning="The loss type was not declared; it was inferred from the logged loss (or assumed).",
       causes="No trainer config, metadata, sidecar or --loss-type flag gives the loss type.",
       fix="Declare it with --loss-type, a sidecar RUN.dpodiag.json or the parquet metadata.")
def loss_type_inferred(data: RunData) -> list[Finding]:
    return _inferred(data, "loss_type", "loss-type-inferred", "loss type")


@check("normalisation-inferred", "info", ("pairs",),
       meaning="Whether log-probs are summed or per-token averages was not declared; it was "
               "inferred from how they follow the response length.",
       causes="No metadata, sidecar or trainer config gives logps_normalisation.",
       fix="Declare logps_normalisation (sum or mean) in the parquet metadata or a sidecar.")
def normalisation_inferred(data: RunData) -> list[Finding]:
    meta = data.run.meta
    evidence = meta.inference.get("logps_normalisation", {})
    if meta.logps_normalisation is None and evidence.get("undecided"):
        ratio = evidence["variation_ratio"]
        return [data.finding(
            "normalisation-inferred", "Log-prob normalisation could not be inferred",
            f"No source declares whether log-probs are summed or per-token averages, and the "
            f"log does not tell: |log-prob| / length varies {ratio:.2f} times as much as "
            f"|log-prob|, between the {SUM_RATIO} or less read as sums and the {MEAN_RATIO} or more "
            "read as averages. The log-probs are read as sums. Declare logps_normalisation if they "
            "are averages.",
            evidence={"value": None, "source": None, **evidence})]
    return _inferred(data, "logps_normalisation", "normalisation-inferred", "log-prob normalisation")


@check("reference-free-objective", "info", ("pairs", "steps", "unpaired"),
       meaning="The loss uses no reference model, so reference checks and the step-0 identity do "
               "not apply.",
       causes="A reference-free loss type (SimPO, CPO, ORPO) or a trainer dialect without a reference.",
       fix="Nothing to fix; declare the loss type if it was not the one intended.")
def reference_free_objective(data: RunData) -> list[Finding]:
    spec, dialect = data.loss_spec, data.dialect
    if spec is not None and not spec.needs_reference:
        name = spec.name
    elif dialect is not None and dialect.reference_free:
        name = dialect.name
    else:
        return []
    return [data.finding(
        "reference-free-objective", f"{name} is reference-free",
        f"The {name} objective has no reference model: rewards are beta times policy log-probs, "
        "there is no step-0 identity, and the checks of the reference skip this run.",
        evidence={"objective": name})]

"""Text, JSON and Markdown renderings of a Diagnosis, for `dpodiag check`."""

from __future__ import annotations

import json
import math
import textwrap

from dpodiag.checks import REGISTRY
from dpodiag.phrases import counted, step_range
from dpodiag.pipeline import Diagnosis, run_summary

SEVERITY_LABEL = {"error": "ERROR", "warning": "WARNING", "info": "info"}


def _json_default(value):
    return str(value)


def _clean(value):
    """Replace NaN and Inf (invalid in strict JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(diagnosis: Diagnosis) -> str:
    """Render the JSON document as strict JSON (non-finite numbers become null)."""
    return json.dumps(_clean(diagnosis.to_dict()), indent=2, default=_json_default,
                      allow_nan=False) + "\n"


def _run_line(summary: dict) -> str:
    steps = step_range(summary["first_step"], summary["last_step"])
    # An inferred beta is a fit; 3 significant digits is as precise as it is.
    digits = ".3g" if summary["beta_source"] == "inferred" else "g"
    beta = (f"beta {summary['beta']:{digits}} ({summary['beta_source']})" if summary["beta"]
            else "beta unknown")
    loss = (f"loss {summary['loss_type']} ({summary['loss_type_source']})" if summary["loss_type"]
            else "loss type unknown")
    rows = counted(summary["rows"], "row")
    return f"{summary['run']}  [{summary['level']}, {rows}, {steps}, {beta}, {loss}]"


def to_text(diagnosis: Diagnosis, verbose: bool = False, width: int = 100) -> str:
    """Render the findings grouped by run, errors first, after the reader's notes (rows dropped,
    values repaired, a log cut off mid-write). Info findings are listed only when `verbose`."""
    lines: list[str] = []
    for data in diagnosis.runs:
        lines.append(_run_line(run_summary(data.run)))
        for note in data.run.notes:
            lines.extend(textwrap.wrap(note, width=width, initial_indent="  note    ",
                                       subsequent_indent=" " * 10))
        shown = [f for f in diagnosis.findings if f.run == data.name
                 and (verbose or f.severity != "info")]
        if not shown:
            lines.append("  no error or warning")
        for finding in shown:
            where = " ".join(part for part in [finding.split or "", f"step {finding.step}"
                                                if finding.step is not None else ""] if part)
            where = f" [{where}]" if where else ""
            lines.append(f"  {SEVERITY_LABEL[finding.severity]:<7} {finding.code}{where}: {finding.title}")
            lines.extend(textwrap.wrap(finding.message, width=width, initial_indent=" " * 10,
                                       subsequent_indent=" " * 10))
            if fix := _fix(finding):
                lines.extend(textwrap.wrap(f"Fix: {fix}", width=width, initial_indent=" " * 10,
                                           subsequent_indent=" " * 15))
        lines.append("")
    lines.append(_totals(diagnosis))
    return "\n".join(lines) + "\n"


def _fix(finding) -> str | None:
    """Return the catalogue's fix for an error or warning finding; None for info findings."""
    spec = REGISTRY.get(finding.code)
    return spec.fix if spec is not None and finding.severity != "info" else None


def _totals(diagnosis: Diagnosis) -> str:
    counts = {s: sum(1 for f in diagnosis.findings if f.severity == s) for s in ("error", "warning")}
    return (f"{counts['error']} error(s), {counts['warning']} warning(s) in "
            f"{len(diagnosis.runs)} run(s)")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(diagnosis: Diagnosis) -> str:
    """Render a short summary to paste into a review: verdict, findings table, key figures per run."""
    worst = diagnosis.worst()
    verdict = {"error": "**Objective errors found.**", "warning": "No objective error; warnings below.",
               None: "No error or warning.", "info": "No error or warning."}[worst]
    lines = ["## dpodiag check", "", verdict + " " + _totals(diagnosis) + ".", ""]
    notes = [(data.name, note) for data in diagnosis.runs for note in data.run.notes]
    if notes:
        lines += [f"- {_cell(name)}: {_cell(note)}" for name, note in notes] + [""]
    shown = [f for f in diagnosis.findings if f.severity != "info"]
    if shown:
        lines += ["| severity | code | run | where | finding | fix |", "|---|---|---|---|---|---|"]
        for f in shown:
            where = " ".join(p for p in [f.split or "", f"step {f.step}" if f.step is not None else ""] if p)
            lines.append(f"| {f.severity} | `{f.code}` | {_cell(f.run)} | {where} | {_cell(f.title)} "
                         f"| {_cell(_fix(f) or '')} |")
        lines.append("")
    lines += ["| run | level | rows | steps | beta | loss type | final train accuracy |",
              "|---|---|---|---|---|---|---|"]
    for data in diagnosis.runs:
        s = run_summary(data.run)
        train = data.split_steps("train")
        accuracy = (train.get_column("rewards_accuracies").drop_nulls().tail(1).to_list()
                    if "rewards_accuracies" in train.columns else [])
        acc_text = f"{accuracy[0]:.3f}" if accuracy else "n/a"
        lines.append(f"| {_cell(s['run'])} | {s['level']} | {s['rows']} | {s['first_step']}-{s['last_step']} "
                     f"| {s['beta'] if s['beta'] is not None else 'unknown'} "
                     f"| {s['loss_type'] or 'unknown'} | {acc_text} |")
    return "\n".join(lines) + "\n"

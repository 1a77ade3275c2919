"""The check catalogue as Markdown (docs/checks.md): `python -m dpodiag.checks.catalogue`."""

from __future__ import annotations

from dpodiag.checks import REGISTRY, SEVERITIES

LEVEL_TEXT = {("pairs",): "pair logs", ("steps",): "step logs",
              ("pairs", "steps"): "pair and step logs",
              ("pairs", "unpaired"): "pair and unpaired (KTO) logs",
              ("pairs", "steps", "unpaired"): "pair, step and unpaired (KTO) logs"}
INTRO = """# Checks

Generated from the check registry by `python -m dpodiag.checks.catalogue > docs/checks.md`;
a test fails when this page and the registry disagree.

Each finding has a stable code and a severity. Errors mean the objective or the data is wrong,
warnings that the objective runs but the dynamics are unhealthy, info notes record what was
inferred or skipped. A check that does not apply to a run (its loss type, its dialect, its
evidence level, too few records) skips itself, and `dpodiag check -v` lists why under
`checks-skipped`. Pair logs carry per-pair log-probs; step logs carry what trainers log.
"""


def catalogue_markdown() -> str:
    """Render every registered check as Markdown, grouped by severity: code, level, meaning, causes, fix."""
    lines = [INTRO]
    for severity in SEVERITIES:
        specs = [spec for spec in REGISTRY.values() if spec.severity == severity]
        lines += [f"## {severity.capitalize()}s", "",
                  "| code | works on | meaning | usual causes | what to do |", "|---|---|---|---|---|"]
        for spec in sorted(specs, key=lambda s: s.code):
            level = LEVEL_TEXT.get(tuple(sorted(spec.levels)), ", ".join(spec.levels))
            lines.append(f"| `{spec.code}` | {level} | {spec.meaning} | {spec.causes} | {spec.fix} |")
        lines.append("")
    lines += ["`checks-skipped` (info) lists, per run, every check that did not apply and why.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(catalogue_markdown(), end="")

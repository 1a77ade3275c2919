"""The per-example drill-down: pairs with the largest final loss, and the largest flips."""

from __future__ import annotations

from typing import Any

import polars as pl

from dpodiag.checks.base import RunData
from dpodiag.report.tables import format_number

ROWS_PER_TABLE = 10
# Characters kept of each prompt and response; the rest is cut with a count, to bound the page.
TEXT_LIMIT = 1200
TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def clip_text(text: str | None) -> str | None:
    """Cut `text` to TEXT_LIMIT characters, saying how many were left out."""
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]} … [{len(text) - TEXT_LIMIT:,} more characters]"


def has_ids(pairs: pl.DataFrame) -> bool:
    """Return whether the pair table has example ids to follow an example across steps."""
    return "example_id" in pairs.columns and pairs.get_column("example_id").null_count() < pairs.height


def last_scoring(pairs: pl.DataFrame) -> pl.DataFrame:
    """Return each example's row at its last scored step, or without ids every row of the last step."""
    if has_ids(pairs):
        return (pairs.filter(pl.col("example_id").is_not_null()).sort("step")
                .group_by(["split", "example_id"], maintain_order=True).last())
    last = pairs.group_by("split").agg(pl.col("step").max().alias("last_step"))
    return pairs.join(last, on="split").filter(pl.col("step") == pl.col("last_step")).drop("last_step")


def loss_expression(pairs: pl.DataFrame) -> pl.Expr:
    """Build the loss shown per pair: the recomputed loss where finite, else the logged one."""
    recomputed = pl.col("loss_recomputed")
    if "loss" not in pairs.columns:
        return recomputed
    return pl.when(recomputed.is_finite()).then(recomputed).otherwise(pl.col("loss"))


def largest_loss(pairs: pl.DataFrame) -> list[dict[str, Any]]:
    """Return the ROWS_PER_TABLE pairs with the largest loss at their last scoring."""
    final = last_scoring(pairs).with_columns(loss_expression(pairs).alias("display_loss"))
    final = final.filter(pl.col("display_loss").is_finite()).sort("display_loss", descending=True)
    return [example_row(row, loss=row["display_loss"]) for row in final.head(ROWS_PER_TABLE).iter_rows(named=True)]


def largest_flips(pairs: pl.DataFrame) -> list[dict[str, Any]] | None:
    """Examples whose preferred side changed between first and last scoring, largest change in p first.

    Scorings with a margin of exactly 0 are skipped. Returns None without example ids, since an
    example cannot then be followed across steps.
    """
    if not has_ids(pairs):
        return None
    # A margin of exactly 0 (every pair before the first update) is a tie, not a side.
    ordered = pairs.filter(pl.col("example_id").is_not_null() & pl.col("margin").is_finite()
                           & (pl.col("margin") != 0)).sort("step")
    text_columns = [c for c in TEXT_COLUMNS if c in pairs.columns]
    ends = ordered.group_by(["split", "example_id"]).agg(
        pl.col("step").first().alias("first_step"), pl.col("step").last().alias("step"),
        pl.col("margin").first().alias("first_margin"), pl.col("margin").last().alias("margin"),
        pl.col("probability").first().alias("first_probability"),
        pl.col("probability").last().alias("probability"),
        *[pl.col(c).last() for c in ("chosen_length", "rejected_length", *text_columns) if c in pairs.columns])

    # A flip changes the sign of the margin; rank by how far p moved.
    flips = ends.filter((pl.col("step") > pl.col("first_step"))
                        & ((pl.col("first_margin") > 0) != (pl.col("margin") > 0)))
    flips = flips.with_columns((pl.col("probability") - pl.col("first_probability")).alias("change"))
    flips = flips.sort(pl.col("change").abs(), descending=True).head(ROWS_PER_TABLE)
    rows = []
    for row in flips.iter_rows(named=True):
        cells = example_row(row)
        cells.update(first_step=row["first_step"], first_probability=format_number(row["first_probability"]),
                     change=f"{row['change']:+.3f}",
                     direction="chosen" if row["margin"] > 0 else "rejected")
        rows.append(cells)
    return rows


def example_row(row: dict[str, Any], loss: float | None = None) -> dict[str, Any]:
    """Format the cells and texts of one example for the page."""
    return {"split": row.get("split"), "example_id": row.get("example_id"), "step": row.get("step"),
            "margin": format_number(row.get("margin")), "probability": format_number(row.get("probability")),
            "loss": format_number(loss), "chosen_length": format_number(row.get("chosen_length")),
            "rejected_length": format_number(row.get("rejected_length")),
            "texts": [(name, clip_text(row[name])) for name in TEXT_COLUMNS if row.get(name) is not None]}


def drilldown(runs: list[RunData]) -> list[dict[str, Any]]:
    """Per run with a pair table: its largest-loss pairs and its flips."""
    sections = []
    for data in runs:
        if data.pairs is None:
            sections.append({"name": data.name, "pairs": False})
            continue
        sections.append({"name": data.name, "pairs": True, "has_ids": has_ids(data.pairs),
                         "largest_loss": largest_loss(data.pairs), "flips": largest_flips(data.pairs)})
    return sections

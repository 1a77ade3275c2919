"""Per-step sums of a recomputed pair table, from which the checks' per-step statistics follow.

Several checks need one statistic per step: the correlation of |log-prob| with the response
length, the correlation of the margin with the length difference, the number of distinct
example ids. Here they are sums, counts and extremes (the `MOMENT_PREFIX` columns) that the
group-by of `step_aggregates` computes together with the step aggregates, so no check makes
another pass over the pair table. Sums and counts add up across splits, so the statistic of a
step with its train and eval rows pooled follows from the sums of both.

Columns of the moments table, one row per (run, split, step):
- mask_*: pooled chosen and rejected rows with a finite |log-prob| x = |`mask_column`| and a
  length y: n, sums of x, y, x^2, y^2, xy, the smallest and largest y, and for the per-token
  value v = x / y the count of non-null v, the count of v above `PLAUSIBLE_PER_TOKEN_NATS` or
  NaN, and the count of infinite v.
- length_*: rows with a finite margin m and a length difference d = chosen - rejected: n and the
  sums of m, d, m^2, d^2, md.
- ids_distinct: the number of distinct example ids, counted by their 64-bit hashes (a null id
  counts as one id, and two ids with equal hashes, which is unlikely, as one). When it is
  below rows, `duplicate-steps` counts the repeated ids exactly on the pair table.
- rows: the number of rows, every row counted.
"""

from __future__ import annotations

from collections.abc import Collection

import polars as pl

from dpodiag.compute.aggregate import KEYS, step_aggregates

MOMENT_PREFIX = "_moment_"
# A per-token log-prob below -30 nats is implausible on text a model was trained on (an
# estimate: a uniform guess over 10**13 tokens scores -30).
PLAUSIBLE_PER_TOKEN_NATS = 30.0
# A variance from sums below this share of the sum of squares is float64 rounding of a constant.
RELATIVE_VARIANCE_FLOOR = 1e-10


def mask_column(pairs: pl.DataFrame | pl.LazyFrame) -> str | None:
    """Return the chosen log-prob column whose size should follow the length: the reference's,
    because the reference does not move in training, else the policy's. Return None without
    lengths or without a column that has a value.

    The reference columns of a reference-free run stacked with other runs are all null.
    """
    columns = set(pairs.collect_schema().names())
    if not {"chosen_length", "rejected_length"} <= columns:
        return None
    candidates = [c for c in ("reference_chosen_logps", "policy_chosen_logps")
                  if c in columns and c.replace("chosen", "rejected") in columns]
    if not candidates:
        return None
    if isinstance(pairs, pl.DataFrame):
        present = {c: pairs.get_column(c).null_count() < pairs.height for c in candidates}
    else:
        row = pairs.select(pl.col(c).is_not_null().any() for c in candidates).collect(engine="streaming")
        present = row.row(0, named=True)
    return next((c for c in candidates if present[c]), None)


def moment_expressions(columns: Collection[str], mask: str | None,
                       finite: Collection[str] = ()) -> list[pl.Expr]:
    """Build the per-step aggregations of the moments (see the module docstring), named with
    MOMENT_PREFIX. `mask` is the column that `mask_column` returns. `finite` names columns that
    contain no NaN or Inf, whose sums skip the finiteness test."""
    columns = set(columns)
    exprs = [pl.len().alias(_name("rows"))]
    if mask is not None:
        exprs += _mask_sums(mask, finite)
    if {"margin", "chosen_length", "rejected_length"} <= columns:
        margin = pl.col("margin")
        difference = pl.col("chosen_length") - pl.col("rejected_length")
        valid = (margin.is_not_null() if "margin" in finite else margin.is_finite()) & difference.is_not_null()
        exprs += _pair_sums("length", pl.when(valid).then(margin), pl.when(valid).then(difference))
    if "example_id" in columns:
        exprs.append(pl.col("example_id").hash(3).n_unique().alias(_name("ids_distinct")))
    return exprs


def _mask_sums(column: str, finite: Collection[str]) -> list[pl.Expr]:
    exprs = []
    sides = ((column, "chosen_length"), (column.replace("chosen", "rejected"), "rejected_length"))
    parts: dict[str, list[pl.Expr]] = {}
    for logps, length in sides:
        size = pl.col(logps).abs()
        finite_size = pl.col(logps).is_not_null() if logps in finite else pl.col(logps).is_finite()
        valid = finite_size & pl.col(length).is_not_null()
        x, y = pl.when(valid).then(size), pl.when(valid).then(pl.col(length))
        per_token = pl.when(valid).then(size / pl.col(length))
        for name, expr in (("n", valid.sum()), ("sx", x.sum()), ("sy", y.sum()), ("sxx", (x * x).sum()),
                           ("syy", (y * y).sum()), ("sxy", (x * y).sum()), ("ymin", y.min()), ("ymax", y.max()),
                           ("count", per_token.is_not_null().sum()),
                           # Polars orders NaN above every number, so NaN > threshold counts as above.
                           ("above", (per_token > PLAUSIBLE_PER_TOKEN_NATS).sum()),
                           ("infinite", per_token.is_infinite().sum())):
            parts.setdefault(name, []).append(expr)
    for name, (chosen, rejected) in parts.items():
        if name == "ymin":
            exprs.append(pl.min_horizontal(chosen, rejected).alias(_name(f"mask_{name}")))
        elif name == "ymax":
            exprs.append(pl.max_horizontal(chosen, rejected).alias(_name(f"mask_{name}")))
        else:
            exprs.append((chosen + rejected).alias(_name(f"mask_{name}")))
    return exprs


def _pair_sums(prefix: str, x: pl.Expr, y: pl.Expr) -> list[pl.Expr]:
    return [(x.is_not_null() & y.is_not_null()).sum().alias(_name(f"{prefix}_n")),
            x.sum().alias(_name(f"{prefix}_sx")), y.sum().alias(_name(f"{prefix}_sy")),
            (x * x).sum().alias(_name(f"{prefix}_sxx")), (y * y).sum().alias(_name(f"{prefix}_syy")),
            (x * y).sum().alias(_name(f"{prefix}_sxy"))]


def _name(statistic: str) -> str:
    return MOMENT_PREFIX + statistic


def split_moments(table: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split an aggregated step table into the step table and the moments table, and remove
    MOMENT_PREFIX from the names of the moments."""
    moments = [name for name in table.columns if name.startswith(MOMENT_PREFIX)]
    keys = [name for name in KEYS if name in table.columns]
    steps = table.drop(moments)
    renamed = table.select(*keys, *(pl.col(name).alias(name.removeprefix(MOMENT_PREFIX)) for name in moments))
    return steps, renamed


def correlation(prefix: str) -> pl.Expr:
    """Compute Pearson's r from the `prefix`_* sums of a moments table:

        r = (n Sxy - Sx Sy) / sqrt((n Sxx - Sx^2) (n Syy - Sy^2))

    Null when fewer than two rows contribute, or when either variance is below
    RELATIVE_VARIANCE_FLOOR of its sum of squares (a constant, up to rounding), where polars'
    `corr` gives NaN.
    """
    n, sx, sy = pl.col(f"{prefix}_n"), pl.col(f"{prefix}_sx"), pl.col(f"{prefix}_sy")
    sxx, syy, sxy = pl.col(f"{prefix}_sxx"), pl.col(f"{prefix}_syy"), pl.col(f"{prefix}_sxy")
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    usable = (n >= 2) & (var_x > RELATIVE_VARIANCE_FLOOR * n * sxx) & (var_y > RELATIVE_VARIANCE_FLOOR * n * syy)
    return pl.when(usable).then((n * sxy - sx * sy) / (var_x * var_y).sqrt())


def step_sums(moments: pl.DataFrame, columns: list[str], splits: Collection[str] | None = None) -> pl.DataFrame:
    """Sum `columns` of the moments table over the splits of each step (all splits, or only
    `splits`), in step order. The extremes *_ymin and *_ymax are reduced by min and max."""
    if splits is not None:
        moments = moments.filter(pl.col("split").is_in(list(splits)))
    reduce = [pl.col(c).min() if c.endswith("_ymin") else pl.col(c).max() if c.endswith("_ymax")
              else pl.col(c).sum() for c in columns]
    return moments.group_by("step").agg(reduce).sort("step")


def step_tables(pairs: pl.DataFrame | pl.LazyFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return the step aggregates (see `step_aggregates`) and the moments table of a recomputed
    pair table, both from one group-by."""
    columns, mask = pairs.collect_schema().names(), mask_column(pairs)
    return split_moments(step_aggregates(pairs, lambda finite: moment_expressions(columns, mask, finite)))

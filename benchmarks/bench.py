"""Time `dpodiag check` and `dpodiag report` against the floor of the same stack, in one run.

The floor is a minimal hand-written script with the same stack (polars and torch imported, the
columns a margin needs read with polars, margins computed with torch, per-step means with
polars). The every-column floor does the same over every column of the log, which `check`
reads, with the per-step mean of each numeric column. Every command runs as a subprocess, three times by default. The table reports the
median wall time and the median peak resident memory (ru_maxrss of that child, from wait4).
It also gives both as ratios to the floor measured in the same run, because the machine may be
shared.

    .venv/bin/python benchmarks/bench.py --sizes 1M,10M
    .venv/bin/python benchmarks/bench.py --sizes 1M,10M,30M --streaming-cap 7G --in-memory-under-cap

Pair logs are generated once into --data-dir (see datagen.py) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datagen import RUNS, write_pair_log  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
SAMPLE_LOG = REPOSITORY / "sample_logs" / "healthy.parquet"
FLOOR_COLUMNS = ["run", "split", "step", "policy_chosen_logps", "policy_rejected_logps",
                 "reference_chosen_logps", "reference_rejected_logps"]
FLOOR_SCRIPT = f"""
import sys
import polars as pl
import torch
scan = pl.scan_parquet(sys.argv[1])
keys = [name for name in ("run", "split", "step") if name in scan.collect_schema()]
frame = scan.select([name for name in {FLOOR_COLUMNS!r} if name in keys or "logps" in name]).collect()
column = lambda name: torch.from_numpy(frame.get_column(name).to_numpy())
margin = 0.1 * ((column("policy_chosen_logps") - column("reference_chosen_logps"))
                - (column("policy_rejected_logps") - column("reference_rejected_logps")))
means = (frame.select(keys).with_columns(pl.Series("margin", margin.numpy()))
         .group_by(keys).agg(pl.col("margin").mean()))
print(means.height)
"""
# The same computation over every column of the log, all of which `check` reads: the example ids
# and lengths as well, and the per-step mean of every numeric column.
FLOOR_ALL_SCRIPT = """
import sys
import polars as pl
import torch
frame = pl.read_parquet(sys.argv[1])
column = lambda name: torch.from_numpy(frame.get_column(name).to_numpy())
margin = 0.1 * ((column("policy_chosen_logps") - column("reference_chosen_logps"))
                - (column("policy_rejected_logps") - column("reference_rejected_logps")))
numeric = [name for name, dtype in frame.schema.items() if dtype.is_numeric() and name != "step"]
keys = [name for name in ("run", "split", "step") if name in frame.columns]
means = (frame.with_columns(pl.Series("margin", margin.numpy()))
         .group_by(keys).agg(pl.col(numeric + ["margin"]).mean(),
                                                pl.col("example_id").n_unique()))
print(means.height)
"""
SIZE_SCRIPT = "import sys, polars as pl; print(pl.read_parquet(sys.argv[1]).estimated_size())"
# Runs the CLI of another source tree of dpodiag (an earlier version), ahead of the installed
# one, through its entry point as the `dpodiag` script does.
BASELINE_CLI = """
import sys
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
sys.path.insert(0, sys.argv.pop(1))
from dpodiag.__main__ import run
run()
"""


@dataclass
class Measurement:
    """Median wall seconds and peak resident bytes of repeated runs of one command."""

    label: str
    seconds: float
    peak_bytes: int
    status: int


def parse_size(text: str) -> int:
    """Parse 1M, 30M, 500k or a plain number of rows (or bytes, with G for 2**30)."""
    text = text.strip().upper()
    factor = {"K": 1_000, "M": 1_000_000, "G": 1 << 30}.get(text[-1:], 1)
    return int(float(text[:-1] if factor != 1 else text) * factor)


def run_once(command: list[str], cap_bytes: int | None = None, timeout: float = 3600) -> tuple[float, int, int]:
    """Run `command`; return wall seconds, its peak RSS in bytes and its exit status.

    `cap_bytes` sets RLIMIT_AS (the `ulimit -v` limit) in the child before it starts.
    """
    def limit():
        if cap_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=limit, cwd=REPOSITORY)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.kill()
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = child.stderr.read().decode(errors="replace").strip()
    if child.returncode not in (0, 1):
        print(f"  {' '.join(command[:3])}... exited {child.returncode}: {stderr[-400:]}", file=sys.stderr)
    return seconds, usage.ru_maxrss * 1024, child.returncode


def measure(label: str, command: list[str], repeats: int, cap_bytes: int | None = None) -> Measurement:
    runs = [run_once(command, cap_bytes) for _ in range(repeats)]
    measurement = Measurement(label, statistics.median(r[0] for r in runs),
                              int(statistics.median(r[1] for r in runs)), max(r[2] for r in runs))
    print(f"  {label:<34} {measurement.seconds:8.2f} s {measurement.peak_bytes / 2**20:8.0f} MiB"
          f"  (exit {measurement.status})", flush=True)
    return measurement


def pair_log(data_dir: Path, rows: int, runs: int = RUNS) -> Path:
    """Return the cached pair log of `rows` rows in `runs` runs, writing it first when it is missing."""
    path = data_dir / (f"pairs-{rows}.parquet" if runs == RUNS else f"pairs-{rows}-{runs}run.parquet")
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", flush=True)
        write_pair_log(path, rows, runs=runs)
    return path


def columns_bytes(path: Path) -> int:
    """In-memory size (polars estimated_size) of every column of the log, all of which
    `check` reads; cached beside the log."""
    cache = path.with_suffix(".size.json")
    if cache.exists():
        return json.loads(cache.read_text())["bytes"]
    size = int(subprocess.run([sys.executable, "-c", SIZE_SCRIPT, str(path)], check=True,
                              capture_output=True, text=True).stdout)
    cache.write_text(json.dumps({"bytes": size}))
    return size


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory:.0f} GiB RAM, {model}, {platform.platform()}"


def bench_size(rows: int, args, dpodiag: list[str], scratch: Path,
               runs: int = RUNS) -> list[tuple[str, Measurement, Measurement, int]]:
    path = pair_log(args.data_dir, rows, runs)
    needed = columns_bytes(path)
    label = f"{rows / 1e6:g}M" + ("" if runs == RUNS else ", one run")
    print(f"{label} rows: {path} ({needed / 2**20:.0f} MiB of columns in memory)", flush=True)
    floor = measure(f"floor {label}", [sys.executable, "-c", FLOOR_SCRIPT, str(path)], args.repeats)
    results = [(label, floor, floor, needed)]
    every_column = measure(f"floor, every column {label}", [sys.executable, "-c", FLOOR_ALL_SCRIPT, str(path)],
                           args.repeats)
    results.append((label, every_column, floor, needed))
    args.floors[label] = every_column
    check = measure(f"check {label}", [*dpodiag, "check", str(path), "--device", "cpu"], args.repeats)
    results.append((label, check, floor, needed))
    if args.baseline and rows in args.baseline_rows:
        baseline = measure(f"check {label}, baseline tree", [sys.executable, "-c", BASELINE_CLI,
                                                              str(args.baseline), "check", str(path)], 1)
        results.append((label, baseline, floor, needed))
    if not args.skip_report:
        report = measure(f"report {label}", [*dpodiag, "report", str(path), "--device", "cpu", "--force",
                                             "-o", str(scratch / "report.html")], args.repeats)
        results.append((label, report, floor, needed))
    if args.streaming_cap and rows in args.streaming_rows and runs == RUNS:
        cap = parse_size(args.streaming_cap)
        streamed = measure(f"check --streaming {label} (cap {args.streaming_cap})",
                           [*dpodiag, "check", str(path), "--device", "cpu", "--streaming"],
                           args.streaming_repeats, cap)
        results.append((label, streamed, floor, needed))
        if args.in_memory_under_cap:
            capped = measure(f"check --in-memory {label} (cap {args.streaming_cap})",
                             [*dpodiag, "check", str(path), "--device", "cpu", "--in-memory"], 1, cap)
            results.append((label, capped, floor, needed))
    return results


def table(rows: list[tuple[str, Measurement, Measurement, int]], floors: dict[str, Measurement]) -> str:
    lines = ["| rows | command | time / floor | time / every-column floor | seconds | peak RSS / floor "
             "| peak RSS MiB | peak RSS / columns | exit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, m, floor, needed in rows:
        every_column = f"{m.seconds / floors[label].seconds:.2f}" if label in floors else "-"
        lines.append(f"| {label} | {m.label} "
                     f"| {m.seconds / floor.seconds:.2f} | {every_column} | {m.seconds:.2f} "
                     f"| {m.peak_bytes / floor.peak_bytes:.2f} | {m.peak_bytes / 2**20:.0f} "
                     f"| {f'{m.peak_bytes / needed:.2f}' if needed else '-'} | {m.status} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated row counts, e.g. 1M,10M,30M")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/dpodiag-bench"),
                        help="folder for the generated logs (never inside the repository)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per command; the median is reported")
    parser.add_argument("--skip-report", action="store_true", help="time `check` only")
    parser.add_argument("--streaming-cap", help="also run `check --streaming` with this address-space "
                        "limit (RLIMIT_AS, as `ulimit -v`), e.g. 6G")
    parser.add_argument("--streaming-sizes", default="30M",
                        help="sizes at which --streaming-cap applies (comma-separated)")
    parser.add_argument("--streaming-repeats", type=int, default=1)
    parser.add_argument("--in-memory-under-cap", action="store_true",
                        help="also run `check --in-memory` under --streaming-cap, to show it fails there")
    parser.add_argument("--baseline", type=Path, help="also time `check` once with the dpodiag "
                        "package of this source tree, e.g. an earlier commit unpacked with git archive")
    parser.add_argument("--baseline-sizes", default="1M,10M", help="sizes at which --baseline runs")
    parser.add_argument("--one-run-sizes", default="10M", help="sizes at which a log of one run (one "
                        "file per run, no run column) is also measured; empty for none")
    args = parser.parse_args()
    args.streaming_rows = {parse_size(size) for size in args.streaming_sizes.split(",")}
    args.baseline_rows = {parse_size(size) for size in args.baseline_sizes.split(",")}
    args.floors = {}
    if REPOSITORY in args.data_dir.resolve().parents:
        parser.error("--data-dir must be outside the repository")

    dpodiag = [str(Path(sys.executable).with_name("dpodiag"))]
    print(machine(), flush=True)
    rows: list[tuple[str, Measurement, Measurement, int]] = []
    with tempfile.TemporaryDirectory(prefix="dpodiag-bench-") as scratch:
        print("imports and a sample log", flush=True)
        imports = measure("python -c 'import torch, polars'",
                          [sys.executable, "-c", "import torch, polars"], args.repeats)
        sample = measure("check sample_logs/healthy.parquet",
                         [*dpodiag, "check", str(SAMPLE_LOG), "--device", "cpu"], args.repeats)
        rows.append(("sample", imports, imports, 0))
        rows.append(("sample", sample, imports, 0))
        for size in args.sizes.split(","):
            rows += bench_size(parse_size(size), args, dpodiag, Path(scratch))
        for size in filter(None, args.one_run_sizes.split(",")):
            rows += bench_size(parse_size(size), args, dpodiag, Path(scratch), runs=1)
    print()
    print(table(rows, args.floors))
    checks = {label: m.seconds for label, m, floor, _ in rows if m.label == f"check {label}"}
    if "1M" in checks and "10M" in checks:
        print(f"\ncheck 10M / check 1M time: {checks['10M'] / checks['1M']:.2f}")
    if shutil.disk_usage(args.data_dir).free < 20 * 2**30:
        print(f"note: under 20 GiB free in {args.data_dir}; remove its logs when done", file=sys.stderr)


if __name__ == "__main__":
    main()

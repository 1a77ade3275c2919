"""Help and version output need click alone: they import neither torch nor polars."""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
sys.argv = ["dpodiag", *sys.argv[1:]]
from dpodiag.__main__ import run
try:
    run()
except SystemExit:
    pass
print("imported:", sorted(name for name in ("torch", "polars") if name in sys.modules))
"""


@pytest.mark.parametrize("arguments", [["--help"], ["check", "--help"], ["report", "-h"], ["--version"], []])
def test_help_skips_heavy_imports(arguments):
    result = subprocess.run([sys.executable, "-c", SCRIPT, *arguments], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stdout


def test_prints_only_stops_at_double_dash():
    from dpodiag.__main__ import prints_only

    assert prints_only([])
    assert prints_only(["check", "--help"])
    assert not prints_only(["check", "run.parquet"])
    assert not prints_only(["check", "--", "--help"])

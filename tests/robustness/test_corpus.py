"""The corpus of bad inputs (make_corpus.py) through the CLI, each case in its own subprocess.

Every case must end with its expected exit status and no traceback. An "error" case prints one
line on stderr that matches its message, and leaves its folder byte for byte as it was. A "read"
case prints its message on stdout, and a report case adds only its output file.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from make_corpus import (CASES, DOCS, ERROR, TABLE_END, TABLE_START, Case,
                         build_cut_trainer_state, markdown_table, message_pattern)

ERROR_PREFIX = "dpodiag: error: "
# Each case starts a Python process that imports torch; a few run side by side.
WORKERS = (os.cpu_count() or 1) + 1
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    before: dict[str, bytes]
    after: dict[str, bytes]
    skipped: str | None = None


def snapshot(folder: Path) -> dict[str, bytes]:
    """Map every file below `folder` (hidden ones included) to its bytes."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def drop_read_override() -> None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the capability bounding set, so that
    a root process started next is bound by file modes (Linux prctl PR_CAPBSET_DROP)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_case(case: Case, root: Path) -> Outcome:
    folder = root / case.name
    folder.mkdir()
    case.build(folder)
    before = snapshot(folder)
    options = {}
    if case.obeys_file_modes and os.geteuid() == 0:
        if not sys.platform.startswith("linux"):
            return Outcome(0, "", "", before, before, skipped="root reads files of mode 000, and "
                           "dropping that capability is implemented for Linux only")
        # preexec_fn is unsafe with threads, so these cases run before the thread pool starts.
        options["preexec_fn"] = drop_read_override
    try:
        result = subprocess.run([sys.executable, "-m", "dpodiag", *case.args], cwd=folder,
                                capture_output=True, text=True, timeout=600, **options)
    except subprocess.SubprocessError as error:
        return Outcome(0, "", "", before, before, skipped=f"root reads files of mode 000, and "
                       f"dropping CAP_DAC_OVERRIDE failed ({error})")
    return Outcome(result.returncode, result.stdout, result.stderr, before, snapshot(folder))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    first = [case for case in CASES if case.obeys_file_modes]
    results = {case.name: run_case(case, root) for case in first}
    rest = [case for case in CASES if not case.obeys_file_modes]
    with ThreadPoolExecutor(WORKERS) as pool:
        results.update(zip([case.name for case in rest],
                           pool.map(lambda case: run_case(case, root), rest)))
    return results


def flatten(text: str) -> str:
    """Collapse runs of white space, so that a message wrapped over lines reads as one."""
    return " ".join(text.split())


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus_case(case, outcomes):
    outcome = outcomes[case.name]
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert "Traceback" not in outcome.stderr
    assert outcome.returncode == case.expected_status, outcome.stderr
    if case.outcome == ERROR:
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1, outcome.stderr
        assert lines[0].startswith(ERROR_PREFIX)
        message = lines[0].removeprefix(ERROR_PREFIX)
        assert message_pattern(case.message).match(message), message
        assert outcome.after == outcome.before
        return
    assert outcome.stderr == ""
    expected = message_pattern(case.message).pattern.removeprefix("^").removesuffix("$")
    assert re.search(expected, flatten(outcome.stdout)), outcome.stdout
    added = set(outcome.after) - set(outcome.before)
    changed = {name for name in outcome.before if outcome.after.get(name) != outcome.before[name]}
    if case.output:
        written = {case.output}
    else:
        written = {case.args[case.args.index("-o") + 1]} if "-o" in case.args else set()
    assert added | changed == written


def test_cut_log_noted_in_report(tmp_path):
    build_cut_trainer_state(tmp_path)
    result = subprocess.run([sys.executable, "-m", "dpodiag", "report", "trainer_state.json",
                             "-o", "report.html"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    appendix = html[html.index('id="appendix"'):]
    assert "line 134: the file is cut off there" in appendix


def test_corpus_size_and_names():
    names = [case.name for case in CASES]
    assert len(names) >= 30
    assert len(set(names)) == len(names)


def test_docs_table_matches_corpus():
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)]
    assert table == markdown_table(CASES), (
        "docs/robustness.md is out of date; regenerate its table with "
        "`python tests/robustness/make_corpus.py --update-docs`")

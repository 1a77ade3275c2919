"""`dpodiag report` output paths, as a user passes them."""

import subprocess
import sys

from synthetic import SAMPLE_LOGS

HEALTHY = SAMPLE_LOGS / "healthy.parquet"


def dpodiag(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dpodiag", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_output_path_ending_in_slash(tmp_path):
    result = dpodiag("report", HEALTHY, "-o", f"{tmp_path / 'new'}/")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new" / "healthy.html").is_file()


def test_output_existing_folder(tmp_path):
    result = dpodiag("report", HEALTHY, "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "healthy.html").is_file()
    again = dpodiag("report", HEALTHY, "-o", tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().endswith("healthy.html: file exists; pass --force (force=True in "
                                         "Python) to overwrite it, or choose another name")


def test_default_output_in_reports(tmp_path):
    result = dpodiag("report", HEALTHY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reports" / "healthy.html").is_file()
    assert result.stdout.startswith("wrote reports/healthy.html")


def test_output_other_suffix_rejected(tmp_path):
    result = dpodiag("report", HEALTHY, "-o", tmp_path / "report.pdf")
    assert result.returncode == 2
    assert "report.pdf: report writes an HTML page; give the output an .html name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_message(tmp_path):
    result = dpodiag("report", HEALTHY, "-o", "/proc/dpodiag-test.html")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("choose a folder you can write to")
    assert "free disk space" not in result.stderr

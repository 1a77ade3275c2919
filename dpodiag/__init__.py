"""dpodiag: offline diagnostics for DPO-family preference training runs.

    runs = dpodiag.load(["run.parquet"], flags={"beta": 0.1})
    diagnosis = dpodiag.diagnose(runs)
    dpodiag.write_report(diagnosis, "reports/run.html")
"""

__version__ = "0.1.0"
__all__ = ["Diagnosis", "analyse", "diagnose", "load", "write_report"]


def __getattr__(name):
    # The public API is imported on first use, so `import dpodiag` stays cheap.
    if name == "load":
        from dpodiag.io import load
        return load
    if name in ("diagnose", "analyse", "Diagnosis"):
        from dpodiag import pipeline
        return getattr(pipeline, name)
    if name == "write_report":
        from dpodiag.report import write_report
        return write_report
    raise AttributeError(f"module 'dpodiag' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})

"""Recognition of the errors that an allocation failure raises inside the libraries."""

from __future__ import annotations

# Fragments of the messages of allocation failures: torch's CPU allocator ("DefaultCPUAllocator:
# can't allocate memory"), and the panic of polars 2.1 when, under an address-space limit
# (ulimit -v), it cannot map the stacks of its thread pool. NOTE: an allocation that fails inside
# polars aborts the process (SIGABRT), so no message reaches Python for it.
OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "could not spawn threads")


def is_out_of_memory(error: BaseException) -> bool:
    """True when `error` reports that memory ran out: MemoryError (Python, numpy),
    torch.OutOfMemoryError, or a RuntimeError or polars PanicException whose message is one of
    OUT_OF_MEMORY_MESSAGES."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    if not isinstance(error, RuntimeError) and type(error).__name__ != "PanicException":
        return False
    text = str(error)
    return any(fragment in text for fragment in OUT_OF_MEMORY_MESSAGES)


def out_of_memory_message(error: BaseException, streaming: bool) -> str:
    """Return the one-line error for an allocation failure, with the next step to take."""
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    if streaming:
        return (f"out of memory even with --streaming ({detail}); free memory, or check the runs "
                "of the log one file at a time")
    return (f"out of memory while analysing the log in memory ({detail}); rerun with --streaming, "
            "which keeps a window of rows in memory at a time")

"""The one exception type users see: its message says what is wrong and what to do."""


class SpocoError(ValueError):
    """Bad input or a state the user can fix; the CLI and GUI show only its message."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: Python's MemoryError, or how torch reports it (a
    RuntimeError, or its OutOfMemoryError, on CUDA, MPS and its CPU allocator)."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    if "out of memory" in text or "not enough memory" in text or "can't allocate memory" in text:
        return True
    import sys

    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)

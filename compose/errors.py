"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class ComposeError(Exception):
    """A problem with the user's input (bad name, malformed file, wrong model for a patch, ...).

    The message is one line that names the bad value and what would be valid.
    """

    exit_code = 2


def one_line(text: str) -> str:
    """``text`` on one line: the lines of a multi-line message (e.g. from a library) joined by '; '."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def suggest(name: str, valid) -> str:
    """'did you mean' text for an unknown ``name`` among ``valid`` names (empty when nothing is close)."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, and what to do about it."""
    import errno

    path = f" '{exc.filename}'" if exc.filename else ""
    advice = {
        errno.ENOSPC: f"no space left on the device of{path}; free some space or write somewhere else",
        errno.EDQUOT: f"disk quota exceeded writing{path}; free some space or write somewhere else",
        errno.EROFS: f"{path.strip() or 'the target'} is on a read-only file system; write somewhere else",
        errno.EACCES: f"permission denied for{path}; choose a folder you can write or fix its permissions",
        errno.EPERM: f"operation not permitted on{path}; choose a folder you can write or fix its permissions",
    }
    if exc.errno in advice:
        return advice[exc.errno]
    return f"{exc.strerror or type(exc).__name__}:{path or ' ' + str(exc)}"

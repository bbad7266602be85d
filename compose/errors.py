"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class ComposeError(Exception):
    """A problem with the user's input (bad name, malformed file, wrong model for a patch, ...).

    The message is one line that names the bad value and what would be valid.
    """

    exit_code = 2


def suggest(name: str, valid) -> str:
    """'did you mean' text for an unknown ``name`` among ``valid`` names (empty when nothing is close)."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""

"""The one exception type kpbench raises for user-facing problems.

The CLI prints its message as a single line (``error: ...``) and exits with status 2, so every
message must name the file, key, value or plugin at fault.
"""


class KpbenchError(Exception):
    """A problem with the user's input, config, data or plugins (not a kpbench bug)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line report."""
    return (str(exc).strip().splitlines() or [""])[0]

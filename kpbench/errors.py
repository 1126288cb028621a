"""The one exception type kpbench raises for user-facing problems.

The CLI prints its message as a single line (``error: ...``) and exits with status 2, so every
message must name the file, key, value or plugin at fault.
"""


class KpbenchError(Exception):
    """A problem with the user's input, config, data or plugins (not a kpbench bug)."""

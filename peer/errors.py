"""The one exception type for failures a user can cause (bad input, unreachable peers, corrupt files).

CLIs catch it at the top and print its message as a single line with a non-zero exit, so every module raises it
with a message written for the person at the terminal, not a traceback.
"""


class UserError(Exception):
    """A failure caused by input or environment; ``str(e)`` is one line for the user."""

    exit_code = 2

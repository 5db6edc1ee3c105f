"""The exceptions the command line turns into a one-line message: ``UserError`` (exit code 2) and
``NumericalError`` (exit code 1). Nothing here imports more than Python, so the command line can catch them from the
start."""


class UserError(ValueError):
    """Bad input the user can fix: a wrong option, a missing or corrupt file. The message is one line."""


class NumericalError(RuntimeError):
    """Training's loss or gradients stopped being finite; the last good checkpoint is kept."""

"""The one exception the command line turns into a one-line message and exit code 2."""


class UserError(ValueError):
    """Bad input the user can fix: a wrong option, a missing or corrupt file. The message is one line."""

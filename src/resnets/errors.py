"""The one error type for user mistakes.

Anything raised as :class:`ResnetsError` is the user's to fix (a wrong name, path, size or
file); the CLI prints it on one line and exits with status 2. Any other exception is a bug.
"""


class ResnetsError(ValueError):
    """A mistake in what the user asked for, with a message that says how to fix it."""

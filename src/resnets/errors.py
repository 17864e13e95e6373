"""The one error type for user mistakes.

Anything raised as :class:`ResnetsError` is the user's to fix (a wrong name, path, size or
file); the CLI prints it on one line and exits with status 2. Any other exception is a bug.
"""


class ResnetsError(ValueError):
    """A mistake in what the user asked for, with a message that says how to fix it."""


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message (its type's name when it has none), at most ``limit``
    characters: the one form in which an exception's text reaches a one-line error."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else (type(error).__name__ if isinstance(error, BaseException) else "failed")
    return line if limit is None else line[:limit]

"""User-facing errors: one line naming the problem and the fix; the CLI turns them into exit status 2."""


class UserError(Exception):
    """Bad input from the user (config, model name, data, prompt, checkpoint).

    The message must say what was wrong and what to do about it.
    """


def first_line(e: Exception) -> str:
    """The first line of an exception's message, or its type's name (for one-line errors)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__

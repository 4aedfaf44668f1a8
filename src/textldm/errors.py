"""User-facing errors: one line naming the problem and the fix; the CLI turns them into exit status 2."""


class UserError(Exception):
    """Bad input from the user (config, model name, data, prompt, checkpoint).

    The message must say what was wrong and what to do about it.
    """

"""The one error type the CLI turns into a single clear line (no traceback)."""


class LaminaError(Exception):
    """A problem with the user's input (a file, a flag, a model reference), said in one line."""

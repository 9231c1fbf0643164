"""The one exception type user-facing entry points raise for bad input.

Its message is a single sentence that names the bad value and what is allowed; the CLI prints it
without a traceback and exits with status 2.
"""


class UnofluxError(ValueError):
    """Bad input or a missing/mismatched file, explained in one sentence."""

"""User-facing errors: raised for bad input, printed as one line by the CLI."""


class LlmlabError(Exception):
    """A problem with the user's input (config, paths, data); the CLI prints it as one line and exits non-zero."""

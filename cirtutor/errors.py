"""The errors cirtutor raises for bad input: each message says what was expected and how to fix it."""


class CirtutorError(Exception):
    """Base class: an expected failure with a message meant for the user (no traceback needed)."""


class DataError(CirtutorError):
    """A dataset file or image is missing, malformed, or in the wrong place."""

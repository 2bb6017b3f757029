"""One error type for every problem the user can fix.

The CLI prints a :class:`DeepclustError` as a single line and exits non-zero, with
no traceback; anything else is a bug and keeps its traceback.
"""


class DeepclustError(Exception):
    """A problem with the user's input, named together with what to do about it."""


def check_param(condition, message):
    """Raise :class:`DeepclustError` with ``message`` unless ``condition`` holds.

    The one message format for bad parameters across the library is
    ``"<name>=<value> <what is wrong>; <what to do>"``.
    """
    if not condition:
        raise DeepclustError(message)

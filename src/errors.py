"""The one exception type for bad user input.

Raise ``InputError`` with a single line naming the file/field at fault; the CLI
prints it as ``shrinkteanet: error: ...`` and exits with status 2.
"""


class InputError(ValueError):
    """Bad input from the user (file, field, option).  One line, names the culprit."""

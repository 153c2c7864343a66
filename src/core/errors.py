"""The one exception type for bad user input.

Raise ``InputError`` with a single line naming the file/field at fault; the CLI
prints it as ``shrinkteanet: error: ...`` and exits with status 2.
"""


class InputError(ValueError):
    """Bad input from the user (file, field, option).  One line, names the culprit: line
    breaks that reach the message (quoted file content, a library's reason) are escaped."""

    def __init__(self, message=""):
        text = str(message).rstrip("\r\n")
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))

"""File digests shared by the tests that prove a command left (or wrote) files byte for byte."""
import hashlib
import os


def file_sha1(path):
    """sha1 hex digest of the file at ``path``."""
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def tree_sha1(folder):
    """{path relative to ``folder``: sha1} of every file below ``folder``."""
    return {os.path.relpath(os.path.join(root, f), folder): file_sha1(os.path.join(root, f))
            for root, _, files in os.walk(folder) for f in files}

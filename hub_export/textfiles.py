"""Opening the text files users hand us (corpora, vocabularies), with one set of messages."""

from __future__ import annotations

import os
from typing import IO

from hub_export.errors import HubExportError


def open_user_file(path: str | os.PathLike, flag: str, kind: str = "text file",
                   error: type[HubExportError] = HubExportError) -> IO[bytes]:
    """Opens `path` for reading bytes; a failure names the flag and the file.

    Args:
        path: the file.
        flag: the CLI flag it came from, e.g. "--vocab", to start the message with.
        kind: what the file should be, for the "is a directory" message.
        error: the HubExportError subclass to raise.
    """
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise error(f"{flag}: {path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{flag}: {path} is a directory, not a {kind}") from None
    except OSError as e:
        raise error(f"{flag}: {path}: cannot read: {e.strerror or e}") from None

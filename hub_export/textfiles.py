"""Reading the text files users hand us (corpora, vocabularies, warm-up sentences), with
one set of messages: each names the flag, the file, and for text that is not UTF-8 the
line and the byte."""

from __future__ import annotations

import os
from typing import IO, Iterator

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


def decode_line(line: bytes, number: int, path: str | os.PathLike, flag: str,
                error: type[HubExportError] = HubExportError) -> str:
    """Line `number` (from 1) of `path` as text; not UTF-8: the one message for it."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{flag}: {path}: line {number} is not UTF-8 (byte {line[e.start]:#04x} at "
                    f"byte {e.start + 1} of the line); re-encode the file as UTF-8") from None


def read_lines(path: str | os.PathLike, flag: str, kind: str = "text file",
               error: type[HubExportError] = HubExportError) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of every line of a small UTF-8 file, read whole.

    Lines end at "\\n", "\\r\\n" or "\\r", as Python's text-mode iteration (and so bilm-tf)
    splits them; the ends are not included. A UTF-8 byte-order mark is dropped.
    """
    with open_user_file(path, flag, kind, error) as f:
        try:
            raw = f.read()
        except OSError as e:
            raise error(f"{flag}: {path}: cannot read: {e.strerror or e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for number, line in enumerate(raw.splitlines(), start=1):
        yield number, decode_line(line, number, path, flag, error)

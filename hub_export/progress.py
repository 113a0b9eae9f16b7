"""A progress display on stderr for the slow steps of an export."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import IO, Iterator


class Progress:
    """Prints `[k/n] step ... done (1.2 s)` lines; silent when `stream` is None."""

    def __init__(self, total: int, stream: IO[str] | None = sys.stderr):
        self.total = total
        self.stream = stream
        self.done = 0

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        start = time.perf_counter()
        self._write(f"[{self.done}/{self.total}] {what} ...")
        try:
            yield
        except BaseException:
            self._write(" failed\n")
            raise
        self._write(f" done ({time.perf_counter() - start:.1f} s)\n")

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()

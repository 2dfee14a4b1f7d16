"""The access log: one line per request, in the same format as the rest of the log.

It writes straight to its stream instead of going through `logging`: building and
formatting a LogRecord costs about 50,000 instructions, a tenth of this server's whole
work for a `POST /api/v1/repositories` (measured with callgrind; bench/README.md). Lines
are gathered for up to 50 ms and leave in one write, instead of one system call each;
the app flushes what is left when it shuts down.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

FLUSH_INTERVAL_SECONDS = 0.05


class AccessLog:
    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled
        self._second = -1
        self._second_text = ""
        self._pending: list[str] = []

    def write(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        api_key_id: str | None,
    ) -> None:
        if not self._enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            # Formatting the date is the costly part; it changes once a second.
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        if not self._pending:
            asyncio.get_running_loop().call_later(FLUSH_INTERVAL_SECONDS, self.flush)
        self._pending.append(
            f"{self._second_text},{int((now - second) * 1000):03d} INFO vers_orchestrator.access"
            f" request_id={request_id} method={_escaped(method)} path={_escaped(path)}"
            f" status={status}"
            f" duration_ms={duration_ms:.2f} key_id={api_key_id or '-'}\n"
        )

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        self._stream.write("".join(lines))
        self._stream.flush()


def _escaped(value: str) -> str:
    """`value` as one token of a log line: a control character, a space or a backslash
    (from a decoded `%0A`, `%20`, …) is written `\\xNN` (`\\uNNNN` beyond Latin-1), so a
    request is one line whose fields a reader can split on spaces."""
    if value.isprintable() and " " not in value and "\\" not in value:
        return value
    return "".join(
        c
        if c.isprintable() and c not in " \\"
        else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in value
    )

"""The access log: one line per request, in the same format as the rest of the log.

It writes straight to its stream instead of going through `logging`: building and
formatting a LogRecord costs about 50,000 instructions, a tenth of this server's whole
work for a `POST /api/v1/repositories` (measured with callgrind; bench/README.md).
"""

from __future__ import annotations

import time
from typing import TextIO


class AccessLog:
    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled
        self._second = -1
        self._second_text = ""

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
        self._stream.write(
            f"{self._second_text},{int((now - second) * 1000):03d} INFO vers_orchestrator.access"
            f" request_id={request_id} method={method} path={path} status={status}"
            f" duration_ms={duration_ms:.2f} key_id={api_key_id or '-'}\n"
        )

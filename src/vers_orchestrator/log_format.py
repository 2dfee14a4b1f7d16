"""The server log's line format: one record, one line.

Messages carry text from outside: a guest's stderr in a driver error, a name from a
request. A newline in it would start what reads as a record of its own (a forged access
line, say), so a message's control characters are written escaped (`\\n`, `\\x1b`, …).
A traceback appended to a record is the server's own text and keeps its lines.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class OneLineFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = escaped(record.message)
        return super().formatMessage(record)


def escaped(text: str) -> str:
    """`text` with every character that is not printable written as an escape."""
    return "".join(
        c
        if c.isprintable()
        else _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )

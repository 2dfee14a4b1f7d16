"""The server log's format: one record, one line, whatever a message carries."""

from __future__ import annotations

import io
import logging

from vers_orchestrator.log_format import OneLineFormatter


def _logged(message: str, *args: object, exc_info: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter())
    logger = logging.getLogger("test_log_format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error(message, *args, exc_info=exc_info)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_control_characters_of_a_message_are_escaped() -> None:
    line = _logged("resize failed: %s", "oops\r\n2026-01-01 INFO forged\x1b[31m\u2028\t")
    assert line.endswith(
        " ERROR test_log_format resize failed:"
        " oops\\r\\n2026-01-01 INFO forged\\x1b[31m\\u2028\\t\n"
    )
    assert line.count("\n") == 1


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        text = _logged("unexpected", exc_info=True)
    lines = text.splitlines()
    assert lines[0].endswith(" ERROR test_log_format unexpected")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"

"""How vers-agent reads /etc/environment for every exec (`agent/execs.environment_file`)."""

from __future__ import annotations

from pathlib import Path

from vers_orchestrator.agent.execs import environment_file


def test_lines_are_read_as_pam_env_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "environment"
    path.write_text(
        "# a comment\n"
        "\n"
        "PLAIN=value with spaces  \n"
        'QUOTED="one pair goes"\n'
        "export EXPORTED=yes\n"
        "WINDOWS=crlf\r\n"
        "EQUALS=a=b\n"
        "SEPARATOR=a\u2028b\x0cc\n"
        "no separator here\n"
        "LAST=wins\n"
        "LAST=really\n"
    )
    assert environment_file(str(path)) == {
        "PLAIN": "value with spaces  ",
        "QUOTED": "one pair goes",
        "EXPORTED": "yes",
        "WINDOWS": "crlf",
        "EQUALS": "a=b",
        "SEPARATOR": "a\u2028b\x0cc",  # only "\n" ends a line
        "LAST": "really",
    }


def test_a_missing_file_is_no_variables(tmp_path: Path) -> None:
    assert environment_file(str(tmp_path / "absent")) == {}

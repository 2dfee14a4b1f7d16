"""Integer query parameters, read as the hosted service reads them.

Litestar converts query strings loosely (`limit=1e2` is 100, `limit=1.0` is 1,
`limit=null` the default); the hosted service (serde) takes only an optional minus and
digits, and answers anything else 400 `Failed to deserialize query string: …`. Checked
before Litestar sees the request, on every route with an integer query parameter.
"""

from __future__ import annotations

import re
import typing
from typing import Any
from urllib.parse import parse_qsl

from vers_orchestrator.errors import InvalidQuery

_INTEGER = re.compile(r"-?[0-9]+")


def integer_parameters(handler: Any) -> frozenset[str]:
    """The names of `handler`'s query parameters typed `int` or `int | None`."""
    path_names = {
        name for path in handler.paths for name in re.findall(r"\{(\w+)(?::[^}]*)?\}", path)
    }
    names = set()
    for name, parameter in handler.parsed_fn_signature.parameters.items():
        annotation = parameter.annotation
        types = typing.get_args(annotation) if typing.get_args(annotation) else (annotation,)
        if int in types and bool not in types and name not in path_names:
            alias = getattr(parameter.kwarg_definition, "query", None)
            names.add(alias or name)
    return frozenset(names)


def check_integers(query_string: bytes, names: frozenset[str]) -> None:
    """Raises BadRequest for a value of one of `names` that is not an integer."""
    if not names or not query_string:
        return
    text = query_string.decode("latin-1")
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name not in names or _INTEGER.fullmatch(value):
            continue
        reason = "invalid digit found in string"
        if not value:
            reason = "cannot parse integer from empty string"
        raise InvalidQuery(f"{name}: {reason}")

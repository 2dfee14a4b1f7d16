"""The path a request is routed by, decoded one segment at a time.

uvicorn decodes the whole path before routing, so `/repositories/r1%2Ftags%2Fv2` would be
routed as `/repositories/r1/tags/v2`: an encoded slash would split a name into segments
and reach another route. And Litestar ignores a trailing slash, so `DELETE
/repositories/x/` would delete `x`. The hosted service (axum) matches each segment as one
name after decoding and treats `/x/` as a path of its own; so do we.
"""

from __future__ import annotations

from urllib.parse import unquote


def routing_path(raw_path: bytes) -> str | None:
    """The path to route `raw_path` (the request target's path, still percent-encoded) by.

    Each segment is decoded on its own; a slash that was `%2F` inside a segment stays
    `%2F`, so it matches a path parameter as part of one name (and no name has one), never
    a route separator. None when the path has an empty segment (a trailing slash, `//`):
    no route has one. `/` alone is the root.
    """
    path = raw_path.decode("latin-1")
    if path == "/":
        return path
    segments = path.split("/")
    if segments[0] != "" or "" in segments[1:]:
        return None
    if "%" not in path:
        return path
    return "/".join(unquote(segment).replace("/", "%2F") for segment in segments)

"""What ids and timestamps look like on the wire (decisions.md, "Timestamps")."""

from __future__ import annotations

import re

UUID4 = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
# Most timestamps: UTC, microseconds, `Z`.
TIMESTAMP = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
# `CommitInfo.created_at` only: the same with `+00:00`.
COMMIT_TIMESTAMP = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\Z")

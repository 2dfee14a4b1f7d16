"""vers-agent: the program that runs inside every guest, and the protocol it speaks.

This package is copied into guests as `vers_agent` and runs there on the guest's own
Python, so it uses the standard library only and imports nothing else of
vers-orchestrator. The host imports `protocol` from here too: both ends share one
definition of the wire format (docs/guest-agent.md).
"""

"""The host's client of vers-agent (`vers_orchestrator/agent`): a connection per guest, and
the operations asked over it. Independent of how the bytes travel (virtio-serial here)."""

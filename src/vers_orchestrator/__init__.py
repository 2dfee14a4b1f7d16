"""Self-hostable control plane for branchable microVMs."""

__version__ = "0.1.0"

"""QEMU microvm driver: see `driver` for how it works and `layout` for what it keeps where."""

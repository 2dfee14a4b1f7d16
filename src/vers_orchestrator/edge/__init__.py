"""The edge listener: VMs' web ports reached by name from a browser (`proxy.py`)."""

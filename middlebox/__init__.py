"""middlebox: network middleboxes from small packet-processing elements.

A graph written in YAML is parsed into a Graph, compiled into a Plan (bytes),
and run by a batched C engine: over pcap files, Linux interfaces, or virtio
rings inside a tiny VM.
"""

__version__ = "0.1.0"

from middlebox.element import Element, Packet, Param, PythonElement  # noqa: E402,F401

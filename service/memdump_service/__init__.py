"""memdump service: memory dumps of libvirt guests behind a small HTTP API."""

__version__ = "0.1.0"

"""Byte units, declared once: measurements are kept in bytes and shown in KiB, MiB or GiB."""

from __future__ import annotations

KIB = 1 << 10  # also the unit of /proc/<pid>/status sizes ("VmRSS: 1234 kB" means KiB)
MIB = 1 << 20
GIB = 1 << 30

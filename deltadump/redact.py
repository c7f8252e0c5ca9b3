"""Redaction: the one function every text that leaves the process goes through (notifications, logs,
records, error messages). It removes passwords from connection strings and every secret value
registered at run time (a password read from a file)."""

from __future__ import annotations

import re

_secrets: set[str] = set()

_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)")
_KW_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def register(secret: str) -> None:
    """A value that must never leave the process (a password read from a file)."""
    if secret and len(secret) >= 4:
        _secrets.add(secret)


def redact(text: str) -> str:
    out = _URI_PASSWORD.sub(r"\1***\3", text)
    out = _KW_PASSWORD.sub(r"\1***", out)
    for s in sorted(_secrets, key=len, reverse=True):
        out = out.replace(s, "***")
    return out

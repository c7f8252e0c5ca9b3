"""Errors: one hierarchy whose classes carry the user's sentence, a hint and an exit code.

Every failure that reaches a user is a DeltadumpError. Foreign exceptions (OSError, subprocess,
botocore) are translated where they are born, with the original chained. Only the CLI prints them.
"""

from __future__ import annotations

import _thread

TYPE_CHECKING = False  # no typing, threading or re import at run time: `deltadump rdiff` starts fast
if TYPE_CHECKING:
    import re
    from typing import ClassVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


# -- the one redaction of secrets from text that leaves the process -----------------------------------
# Every error message is redacted when it is made; notifications, log lines and whatever the CLI prints
# go through redact() again on the way out (a secret may have been registered in between).

MASK = "***"
_secrets: set[str] = set()
_secrets_lock = _thread.allocate_lock()
_patterns: tuple[re.Pattern[str], re.Pattern[str]] | None = None


def _password_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The two password patterns, compiled on first use (`re` costs a command that never fails a
    third of its start-up)."""
    global _patterns
    if _patterns is None:
        import re

        _patterns = (
            # scheme://user:PASSWORD@host (any scheme: postgresql, smtp, https...): the userinfo's password
            re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s'\"]*:)(?P<pw>[^@\s'\"]*)(?=@)"),
            # password=VALUE in a libpq key=value string (quoted with '...' and backslash escapes, or a
            # bare word), and ?password=VALUE / &password=VALUE in a URI query
            re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|[^\s&]*)", re.IGNORECASE),
        )
    return _patterns


def register_secret(secret: str) -> None:
    """A value to remove from everything that leaves the process from now on (a password read from a
    file, an SMTP password...), in its plain and its URI-encoded forms."""
    if not secret:
        return
    with _secrets_lock:
        from urllib.parse import quote

        _secrets.update({secret, quote(secret, safe=""), quote(secret)})


def redact(text: str) -> str:
    """`text` without passwords: URI userinfo passwords, libpq `password=` values (quoted or not) and
    every registered secret are replaced by ***."""
    if not text:
        return text
    for pattern in _password_patterns():
        text = pattern.sub(lambda m: m.group("head") + MASK, text)
    with _secrets_lock:
        found = sorted((s for s in _secrets if s in text), key=len, reverse=True)
    for s in found:
        text = text.replace(s, MASK)
    return text


class DeltadumpError(Exception):
    """Root of every error deltadump reports to a user."""

    exit_code: int = EXIT_FAILED
    hint: str = ""
    transient: bool = False

    def __init__(self, message: str, *, hint: str | None = None, detail: str = "") -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = redact(hint)
        self.detail = redact(detail)

    def __str__(self) -> str:
        return self.message


class UsageError(DeltadumpError):
    """Bad command-line usage."""

    exit_code = EXIT_USAGE


class ConfigError(DeltadumpError):
    """The config file is missing, malformed or has unknown or invalid keys."""

    exit_code = EXIT_USAGE
    hint = "check the config file against README.md's 'Config' section"


class DatabaseError(DeltadumpError):
    """The database could not be reached, or refused us."""


class DumpError(DeltadumpError):
    """pg_dump (or pg_basebackup) failed or produced an unusable archive."""


class ToolNotFound(DeltadumpError):
    """No suitable PostgreSQL client program was found."""

    hint = "install PostgreSQL client programs at least as new as the server, or set [database] pg_bin"


class StorageError(DeltadumpError):
    """Reading or writing the backup folder failed (permissions, full disk, ...)."""


class IntegrityError(DeltadumpError):
    """A stored file does not match its recorded size or checksum, or is structurally broken."""


class TrustError(IntegrityError):
    """A head or record is unsigned, signed by another key, from another repository, or older than one
    already seen (a rollback)."""

    hint = (
        "the copy may have been tampered with; restore from another copy, or pass --trust with the public "
        "key you noted at init (deltadump key) if the repository was signed with another key"
    )


class RestoreError(DeltadumpError):
    """A restore failed or was refused."""


class LockedError(DeltadumpError):
    """Another deltadump process holds the lock for this config."""


class TargetError(DeltadumpError):
    """An offsite target failed. `transient` says whether a retry may help."""


class RsyncError(DeltadumpError):
    """A librsync-compatible operation failed; `rs_code` is librsync's result code (rdiff's exit)."""

    RS_IO_ERROR = 100
    RS_SYNTAX_ERROR = 101
    RS_MEM_ERROR = 102
    RS_INPUT_ENDED = 103
    RS_BAD_MAGIC = 104
    RS_CORRUPT = 106
    RS_PARAM_ERROR = 108

    REASONS: ClassVar[dict[int, str]] = {
        100: "IO error",
        101: "syntax error",
        102: "out of memory",
        103: "unexpected end of input",
        104: "bad magic number at start of stream",
        106: "stream corrupt",
        108: "unexplained problem",
    }

    def __init__(
        self, rs_code: int, detail: str = "", *, job: str | None = None, message: str = "", tail: bool = True
    ) -> None:
        # job: librsync's job name for the "(rs_job_complete) <job> job failed" line; None until the
        # operation that failed fills it in; "" for failures before any job exists.
        # tail: False for errors librsync reports with the detail line alone (opening files).
        self.rs_code = rs_code
        self.job = job
        self.tail = tail
        self.librsync_detail = detail
        reason = self.REASONS.get(rs_code, "unexplained problem")
        text = message or (f"{reason}: {detail.split(') ', 1)[-1]}" if detail else reason)
        super().__init__(text)

"""An SMB 2/3 target: a Windows file server or a NAS share, reached without mounting (smbprotocol).

URL smb://[user@]host[:port]/share/path. The password is read from a file (first line) when the
target connects and lives only in this process's memory: never in the URL, the config, argv or a
message. Encryption is required unless `require_encryption` is false; `dialect` pins the SMB dialect
for devices that fail the 3.1.1 negotiation.

put: the bytes go to a temporary name (".tmp-NAME.PID.RANDOM") in the key's folder, hashed while
written; only a complete, matching copy is renamed over the final name (a replace), so nothing partial
is ever visible under a key. Every request waits at most `timeout` seconds (30) for its answer, and
every send for progress, so a server that stops answering cannot hang a backup. Errors are translated
where they are born: a dropped connection or a timeout is transient (the connection is dropped too,
and the next call opens a new one: RetryTarget retries); a refused login, a missing share, permission
denied or a full share are permanent.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import secrets
import socket
import struct
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, unquote

from ..errors import TargetError, register_secret
from . import (
    TMP_PREFIX,
    HashedSource,
    MissingObject,
    TargetOptions,
    check_key,
    check_prefix,
    copy_limited,
    fetch_into,
    listed_key,
)

CHUNK = 4 << 20
WRITE = 1 << 20  # bytes per SMB write request (at most the server's max write size)
DEPTH = 4  # write requests in flight: the next ones are built and encrypted while the server writes
DIALECTS = {"3.1.1": 0x0311, "3.0.2": 0x0302, "3.0": 0x0300, "2.1": 0x0210, "2.0.2": 0x0202}
WINDOWS_FORBIDDEN = set('<>:"|?*')  # ':' would name an alternate data stream on the server

# NTSTATUS codes (MS-ERREF 2.3.1)
LOGIN = {0xC000006D: "wrong username or password", 0xC000006A: "wrong password", 0xC0000071: "password expired",
         0xC0000072: "account disabled", 0xC0000234: "account locked out", 0xC000006E: "account restricted",
         0xC000015B: "logon type not granted", 0xC0000064: "no such user"}  # fmt: skip
NO_SHARE = {0xC00000CC, 0xC00000BE}  # BAD_NETWORK_NAME, BAD_NETWORK_PATH
MISSING = {0xC0000034, 0xC000003A, 0xC0000225, 0xC000000F}  # OBJECT_NAME/PATH_NOT_FOUND, NOT_FOUND, NO_SUCH_FILE
DENIED = {0xC0000022, 0xC0000061, 0xC00000A2}  # ACCESS_DENIED, PRIVILEGE_NOT_HELD, MEDIA_WRITE_PROTECTED
FULL = {0xC000007F: "the share is full", 0xC0000044: "the user's quota on the share is exceeded"}
TRANSIENT = {0xC00000C9, 0xC0000203, 0xC00000B5, 0xC000009A, 0xC0000205, 0xC000035C, 0xC000020C, 0xC0000236,
             0xC000023C, 0xC00000C4, 0xC0000043, 0xC0000120}  # fmt: skip
# NETWORK_NAME_DELETED, USER_SESSION_DELETED, IO_TIMEOUT, INSUFFICIENT_RESOURCES, INSUFF_SERVER_RESOURCES,
# NETWORK_SESSION_EXPIRED, CONNECTION_DISCONNECTED, CONNECTION_REFUSED, NETWORK_UNREACHABLE,
# UNEXPECTED_NETWORK_ERROR, SHARING_VIOLATION (a handle still open from a dropped session), CANCELLED


def _status(exc: BaseException) -> int | None:
    for attr in ("ntstatus", "status"):
        v = getattr(exc, attr, None)
        if isinstance(v, int):
            return v & 0xFFFFFFFF
    return None


PENDING_WAITS = 20  # most waits of `answer_timeout` for one request the server said it is at work on


@functools.cache
def _timed_connection() -> Any:
    """smbprotocol's Connection with an end to every wait for an answer (smbclient waits without one): a
    server that keeps the connection open but stops answering (hung, or a connection left half open by a
    network change) then makes a transient error after `answer_timeout` seconds, which drops the
    connection (the retry opens a new one), instead of a backup that never ends. A server that answers
    "still at work" (an interim STATUS_PENDING, as a busy NAS does for a long write or flush) is given
    more waits, as long as it answers an echo between them, up to PENDING_WAITS in all. (Made on first
    use: smbprotocol is imported only by a target that connects.)"""
    from smbprotocol.connection import Connection
    from smbprotocol.exceptions import SMBException
    from smbprotocol.header import NtStatus

    class TimedConnection(Connection):  # type: ignore[misc]
        answer_timeout = 30.0

        def receive(self, request: Any, wait: bool = True, timeout: float | None = None,
                    resolve_symlinks: bool = True) -> Any:  # fmt: skip
            limit = self.answer_timeout if timeout is None else timeout
            if wait:
                self._await(request, limit)
            try:
                return super().receive(request, wait, limit, resolve_symlinks)
            except SMBException as exc:
                if request.response_event.is_set():  # an answer came: the error is the server's
                    raise
                raise TimeoutError(f"no answer from the server in {limit:g} s") from exc

        def _await(self, request: Any, limit: float) -> None:
            """Until the final answer to `request` is there (or the connection died: receive says how)."""
            pending = False
            for _ in range(PENDING_WAITS):
                if request.response_event.wait(timeout=limit):
                    with request.response_event_lock:
                        answer = request.response
                        if answer is None or answer["status"].get_value() != NtStatus.STATUS_PENDING:
                            return
                        request.response_event.clear()
                        pending = True
                elif not pending:
                    raise TimeoutError(f"no answer from the server in {limit:g} s")
                else:
                    self.echo(timeout=limit)  # at work on it: still alive? (else a TimeoutError)
            raise TimeoutError(f"the server has been at work on one request for over {PENDING_WAITS * limit:g} s")

    return TimedConnection


def _send_timeout(conn: Any, seconds: float) -> None:
    """Sends that make no progress for `seconds` fail (SO_SNDTIMEO: an OSError, transient) instead of
    blocking for good when the server stops reading (a large write fills the socket's buffers)."""
    sock = getattr(getattr(conn, "transport", None), "_sock", None)
    if isinstance(sock, socket.socket):
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


class SMBTarget:
    def __init__(self, host: str, port: int, share: str, path: str, username: str, password_file: str,
                 domain: str = "", require_encryption: bool = True, dialect: str = "",
                 timeout: float = 30.0) -> None:  # fmt: skip
        self.host = host
        self.port = port
        self.share = share
        self.path = path.strip("/")
        self.username = username
        self.password_file = password_file
        self.domain = domain
        self.require_encryption = require_encryption
        self.dialect = dialect
        self.timeout = timeout
        self._cache: dict[str, Any] = {}  # smbclient's connection cache, private to this target
        self._free_at_failure = ""  # free space on the share when a write failed, for the message
        if dialect and dialect not in DIALECTS:
            raise TargetError(f"unknown SMB dialect {dialect!r}", hint=f"use one of {', '.join(DIALECTS)}")
        if require_encryption and dialect.startswith("2"):
            raise TargetError(f"SMB dialect {dialect} has no encryption",
                              hint="set require_encryption = false to use it (the traffic is then signed, not "
                              "encrypted), or use dialect 3.0 or newer")  # fmt: skip
        if not username or not password_file:
            raise TargetError(f"{self.describe()}: an SMB target needs a username and a password_file",
                              hint="set username and password_file in [offsite]")  # fmt: skip

    @classmethod
    def from_url(cls, u: SplitResult, opts: TargetOptions) -> SMBTarget:
        parts = unquote(u.path).strip("/").split("/", 1)
        user = unquote(u.username or "")
        if user and opts.username and user != opts.username:
            raise TargetError(f"the smb url names user {user!r} but username is {opts.username!r}")
        return cls(u.hostname or "", u.port or 445, parts[0], parts[1] if len(parts) > 1 else "",
                   user or opts.username, opts.password_file, opts.domain, opts.require_encryption,
                   opts.dialect)  # fmt: skip

    def describe(self) -> str:
        port = f":{self.port}" if self.port != 445 else ""
        user = f"{self.username}@" if self.username else ""
        return f"smb://{user}{self.host}{port}/{self.share}/{self.path}".rstrip("/")

    # -- connection -------------------------------------------------------------------------------
    def _password(self) -> str:
        try:
            with open(self.password_file, encoding="utf-8") as f:
                line = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise TargetError(f"cannot read the SMB password file {self.password_file}: {exc.strerror}",
                              hint="password_file names a file whose first line is the password") from None  # fmt: skip
        if not line:
            raise TargetError(f"the SMB password file {self.password_file} is empty")
        register_secret(line)  # never in a message, a log line or a notification, whatever quotes it
        return line

    def _connect(self) -> None:
        """Open the connection and the session when there is none (after a drop too)."""
        key = f"{self.host.lower()}:{self.port}"
        if key in self._cache:
            return
        import smbclient
        from smbprotocol.tree import TreeConnect

        password = self._password()
        user = f"{self.domain}\\{self.username}" if self.domain else self.username
        conn = _timed_connection()(uuid.uuid4(), self.host, self.port, require_signing=True)
        conn.answer_timeout = self.timeout
        try:
            try:
                conn.connect(dialect=DIALECTS[self.dialect] if self.dialect else None, timeout=self.timeout)
            except ValueError as exc:  # smbprotocol's "Failed to connect to host:port: ..." (refused, timeout)
                raise self._translate(exc, "connecting to", "") from None
            _send_timeout(conn, self.timeout)
            self._cache[key] = conn
            session = smbclient.register_session(
                self.host, username=user, password=password, port=self.port,
                encrypt=True if self.require_encryption else None, connection_timeout=self.timeout,
                connection_cache=self._cache,
            )  # fmt: skip
            # the share first, on its own: a missing share is then told apart from a missing object
            # (smbclient would go on to a DFS referral that answers "not found")
            TreeConnect(session, rf"\\{self.host}\{self.share}").connect()
        except TargetError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise self._translate(exc, "logging in to", "") from None

    def close(self) -> None:
        """Drop the connection (after a transient error, or when done)."""
        cache, self._cache = self._cache, {}
        for conn in cache.values():
            with contextlib.suppress(Exception):
                conn.disconnect(close=True)

    def _unc(self, key: str = "") -> str:
        parts = [self.share, *[p for p in self.path.split("/") if p], *key.split("/")]
        return "\\\\" + self.host + "\\" + "\\".join(p for p in parts if p)

    def _kw(self) -> dict[str, Any]:
        return {"port": self.port, "connection_cache": self._cache}

    def _key(self, key: str) -> str:
        key = check_key(key)
        bad = sorted(WINDOWS_FORBIDDEN.intersection(key))
        if bad:
            raise TargetError(f"refused offsite key {key!r}: {''.join(bad)} is not allowed in an SMB name")
        return key

    # -- errors -------------------------------------------------------------------------------------
    def _translate(self, exc: BaseException, action: str, key: str) -> TargetError:
        from smbprotocol.exceptions import SMBAuthenticationError, SMBConnectionClosed

        where = f"{self.describe()}/{key}" if key else self.describe()
        status = _status(exc)
        if status in LOGIN or isinstance(exc, SMBAuthenticationError):
            why = LOGIN.get(status or 0, "authentication failed")
            return TargetError(f"SMB server {self.host}:{self.port} refused the login of {self.username!r}: {why}",
                               hint="check username, domain and the password in password_file "
                               "(its first line)")  # fmt: skip
        if status in NO_SHARE:
            return TargetError(f"no share {self.share!r} on SMB server {self.host}:{self.port}",
                               hint=f"check the share in the url; smbclient -L //{self.host} -U {self.username} "
                               "lists the shares")  # fmt: skip
        if status in DENIED:
            return TargetError(f"SMB server refused {action} {where}: permission denied",
                               hint=f"check that {self.username!r} may write to the share and folder")  # fmt: skip
        if status in FULL:
            free, self._free_at_failure = self._free_at_failure, ""
            return TargetError(f"{FULL[status]} while {action} {where}{free}",
                               hint="free some space on the share or raise the quota; earlier copies "
                               "are untouched")  # fmt: skip
        if status in MISSING:
            return MissingObject(f"{where} is missing offsite")
        transient = (status in TRANSIENT or isinstance(exc, SMBConnectionClosed | ConnectionError | TimeoutError)
                     or (status is None and isinstance(exc, OSError | ValueError)
                         and not isinstance(exc, socket.gaierror)))  # fmt: skip
        if isinstance(exc, socket.gaierror):
            return TargetError(f"SMB server {self.host} not found: {exc.strerror}", hint="check the host in the url")
        detail = str(exc).replace("\n", " ") or type(exc).__name__
        if transient:
            self.close()
            err = TargetError(f"SMB connection to {self.host}:{self.port} failed while {action} {where}: {detail}")
            err.transient = True
            return err
        if "encrypt" in detail.lower():
            return TargetError(f"SMB server {self.host}:{self.port} cannot encrypt: {detail}",
                               hint="the server or dialect has no SMB 3 encryption; set require_encryption = "
                               "false only on a trusted network")  # fmt: skip
        return TargetError(f"SMB server refused {action} {where}: {detail}")

    def _free(self) -> str:
        import smbclient

        with contextlib.suppress(Exception):
            vol = smbclient.stat_volume(self._unc(), **self._kw())
            return f" ({vol.caller_available_size / 1e6:.1f} MB free with the partial upload)"
        return ""

    def _call(self, action: str, key: str, fn: Any) -> Any:
        self._connect()
        try:
            return fn()
        except TargetError:
            raise
        except Exception as exc:
            raise self._translate(exc, action, key) from exc

    # -- the protocol -------------------------------------------------------------------------------
    def put(self, key: str, src: Path, sha256: str) -> None:
        import smbclient

        key = self._key(key)
        final = self._unc(key)
        name = PurePosixPath(key).name
        parent = final.rsplit("\\", 1)[0]
        tmp = f"{parent}\\{TMP_PREFIX}{name}.{os.getpid()}.{secrets.token_hex(4)}"

        def send() -> None:
            smbclient.makedirs(parent, exist_ok=True, **self._kw())
            source = HashedSource(src, CHUNK)
            try:
                with smbclient.open_file(tmp, "wb", buffering=0, **self._kw()) as f:
                    _pipelined_write(f.fd, source)
                if source.hexdigest() != sha256:
                    raise TargetError(f"{src} changed while being copied to {self.describe()}/{key}; not stored")
                smbclient.replace(tmp, final, **self._kw())
            except BaseException as exc:
                if _status(exc) in FULL:
                    self._free_at_failure = self._free()  # before the partial file goes
                with contextlib.suppress(Exception):
                    smbclient.remove(tmp, **self._kw())
                raise

        self._call("uploading to", key, send)

    def get(self, key: str, dst: Path, limit: int | None = None) -> None:
        import smbclient

        key = self._key(key)

        def fetch(tmp: Path) -> None:
            with smbclient.open_file(self._unc(key), "rb", buffering=0, **self._kw()) as f, open(tmp, "wb") as out:
                copy_limited(f.read, out, dst, limit, f"{self.describe()}/{key}")

        fetch_into(dst, lambda tmp: self._call("downloading", key, lambda: fetch(tmp)))

    def local_path(self, key: str) -> Path | None:
        self._key(key)
        return None  # objects are downloaded

    def stat(self, key: str) -> int | None:
        import smbclient

        key = self._key(key)
        try:
            st = self._call("checking", key, lambda: smbclient.stat(self._unc(key), **self._kw()))
        except MissingObject:
            return None
        return None if st.st_file_attributes & 0x10 else int(st.st_size)  # a folder is no object

    def _walk(self, folder: str, rel: str, visit: Callable[[str, str, Any], None]) -> None:
        """Every entry below `folder` (whose key prefix is `rel`), as visit(folder, key, its smb_info) from
        the listing itself (no request per entry): reparse points (links) are never followed nor shown,
        folders whose names are not ours (listed_key) are not entered. A missing folder is empty."""
        import smbclient

        try:
            entries = list(smbclient.scandir(folder, **self._kw()))
        except Exception as exc:
            if _status(exc) in MISSING:
                return
            raise
        for e in entries:
            info = e.smb_info
            if info.file_attributes & 0x400:  # a reparse point (a link): never followed, never ours
                continue
            name = f"{rel}{e.name}"
            if info.file_attributes & 0x10:  # a folder
                if listed_key(name) is not None:
                    self._walk(f"{folder}\\{e.name}", name + "/", visit)
            else:
                visit(folder, name, info)

    def list(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        start = check_prefix(prefix).rpartition("/")[0]
        if prefix:
            self._key(prefix.removesuffix("/"))

        def visit(folder: str, name: str, info: Any) -> None:
            if name.startswith(prefix) and listed_key(name) is not None:
                out[name] = int(info.end_of_file)

        self._call("listing", prefix, lambda: self._walk(self._unc(start), start + "/" if start else "", visit))
        return out

    def delete(self, key: str) -> None:
        import smbclient

        key = self._key(key)
        with contextlib.suppress(MissingObject):
            self._call("deleting", key, lambda: smbclient.remove(self._unc(key), **self._kw()))

    def clean_temporaries(self) -> builtins.list[str]:
        """Remove the temporary files puts killed mid-way left (ours: the .tmp- names) anywhere under the
        folder; the caller holds the only write access to it (its run lock). Links are never followed."""
        import smbclient

        gone: list[str] = []

        def visit(folder: str, name: str, info: Any) -> None:
            base = name.rpartition("/")[2]
            if base.startswith(TMP_PREFIX):
                smbclient.remove(f"{folder}\\{base}", **self._kw())
                gone.append(name)

        self._call("removing unfinished uploads in", "", lambda: self._walk(self._unc(), "", visit))
        return gone


def _pipelined_write(handle: Any, chunks: Iterable[bytes]) -> None:
    """Write the chunks to an open SMB file, DEPTH requests in flight (smbprotocol's out-of-band send),
    each answer checked: a refused write raises, a short one is an error."""
    conn = handle.connection
    sid, tid = handle.tree_connect.session.session_id, handle.tree_connect.tree_connect_id
    step = min(WRITE, conn.max_write_size)
    pending: deque[tuple[Any, Any, int]] = deque()

    def confirm() -> None:
        request, receive, length = pending.popleft()
        written = receive(request)
        if written != length:
            raise OSError(f"the server wrote {written} of {length} bytes")

    offset = 0
    for chunk in chunks:
        for i in range(0, len(chunk), step):
            piece = chunk[i : i + step]
            credits = -(-len(piece) // 65536) if conn.supports_multi_credit else 1
            window = conn.sequence_window
            while pending and window["high"] - window["low"] < credits:  # what the server grants us
                confirm()
            message, receive = handle.write(piece, offset, send=False)
            pending.append((conn.send(message, sid, tid), receive, len(piece)))
            offset += len(piece)
            if len(pending) >= DEPTH:
                confirm()
    while pending:
        confirm()

"""An SFTP target: a folder on any SSH server (paramiko). URL sftp://user@host[:port]/path.

Login by key only: `identity` (a private key file), else the keys of a running ssh-agent. The server
must prove a host key already listed in `known_hosts` (default ~/.ssh/known_hosts): an unknown or
changed key is refused with the fingerprint and what to do; nothing is trusted silently on first use.
`trust_host` (the `deltadump trust-host` command) adds a server's key once, when asked.

put: the bytes go to a temporary name (".tmp-NAME.PID.RANDOM") in the key's folder, hashed while
written (pipelined writes), then renamed over the final name with the posix-rename@openssh.com
extension (atomic replace on the server); nothing partial is ever visible under a key. get resolves
the key on the server first (realpath) and refuses one that leads outside the folder (a link).
Errors: a dropped or refused connection or a timeout is transient (the connection is closed and the
next call opens a new one: RetryTarget retries); a refused key, an unknown or changed host key, a
missing folder, permission denied or a failed write (a full disk) are permanent.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import secrets
import socket
import stat as st
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, unquote

from ..errors import TargetError
from ..fsio import atomic_write
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
    split_url,
    too_large,
)

CHUNK = 4 << 20
WRITE_REQUEST = 255 << 10  # bytes per SFTP write (OpenSSH's sftp-server takes messages up to 256 KiB)
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
RSA_ALGS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a public key (as ssh-keygen -l prints it)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def host_entry(host: str, port: int) -> str:
    """The name a known_hosts file lists a server under."""
    return host if port == 22 else f"[{host}]:{port}"


def _known(path: Path) -> Any:
    import paramiko

    keys = paramiko.HostKeys()
    try:
        keys.load(str(path))
    except FileNotFoundError:
        pass
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise TargetError(f"cannot read known_hosts file {path}: {exc}") from None
    return keys


class SFTPTarget:
    def __init__(self, host: str, port: int, user: str, root: str, identity: str = "", known_hosts: str = "",
                 timeout: float = 30.0) -> None:  # fmt: skip
        self.host = host
        self.port = port
        self.user = user
        self.root = "/" + root.strip("/")
        self.identity = Path(identity).expanduser() if identity else None
        self.known_hosts = Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self.timeout = timeout
        self._transport: Any = None
        self._sftp: Any = None
        self._real_root = ""
        self._free_at_failure = ""  # free space on the server when a write failed, for the message

    @classmethod
    def from_url(cls, u: SplitResult, opts: TargetOptions) -> SFTPTarget:
        return cls(u.hostname or "", u.port or 22, unquote(u.username or ""), unquote(u.path), opts.identity,
                   opts.known_hosts)  # fmt: skip

    def describe(self) -> str:
        port = f":{self.port}" if self.port != 22 else ""
        return f"sftp://{self.user}@{self.host}{port}{self.root}"

    # -- connection ---------------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._sftp is not None:
            return self._sftp
        import paramiko

        try:
            transport = open_transport(self.host, self.port, self.timeout, _known(self.known_hosts))
        except TargetError:
            raise
        except Exception as exc:
            raise self._translate(exc, "connecting to", "") from None
        try:
            check_host_key(transport, self.host, self.port, self.known_hosts, self.describe())
            self._login(transport)
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=8 << 20, max_packet_size=256 << 10)
            if sftp is None:
                raise TargetError(f"{self.describe()}: the server offers no SFTP")
            sftp.get_channel().settimeout(self.timeout)
            self._transport, self._sftp = transport, sftp
        except TargetError:
            transport.close()
            raise
        except Exception as exc:
            transport.close()
            raise self._translate(exc, "logging in to", "") from None
        return sftp

    def _login(self, transport: Any) -> None:
        import paramiko

        keys: list[Any] = []
        if self.identity is not None:
            try:
                keys.append(paramiko.PKey.from_path(self.identity))
            except paramiko.PasswordRequiredException:
                raise TargetError(f"the SSH key {self.identity} is protected by a passphrase",
                                  hint="load it into ssh-agent and leave identity empty") from None  # fmt: skip
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise TargetError(f"cannot read the SSH key {self.identity}: {exc}") from None
        else:
            with contextlib.suppress(Exception):
                keys.extend(paramiko.Agent().get_keys())
        if not keys:
            raise TargetError(f"no SSH key to log in to {self.describe()}",
                              hint="set identity (a private key file) in [offsite], or start ssh-agent "
                              "with the key")  # fmt: skip
        for key in keys:
            with contextlib.suppress(paramiko.AuthenticationException):
                transport.auth_publickey(self.user, key)
                return
        raise TargetError(f"SSH server {self.host}:{self.port} refused the key login of {self.user!r}",
                          hint=f"add the public key of {self.identity or 'the agent'} to the server's authorized_keys "
                          f"of {self.user}")  # fmt: skip

    def close(self) -> None:
        sftp, transport, self._sftp, self._transport = self._sftp, self._transport, None, None
        with contextlib.suppress(Exception):
            if sftp is not None:
                sftp.close()
        with contextlib.suppress(Exception):
            if transport is not None:
                transport.close()

    def _translate(self, exc: BaseException, action: str, key: str) -> TargetError:
        import paramiko

        where = f"{self.root}/{key}" if key else self.root
        alive = self._transport is not None and self._transport.is_active()
        if isinstance(exc, socket.gaierror):
            return TargetError(f"SSH server {self.host} not found: {exc.strerror}", hint="check the host in the url")
        if isinstance(exc, paramiko.AuthenticationException):
            return TargetError(f"SSH server {self.host}:{self.port} refused the login of {self.user!r}: {exc}")
        if alive and isinstance(exc, OSError) and not isinstance(exc, socket.timeout | ConnectionError):
            if exc.errno == errno.ENOENT:
                return MissingObject(f"{self.describe()}/{key} is missing offsite")
            if exc.errno == errno.EACCES:
                return TargetError(f"SSH server refused {action} {where}: permission denied",
                                   hint=f"check that {self.user!r} may write to {self.root} on "
                                   f"{self.host}")  # fmt: skip
            text = str(exc.args[-1] if exc.args else exc)
            free, self._free_at_failure = self._free_at_failure, ""
            return TargetError(f"SSH server failed {action} {where}: {text}{free}",
                               hint="the server's disk may be full (or a quota reached); earlier copies are untouched"
                               if action.startswith("upload") else "")  # fmt: skip
        self.close()
        err = TargetError(f"SSH connection to {self.host}:{self.port} failed while {action} {where}: "
                          f"{str(exc) or type(exc).__name__}")  # fmt: skip
        err.transient = True
        return err

    def _free(self, folder: str) -> str:
        """' (N MB free)' from the statvfs@openssh.com extension, when the server has it."""
        with contextlib.suppress(Exception):
            import paramiko.sftp as proto

            _, msg = self._sftp._request(proto.CMD_EXTENDED, "statvfs@openssh.com", folder)
            _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
            return f" ({bavail * frsize / 1e6:.1f} MB free with the partial upload)"
        return ""

    def _call(self, action: str, key: str, fn: Any) -> Any:
        sftp = self._connect()
        try:
            return fn(sftp)
        except TargetError:
            raise
        except Exception as exc:
            raise self._translate(exc, action, key) from exc

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def _inside(self, sftp: Any, path: str, rel: str) -> None:
        """The server's real path of `path` is the folder's own `rel` (no link leads elsewhere)."""
        if not self._real_root:
            self._real_root = sftp.normalize(self.root)
        real = sftp.normalize(path)
        want = f"{self._real_root.rstrip('/')}/{rel}" if rel else self._real_root
        if real != want:
            raise TargetError(f"{self.describe()}/{rel} leads outside the offsite folder (to {real}); refused",
                              hint="someone planted a link on the server; remove it")  # fmt: skip

    # -- the protocol -------------------------------------------------------------------------------
    def put(self, key: str, src: Path, sha256: str) -> None:
        final = self._path(key)
        rel_parent = "" if "/" not in key else key.rsplit("/", 1)[0]
        parent = f"{self.root}/{rel_parent}".rstrip("/")
        tmp = f"{parent}/{TMP_PREFIX}{PurePosixPath(key).name}.{os.getpid()}.{secrets.token_hex(4)}"

        def send(sftp: Any) -> None:
            self._makedirs(sftp, parent)
            self._inside(sftp, parent, rel_parent)
            source = HashedSource(src, CHUNK)
            try:
                with sftp.open(tmp, "wb") as f:
                    f.chmod(0o600)  # readable by its owner only
                    f.MAX_REQUEST_SIZE = WRITE_REQUEST
                    f.set_pipelined(True)
                    for chunk in source:
                        f.write(chunk)
                    f.flush()
                    # paramiko reads the answers to pipelined writes only now and then, and drops the ones
                    # still due at close: every write is confirmed here (a failed one raises)
                    while f._reqs:
                        sftp._read_response(f._reqs.popleft())
                size = source.size
                if source.hexdigest() != sha256:
                    raise TargetError(f"{src} changed while being copied to {self.describe()}/{key}; not stored")
                if sftp.stat(tmp).st_size != size:
                    raise TargetError(f"{self.describe()}/{key}: the server kept {sftp.stat(tmp).st_size} of "
                                      f"{size} bytes; not stored")  # fmt: skip
                self._replace(sftp, tmp, final)
            except BaseException as exc:
                if self._transport is not None and self._transport.is_active():
                    if isinstance(exc, OSError):
                        self._free_at_failure = self._free(parent)  # before the partial file goes
                    with contextlib.suppress(Exception):
                        sftp.remove(tmp)
                raise

        self._call("uploading to", key, send)

    @staticmethod
    def _replace(sftp: Any, tmp: str, final: str) -> None:
        try:
            sftp.posix_rename(tmp, final)  # atomic replace (OpenSSH's posix-rename@openssh.com)
        except OSError as exc:
            if "unsupported" not in str(exc).lower():
                raise
            with contextlib.suppress(FileNotFoundError):  # a server without the extension: SFTP's rename
                sftp.remove(final)  # does not replace; the key is missing for an instant, never partial
            sftp.rename(tmp, final)

    def _makedirs(self, sftp: Any, folder: str) -> None:
        missing = []
        path = folder
        while path not in ("", "/"):
            try:
                if not st.S_ISDIR(sftp.stat(path).st_mode or 0):
                    raise TargetError(f"{self.describe()}: {path} on the server is not a folder")
                break
            except FileNotFoundError:
                missing.append(path)
                path = path.rsplit("/", 1)[0]
        for p in reversed(missing):
            try:
                sftp.mkdir(p, 0o700)
            except OSError:
                if not st.S_ISDIR(sftp.stat(p).st_mode or 0):  # made meanwhile by someone else: fine
                    raise

    def get(self, key: str, dst: Path, limit: int | None = None) -> None:
        path = self._path(key)

        def fetch(sftp: Any, tmp: Path) -> None:
            self._inside(sftp, path, key)
            with sftp.open(path, "rb") as f, open(tmp, "wb") as out:
                size = f.stat().st_size
                if limit is not None and size > limit:
                    raise too_large(f"{self.describe()}/{key}", limit)
                f.prefetch(size, max_concurrent_requests=64)
                copy_limited(f.read, out, dst, limit, f"{self.describe()}/{key}")

        fetch_into(dst, lambda tmp: self._call("downloading", key, lambda sftp: fetch(sftp, tmp)))

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None  # objects are downloaded

    def stat(self, key: str) -> int | None:
        path = self._path(key)
        try:
            attrs = self._call("checking", key, lambda sftp: sftp.lstat(path))
        except MissingObject:
            return None
        return int(attrs.st_size) if st.S_ISREG(attrs.st_mode or 0) else None  # a link or a folder: no object

    def list(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        start = check_prefix(prefix).rpartition("/")[0]

        def walk(sftp: Any, folder: str, rel: str) -> None:
            try:
                entries = sftp.listdir_attr(folder)
            except FileNotFoundError:
                return
            for a in entries:
                name = f"{rel}{a.filename}"
                if listed_key(name) is None:
                    continue
                mode = a.st_mode or 0
                if st.S_ISDIR(mode):
                    walk(sftp, f"{folder}/{a.filename}", name + "/")
                elif st.S_ISREG(mode) and name.startswith(prefix):  # links are never followed
                    out[name] = int(a.st_size or 0)

        self._call("listing", prefix, lambda sftp: walk(sftp, f"{self.root}/{start}".rstrip("/"),
                                                         start + "/" if start else ""))  # fmt: skip
        return out

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(MissingObject):
            self._call("deleting", key, lambda sftp: sftp.remove(path))


def open_transport(host: str, port: int, timeout: float, known: Any) -> Any:
    """A started SSH transport (key exchange done, not logged in), offering only the host key types
    known_hosts lists for the server (as OpenSSH does), so a server with several keys shows the known one."""
    import paramiko

    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock, default_window_size=8 << 20, default_max_packet_size=256 << 10)
    transport.banner_timeout = transport.auth_timeout = timeout
    types = set(known.lookup(host_entry(host, port)) or ())
    if "ssh-rsa" in types:
        types.update(RSA_ALGS)
    opts = transport.get_security_options()
    # AES-GCM first: one pass of authenticated encryption instead of AES-CTR plus an HMAC per packet
    opts.ciphers = sorted(opts.ciphers, key=lambda c: not c.startswith("aes128-gcm"))
    offered = [k for k in opts.key_types if k in types]
    if offered:
        opts.key_types = offered
    try:
        transport.start_client(timeout=timeout)
    except paramiko.IncompatiblePeer as exc:
        transport.close()
        if offered and "host key" in str(exc).lower():
            raise TargetError(f"the SSH host key of {host_entry(host, port)} has CHANGED: the server offers none of "
                              f"the key types known_hosts lists for it ({', '.join(sorted(types))}); refusing to "
                              "connect",
                              hint="someone may be intercepting the connection; if the server was "
                              "reinstalled, check its fingerprint and run 'deltadump trust-host URL --replace'",
                              ) from None  # fmt: skip
        raise
    except BaseException:
        transport.close()
        raise
    return transport


def check_host_key(transport: Any, host: str, port: int, known_hosts: Path, where: str) -> None:
    """Refuse a server whose host key known_hosts does not list (unknown) or lists otherwise (changed)."""
    key = transport.get_remote_server_key()
    entry = host_entry(host, port)
    known = _known(known_hosts).lookup(entry)
    name = "ssh-rsa" if key.get_name() in RSA_ALGS else key.get_name()
    offered = f"{key.get_name()} {fingerprint(key)}"
    if not known:
        raise TargetError(f"the SSH host key of {entry} is unknown: {known_hosts} does not list it (the server "
                          f"offers {offered})",
                          hint=f"check that fingerprint with the server's administrator, then run "
                          f"'deltadump trust-host {where} --known-hosts {known_hosts}'")  # fmt: skip
    if name not in known or known[name] != key:
        had = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known.values())
        raise TargetError(f"the SSH host key of {entry} has CHANGED: {known_hosts} lists {had}, the server offers "
                          f"{offered}; refusing to connect",
                          hint="someone may be intercepting the connection; if the server was reinstalled, check "
                          "the new fingerprint and run 'deltadump trust-host URL --replace'")  # fmt: skip


def trust_host(url: str, known_hosts: str = "", replace: bool = False, timeout: float = 30.0) -> tuple[str, str]:
    """Fetch the host key of an sftp:// URL's server and add it to known_hosts. Returns (fingerprint
    line, what was done: "added", "replaced" or "already trusted"). A key that differs from the listed
    one is only replaced with `replace`."""
    import paramiko

    try:
        u = split_url(url)
    except ValueError as exc:
        raise TargetError(f"invalid url: {exc}") from None
    if u.scheme != "sftp":
        raise TargetError(f"trust-host takes an sftp:// url, not {u.scheme}://")
    host, port = u.hostname or "", u.port or 22
    path = Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
    try:
        # the key types known_hosts lists first (a server with several keys shows the one we know);
        # --replace takes whichever the server prefers
        transport = open_transport(host, port, timeout, paramiko.HostKeys() if replace else _known(path))
    except TargetError:
        raise
    except Exception as exc:
        raise TargetError(f"cannot reach SSH server {host}:{port}: {exc}") from None
    try:
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    entry = host_entry(host, port)
    shown = f"{entry} {key.get_name()} {fingerprint(key)}"
    known = _known(path).lookup(entry)
    name = "ssh-rsa" if key.get_name() in RSA_ALGS else key.get_name()
    if known and name in known and known[name] == key:
        return shown, "already trusted"
    if known and not replace:
        had = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known.values())
        raise TargetError(f"{path} already lists another key for {entry} ({had}); the server now offers "
                          f"{key.get_name()} {fingerprint(key)}; not replaced without --replace",
                          hint="if the server was reinstalled and that fingerprint is right, run again "
                          "with --replace")  # fmt: skip
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            parsed = None
            with contextlib.suppress(Exception):
                parsed = paramiko.hostkeys.HostKeyEntry.from_line(line)
            if parsed is not None and _matches(parsed.hostnames, entry):
                continue  # the server's old keys go (replace)
            kept.append(line)
    kept.append(f"{entry} {key.get_name() if name != 'ssh-rsa' else 'ssh-rsa'} {key.get_base64()}")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with atomic_write(path, mode=0o600) as f:
            f.write(("\n".join(kept) + "\n").encode())
    except Exception as exc:
        raise TargetError(f"cannot write {path}: {exc}") from None
    return shown, "replaced" if known else "added"


def _matches(hostnames: list[str], entry: str) -> bool:
    import paramiko

    for h in hostnames:
        if h.startswith("|1|"):
            salt = h.split("|")[2]
            if paramiko.HostKeys.hash_host(entry, salt) == h:
                return True
        elif h == entry:
            return True
    return False

"""Real SMB and SSH servers started by the tests: Samba's smbd and OpenSSH's sshd in the foreground, on
loopback high ports, with private configs, state and keys under a private temporary folder, and
throwaway users (ddsmb, ddsftp) created when missing. No nmbd, no system service. Needs root (as CI
has): smbd and sshd switch to the user they serve."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import require_tool

from deltadump.pg.server import free_port

SMB_USER = "ddsmb"
SFTP_USER = "ddsftp"


def ensure_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a throwaway system user, created when missing (root only)."""
    if os.geteuid() != 0:
        pytest.fail("the SMB and SFTP tests start smbd and sshd and must run as root (as CI does)")
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} did not start: {log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.1)


def children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(d.name))
    return out


def tree(pid: int) -> set[int]:
    """Every descendant of pid."""
    out, todo = set(), [pid]
    while todo:
        kids = children(todo.pop())
        out |= kids
        todo.extend(kids)
    return out


def mount_tmpfs(path: Path, size: str, owner: tuple[int, int]) -> None:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    os.chown(path, *owner)


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False)


class Server:
    """A daemon whose per-connection children can be killed, and which can be stopped and started."""

    name = "server"

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix=f"dd-{self.name}-"))
        self.base.chmod(0o711)
        self.port = free_port()
        self.log = self.base / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # a session of its own: smbd signals its whole process group when it stops
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # fmt: skip
        wait_port(self.port, self.proc, self.name, self.log)

    def connection_children(self) -> set[int]:
        """The processes serving client connections: those of the server's tree that hold an established
        TCP socket on its port (smbd forks one per connection, sshd a monitor and a child per session)."""
        assert self.proc is not None
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    f = line.split()
                    if int(f[1].rsplit(":", 1)[1], 16) == self.port and f[3] == "01":  # ESTABLISHED
                        inodes.add(f"socket:[{f[9]}]")
        out = set()
        for pid in tree(self.proc.pid):
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    out.add(pid)
        return out

    def kill_connections(self) -> int:
        n = 0
        for pid in self.connection_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                n += 1
        return n

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            pids = tree(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        for m in self.mounts():
            umount(m)
        shutil.rmtree(self.base, ignore_errors=True)

    def mounts(self) -> list[Path]:
        text = Path("/proc/self/mounts").read_text()
        return [Path(line.split()[1]) for line in text.splitlines() if line.split()[1].startswith(str(self.base))]


class SambaServer(Server):
    """smbd in the foreground with one share ("share", owned by ddsmb) and a second ("small") whose
    folder a test may turn into a small tmpfs; the password of ddsmb lives in a private passdb."""

    name = "smbd"

    def __init__(self) -> None:
        super().__init__()
        self.bin = require_tool("smbd")
        smbpasswd = require_tool("smbpasswd")
        self.owner = ensure_user(SMB_USER)
        self.user = SMB_USER
        self.password = "pw-" + secrets.token_urlsafe(18)
        self.password_file = self.base / "smb.password"
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        for d in ("state", "lock", "pid", "private", "cache", "ncalrpc", "binddns"):
            (self.base / d).mkdir(mode=0o700)
        self.share = self.base / "share"
        self.small = self.base / "small"
        for d in (self.share, self.small):
            d.mkdir(mode=0o700)
            os.chown(d, *self.owner)
        b = self.base
        self.conf = b / "smb.conf"
        self.conf.write_text(f"""[global]
  server role = standalone server
  smb ports = {self.port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  state directory = {b}/state
  lock directory = {b}/lock
  pid directory = {b}/pid
  private dir = {b}/private
  cache directory = {b}/cache
  ncalrpc dir = {b}/ncalrpc
  binddns dir = {b}/binddns
  passdb backend = tdbsam:{b}/private/passdb.tdb
  log file = {b}/smbd.log
  log level = 1
  disable netbios = yes
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
  map to guest = never
  server min protocol = SMB2_02
  server smb encrypt = desired
[share]
  path = {self.share}
  read only = no
  valid users = {SMB_USER}
[small]
  path = {self.small}
  read only = no
  valid users = {SMB_USER}
""")
        subprocess.run([smbpasswd, "-c", str(self.conf), "-a", "-s", SMB_USER],
                       input=f"{self.password}\n{self.password}\n", text=True, check=True, capture_output=True)  # fmt: skip

    def argv(self) -> list[str]:
        return [self.bin, "--foreground", "--no-process-group", "-s", str(self.conf), "--debug-stdout"]

    def url(self, share: str = "share", path: str = "") -> str:
        return f"smb://{SMB_USER}@127.0.0.1:{self.port}/{share}/{path}".rstrip("/")


class SSHServer(Server):
    """sshd in the foreground, SFTP only (internal-sftp), key login of ddsftp only; a throwaway host key
    and client key made by ssh-keygen."""

    name = "sshd"

    def __init__(self) -> None:
        super().__init__()
        self.bin = require_tool("sshd")
        self.keygen = require_tool("ssh-keygen")
        self.owner = ensure_user(SFTP_USER)
        self.user = SFTP_USER
        subprocess.run(["usermod", "-p", "*", SFTP_USER], check=True)  # no password, but not a locked account
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.host_key = self.base / "host_ed25519"
        self.new_host_key()
        self.identity = self.base / "client_ed25519"
        subprocess.run([self.keygen, "-q", "-t", "ed25519", "-N", "", "-C", "deltadump-test", "-f", str(self.identity)],
                       check=True)  # fmt: skip
        auth = self.base / "authorized_keys"
        auth.write_text((self.base / "client_ed25519.pub").read_text())
        auth.chmod(0o644)
        self.root = self.base / "data"
        self.small = self.base / "small"
        for d in (self.root, self.small):
            d.mkdir(mode=0o700)
            os.chown(d, *self.owner)
        self.known_hosts = self.base / "known_hosts"
        self.conf = self.base / "sshd_config"
        self.conf.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.base}/sshd.pid
AuthorizedKeysFile {auth}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers {SFTP_USER}
Subsystem sftp internal-sftp
ForceCommand internal-sftp
MaxStartups 50
LogLevel VERBOSE
""")

    def new_host_key(self, kind: str = "ed25519") -> None:
        for p in (self.host_key, self.host_key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run([self.keygen, "-q", "-t", kind, "-N", "", "-f", str(self.host_key)], check=True)

    def trust(self) -> None:
        """Write the host key into the test's known_hosts file (what `deltadump trust-host` does)."""
        key = (self.base / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n")

    def argv(self) -> list[str]:
        return [self.bin, "-D", "-e", "-f", str(self.conf)]

    def url(self, path: Path | None = None) -> str:
        return f"sftp://{SFTP_USER}@127.0.0.1:{self.port}{path or self.root}"

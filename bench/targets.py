#!/usr/bin/env python3
"""Benchmark: upload throughput of deltadump's SMB and SFTP targets against `smbclient put` and
`sftp put` of the same file, over loopback, in the same run.

Starts the tests' own servers (tests/servers.py: Samba's smbd and OpenSSH's sshd on loopback high
ports, throwaway users and keys; needs root), writes one file of random bytes, then uploads it with
each tool in turn, interleaved, --repeat times; each figure is the best run (this machine is shared
and noisy). deltadump's put is the whole put: read, sha256 while sending, temporary name, rename.
smbclient runs with encryption required (`--client-protection=encrypt`), as deltadump's SMB target
does by default; its credentials go through an authentication file, never argv.

    python bench/targets.py [--size-mb 500] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import SambaServer, SSHServer  # noqa: E402

from deltadump.targets import TargetOptions, open_target  # noqa: E402


def timed(fn: Callable[[], None], cleanup: Callable[[], None]) -> float:
    """Seconds one upload takes, after removing what the previous one left."""
    cleanup()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-targets-", dir=args.workdir))
    src = work / "base.bin"
    size = args.size_mb << 20
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for _ in range(args.size_mb):
            block = os.urandom(1 << 20)
            h.update(block)
            f.write(block)
    sha = h.hexdigest()
    smb, ssh = SambaServer(), SSHServer()
    try:
        smb.start()
        ssh.trust()
        ssh.start()
        auth = work / "smb.auth"  # smbclient's authentication file (never the password on argv)
        auth.write_text(f"username = {smb.user}\npassword = {smb.password}\n")
        auth.chmod(0o600)
        smb_t = open_target(smb.url("share", "dd"), options=TargetOptions(password_file=str(smb.password_file)))
        sftp_t = open_target(ssh.url(ssh.root / "dd"),
                             options=TargetOptions(identity=str(ssh.identity), known_hosts=str(ssh.known_hosts)))  # fmt: skip
        smbclient = [
            "smbclient", "//127.0.0.1/share", "-p", str(smb.port), "-A", str(auth),
            "--client-protection=encrypt", "-c", f"put {src} ref.bin",
        ]  # fmt: skip
        batch = work / "sftp.batch"
        batch.write_text(f"put {src} {ssh.root}/ref.bin\n")
        sftp = [
            "sftp", "-q", "-b", str(batch), "-P", str(ssh.port), "-i", str(ssh.identity),
            "-o", f"UserKnownHostsFile={ssh.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", f"{ssh.user}@127.0.0.1",
        ]  # fmt: skip

        def run(cmd: list[str]) -> Callable[[], None]:
            return lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

        def rm(path: Path) -> Callable[[], None]:
            return lambda: path.unlink(missing_ok=True)

        cases: dict[str, tuple[Callable[[], None], Callable[[], None], Path]] = {
            "deltadump smb": (lambda: smb_t.put("chain/base.bin", src, sha), rm(smb.share / "dd/chain/base.bin"),
                              smb.share / "dd/chain/base.bin"),
            "smbclient put": (run(smbclient), rm(smb.share / "ref.bin"), smb.share / "ref.bin"),
            "deltadump sftp": (lambda: sftp_t.put("chain/base.bin", src, sha), rm(ssh.root / "dd/chain/base.bin"),
                               ssh.root / "dd/chain/base.bin"),
            "sftp put": (run(sftp), rm(ssh.root / "ref.bin"), ssh.root / "ref.bin"),
        }  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeat):
            for name, (fn, cleanup, result) in cases.items():
                times[name].append(timed(fn, cleanup))
                assert result.stat().st_size == size, (name, result.stat().st_size)
        mb = size / 1e6
        print(f"upload of a {args.size_mb} MiB file over loopback, best of {args.repeat} (all runs in seconds)")
        print(f"{'':16} {'MB/s':>8} {'best s':>8}  runs")
        for name, ts in times.items():
            print(f"{name:16} {mb / min(ts):8.1f} {min(ts):8.2f}  {' '.join(f'{t:.2f}' for t in ts)}")
        print(f"deltadump smb / smbclient put: {min(times['smbclient put']) / min(times['deltadump smb']):.2f}x "
              f"the throughput")  # fmt: skip
        print(f"deltadump sftp / sftp put:     {min(times['sftp put']) / min(times['deltadump sftp']):.2f}x "
              f"the throughput")  # fmt: skip
    finally:
        smb.remove()
        ssh.remove()
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`deltadump rdiff` / `deltadump-rdiff`: a stand-in for librsync 2.3.2's `rdiff` command.

Same options (popt syntax, permuted), defaults, messages and exit codes as Debian's rdiff 2.3.2
(spec section 7). One deliberate difference: an output file appears under its name only when it is
complete (written under a temporary name and renamed), so a failure never leaves a partial file.
"""

from __future__ import annotations

import sys
import time

from ..errors import RsyncError

TYPE_CHECKING = False  # no typing import at run time: this command starts fast
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

SYNTAX = 101

HELP = """\
Usage: rdiff [OPTIONS] signature [BASIS [SIGNATURE]]
             [OPTIONS] delta SIGNATURE [NEWFILE [DELTA]]
             [OPTIONS] patch BASIS [DELTA [NEWFILE]]

Options:
  -v, --verbose             Trace internal processing
  -V, --version             Show program version
  -?, --help                Show this help message
  -s, --statistics          Show performance statistics
  -f, --force               Force overwriting existing files
Signature generation options:
  -H, --hash=ALG            Hash algorithm: blake2 (default), md4
  -R, --rollsum=ALG         Rollsum algorithm: rabinkarp (default), rollsum
Delta-encoding options:
  -b, --block-size=BYTES    Signature block size, 0 (default) for recommended
  -S, --sum-size=BYTES      Signature strength, 0 (default) for max, -1 for min
IO options:
  -I, --input-size=BYTES    Input buffer size
  -O, --output-size=BYTES   Output buffer size
"""

VERSION = """\
rdiff (librsync 2.3.2) [deltadump engine]
Copyright (C) 1997-2016 by Martin Pool, Andrew Tridgell and others.
http://librsync.sourcefrog.net/
Capabilities: 64 bit files, trace disabled

librsync comes with NO WARRANTY, to the extent permitted by law.
You may redistribute copies of librsync under the terms of the GNU
Lesser General Public License.  For more information about these
matters, see the files named COPYING.
"""

FLAGS = {"v": "verbose", "V": "version", "?": "help", "h": "help", "s": "stats", "f": "force"}
WITH_ARG = {"b": "block", "S": "sum", "H": "hash", "R": "rollsum", "I": "isize", "O": "osize"}
LONG = {
    "verbose": "verbose",
    "version": "version",
    "help": "help",
    "statistics": "stats",
    "stats": "stats",
    "force": "force",
    "block-size": "block",
    "sum-size": "sum",
    "hash": "hash",
    "rollsum": "rollsum",
    "input-size": "isize",
    "output-size": "osize",
}
NUMERIC = {"block", "sum", "isize", "osize"}


class Usage(Exception):
    pass


class Options:
    def __init__(self) -> None:
        self.verbose = self.version = self.help = self.stats = self.force = False
        self.block = self.sum = self.isize = self.osize = 0
        self.hash = "blake2"
        self.rollsum = "rabinkarp"
        self.args: list[str] = []


def _set(opts: Options, name: str, value: str | None) -> None:
    if value is None:
        setattr(opts, name, True)
        return
    if name in NUMERIC:
        try:
            n = int(value, 0) if value.strip().lower().startswith(("0x", "-0x")) else int(value)
        except ValueError:
            raise Usage(f"invalid numeric value: {value}") from None
        if not -(1 << 31) <= n < 1 << 31:
            raise Usage(f"number too large or too small: {value}")
        setattr(opts, name, n)
    else:
        setattr(opts, name, value)


def parse(argv: list[str]) -> Options:
    """popt-style parsing: options anywhere, `-b2048`, `-b 2048`, `--block-size[=]2048`, `--`."""
    opts = Options()
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            opts.args.extend(argv[i:])
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            key = LONG.get(name)
            if key is None:
                raise Usage(f"unknown option: {a}")
            if key in WITH_ARG.values():
                if not eq:
                    if i >= len(argv):
                        raise Usage(f"missing argument: {a}")
                    val = argv[i]
                    i += 1
                _set(opts, key, val)
            else:
                _set(opts, key, None)
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                c = a[j]
                if c in FLAGS:
                    _set(opts, FLAGS[c], None)
                    j += 1
                elif c in WITH_ARG:
                    val = a[j + 1 :]
                    if not val:
                        if i >= len(argv):
                            raise Usage(f"missing argument: -{c}")
                        val = argv[i]
                        i += 1
                    _set(opts, WITH_ARG[c], val)
                    break
                else:
                    raise Usage(f"unknown option: -{c}")
        else:
            opts.args.append(a)
    return opts


def _action(word: str) -> str:
    for act in ("signature", "delta", "patch"):
        if act.startswith(word):
            return act
    raise Usage("You must specify an action: `signature', `delta', or `patch'.")


def _stats_line(op: str, st: object, seconds: float, in_bytes: int, out_bytes: int) -> str:
    parts = [f"librsync: {op} statistics: "]
    lc = getattr(st, "literal_cmds", 0)
    cc = getattr(st, "copy_cmds", 0)
    if lc:
        parts.append(
            f"literal[{lc} cmds, {st.literal_bytes} bytes, {getattr(st, 'literal_cmdbytes', 0)} cmdbytes] "  # type: ignore[attr-defined]
        )
    if cc:
        parts.append(
            f"copy[{cc} cmds, {st.copy_bytes} bytes, {getattr(st, 'copy_cmdbytes', 0)} cmdbytes, 0 false]"  # type: ignore[attr-defined]
        )
    if op == "signature":
        parts.append(f"signature[{st.blocks} blocks, {st.block_len} bytes per block]")  # type: ignore[attr-defined]
    sec = max(1, int(seconds))
    parts.append(
        f" speed[{in_bytes / 1e6:.1f} MB ({in_bytes / 1e6 / sec:.1f} MB/s) in, "
        f"{out_bytes / 1e6:.1f} MB ({out_bytes / 1e6 / sec:.1f} MB/s) out, {sec} sec]"
    )
    return "".join(parts)


def run(argv: list[str], stdin: BinaryIO, stdout: BinaryIO, stderr: TextIO) -> int:
    try:
        opts = parse(argv)
        if opts.help:
            stdout.write(HELP.encode())
            return 0
        if opts.version:
            stdout.write(VERSION.encode())
            return 0
        if opts.verbose:
            stderr.write("rdiff: Library does not support trace.\n")
        if not opts.args:
            raise Usage("You must specify an action: `signature', `delta', or `patch'.")
        act = _action(opts.args[0])
        files = opts.args[1:]
        if act == "delta" and not files:
            raise Usage("Usage for delta: rdiff [OPTIONS] delta SIGNATURE [NEWFILE [DELTA]]")
        if act == "patch" and not files:
            raise Usage("Usage for patch: rdiff [OPTIONS] patch BASIS [DELTA [NEW]]")
        if len(files) > (2 if act == "signature" else 3):
            raise Usage("Too many arguments.")
        if act == "signature":
            if opts.hash not in ("blake2", "md4"):
                raise Usage(f"Unknown hash algorithm '{opts.hash}'.")
            if opts.rollsum not in ("rabinkarp", "rollsum"):
                raise Usage(f"Unknown rollsum algorithm '{opts.rollsum}'.")
    except Usage as exc:
        stderr.write(f"rdiff: {exc}\n\nTry `rdiff --help' for more information.\n")
        return SYNTAX

    def inp(k: int) -> str | BinaryIO:
        return files[k] if len(files) > k and files[k] != "-" else stdin

    def out(k: int) -> str | BinaryIO:
        return files[k] if len(files) > k and files[k] != "-" else stdout

    t0 = time.perf_counter()
    try:
        if act == "signature":
            from ..rsync.signer import signature

            st = signature(
                inp(0),
                out(1),
                block_len=opts.block,
                strong_len=opts.sum,
                weak=opts.rollsum,
                strong=opts.hash,
                force=opts.force,
                durable=False,
            )
            if st.warning:
                stderr.write(f"librsync: Warning: {st.warning}\n")
            if opts.stats:
                stderr.write(_stats_line("signature", st, st.seconds, st.in_bytes, st.out_bytes) + "\n")
        elif act == "delta":
            from ..rsync.differ import delta

            if inp(0) is stdin and inp(1) is stdin:
                raise RsyncError(RsyncError.RS_IO_ERROR, "signature and new file cannot both be stdin", job="delta")
            dst = delta(inp(0), inp(1), out(2), force=opts.force, durable=False, input_size=max(0, opts.isize))
            if opts.stats:
                stderr.write(_stats_line("delta", dst, dst.seconds, dst.in_bytes, dst.out_bytes) + "\n")
        else:
            from ..rsync.patcher import patch

            pst = patch(inp(0), inp(1), out(2), force=opts.force, durable=False)
            if opts.stats:
                stderr.write(_stats_line("patch", pst, pst.seconds, pst.in_bytes, pst.out_bytes) + "\n")
    except RsyncError as exc:
        if exc.librsync_detail:
            stderr.write(f"librsync: ERROR: {exc.librsync_detail}\n")
        if exc.tail:
            reason = RsyncError.REASONS.get(exc.rs_code, "unexplained problem")
            if exc.job:
                stderr.write(f"librsync: ERROR: (rs_job_complete) {exc.job} job failed: {reason}\n")
            stderr.write(f"rdiff: Failed, {reason}.\n")
        return exc.rs_code
    except BrokenPipeError:
        return RsyncError.RS_IO_ERROR
    except KeyboardInterrupt:
        stderr.write("rdiff: interrupted\n")
        return 130
    del t0
    return 0


def main(argv: list[str] | None = None) -> None:
    code = run(sys.argv[1:] if argv is None else argv, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or RsyncError.RS_IO_ERROR
    sys.exit(code)


if __name__ == "__main__":
    main()

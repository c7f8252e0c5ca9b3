"""Delta chains in the backup folder: after a dump, store it as a new base or as a delta against
the previous backup (or the base), zstd-compressed; reconstruct any chained backup's dump, checking
the sha256 of the basis before and of the result after every patch.

Local layout under dest/chain/: <id>.base.zst, <id>.delta.zst (decompressed: a valid rdiff delta),
<id>.sig (rdiff signature of that backup's dump, local only: the next delta is made against it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..config import Config
from ..errors import IntegrityError, RsyncError
from ..fsio import BackgroundHash, atomic_write, tmp_name
from ..rsync import delta as rs_delta
from ..rsync import signature as rs_signature
from ..store import manifest
from ..store.chain import Basis, chain_of, next_basis
from ..store.manifest import BackupRecord, FileRecord
from .common import Reporter

CHAIN_DIR = "chain"
ZSTD_LEVEL = 3  # bases: fast, multi-threaded
DELTA_ZSTD_LEVEL = 19  # deltas are small: squeeze them, they are what crosses the network every day


def zstd_file(src: Path, dst: Path, level: int = ZSTD_LEVEL) -> FileRecord:
    """Compress src into dst durably; returns dst's record (path relative to dst's grandparent)."""
    size = src.stat().st_size
    # threads only for big inputs (each thread has its own tables); the size lets zstd scale them
    cctx = zstandard.ZstdCompressor(level=level, threads=-1 if size > 64 << 20 else 0, write_checksum=True)
    with atomic_write(dst) as out, open(src, "rb") as f:
        writer = cctx.stream_writer(out, size=size, closefd=False)  # type: ignore[arg-type]
        while chunk := f.read(4 << 20):
            writer.write(chunk)
        writer.flush(zstandard.FLUSH_FRAME)
    return FileRecord(path=f"{CHAIN_DIR}/{dst.name}", size=out.size, sha256=out.sha256.hexdigest())


class _HashingReader:
    """A file wrapper that hashes what is read through it, in the background."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha256 = BackgroundHash()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.sha256.update(data)
        return data


def unzstd_file(src: Path, dst: Path, want_src_sha256: str | None = None, hash_output: bool = True) -> str:
    """Decompress src into dst (a scratch file: not fsynced); returns the sha256 of the output. With
    want_src_sha256, src is checked in the same read, and dst removed if it does not match."""
    dctx = zstandard.ZstdDecompressor()
    try:
        with atomic_write(dst, durable=False, hashing=hash_output) as out, open(src, "rb") as f:
            hr = _HashingReader(f)
            if hash_output:
                with dctx.stream_reader(hr, read_across_frames=True) as r:  # type: ignore[arg-type]
                    while chunk := r.read(4 << 20):
                        out.write(chunk)
            else:  # zstd's own copy loop, in C
                dctx.copy_stream(hr, out.file, read_size=4 << 20, write_size=4 << 20)
            while hr.read(1 << 20):  # hash any bytes after the last frame too
                pass
            if want_src_sha256 is not None and hr.sha256.hexdigest() != want_src_sha256:
                raise IntegrityError(f"{src.name} is corrupt: sha256 mismatch")
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{src.name} is corrupt (zstd: {exc})") from exc
    return out.sha256.hexdigest()


def make_chain_objects(
    cfg: Config, dest: Path, rec: BackupRecord, dump: Path, dump_sha256: str, rep: Reporter
) -> Basis:
    """Store `dump` (rec's uncompressed dump) as a base or a delta; fill rec's chain fields."""
    d = cfg.delta
    chain_dir = dest / CHAIN_DIR
    chain_dir.mkdir(exist_ok=True)
    m = manifest.load(dest)
    basis = next_basis(m, d.mode, d.rebase_ratio, d.max_chain)
    sig_of_basis = chain_dir / f"{basis.record.id}.sig" if basis.record else None
    if sig_of_basis is not None and not sig_of_basis.exists():
        basis = Basis(None, f"signature of {basis.record.id if basis.record else '?'} missing: a new base")
        sig_of_basis = None
    rec.dump_sha256 = dump_sha256
    rec.dump_size = dump.stat().st_size
    if basis.record is None or sig_of_basis is None:
        rep.info(basis.reason)
        rec.kind, rec.base, rec.parent = "base", rec.id, None
        rec.objects = [zstd_file(dump, chain_dir / f"{rec.id}.base.zst")]
    else:
        b = basis.record
        rec.kind, rec.base, rec.parent = "delta", b.base, b.id
        raw = chain_dir / tmp_name(Path(f"{rec.id}.delta")).name
        basis_dump = dest / b.path if b.current else None
        if basis_dump is not None and not (basis_dump.is_file() and sha256_of(basis_dump) == b.dump_sha256):
            basis_dump = None  # only a basis proven to be the signature's own may lend its bytes
        try:
            st = rs_delta(sig_of_basis, dump, raw, basis=basis_dump)
            rep.info(f"delta against {b.id}: {st.literal_bytes / 1e6:.2f} MB new data, {st.copy_cmds} copies")
            level = DELTA_ZSTD_LEVEL if raw.stat().st_size < 64 << 20 else ZSTD_LEVEL
            rec.objects = [zstd_file(raw, chain_dir / f"{rec.id}.delta.zst", level)]
        finally:
            with contextlib.suppress(FileNotFoundError):
                raw.unlink()
    # the signature the next delta is made against (incremental: this dump; differential: the base)
    if rec.kind == "base" or d.mode == "incremental":
        rs_signature(dump, chain_dir / f"{rec.id}.sig", block_len=d.effective_block_len)
    return basis


def prune_signatures(dest: Path, mode: str, m: manifest.Manifest) -> None:
    """Keep only the signatures a future delta can be made against."""
    chained = [b for b in m.backups if b.in_chain and not b.pruned]
    keep = set()
    if chained:
        last = chained[-1]
        keep.add(last.id if mode == "incremental" else (last.base or last.id))
    for p in (dest / CHAIN_DIR).glob("*.sig"):
        if p.stem not in keep:
            p.unlink(missing_ok=True)


Fetch = Callable[[FileRecord, Path], None]  # bring one object to a local path (checked by the caller)


def reconstruct(m: manifest.Manifest, rec: BackupRecord, fetch: Fetch, work: Path, rep: Reporter) -> Path:
    """Rebuild rec's dump in `work` from its chain. Every object's sha256 is checked as it arrives,
    the base's dump after decompression, and the result, written once from the composed deltas,
    against rec's dump_sha256 before anything reads it. Returns the dump's path."""
    from ..rsync.compose import compose, write

    try:
        chain = chain_of(m, rec)
    except ValueError as exc:
        raise IntegrityError(f"cannot reconstruct {rec.id}: {exc}") from exc
    work.mkdir(parents=True, exist_ok=True)
    raws: list[Path] = []
    base_dump = work / "base.dump"
    for i, b in enumerate(chain):
        if not b.objects:
            raise IntegrityError(f"backup {b.id} (needed by {rec.id}) has no stored objects")
        obj = b.objects[0]
        local = work / Path(obj.path).name
        fetch(obj, local)
        try:
            if i == 0:
                if b.kind != "base":
                    raise IntegrityError(f"{b.id} is not a base")
                got = unzstd_file(local, base_dump, obj.sha256, hash_output=len(chain) == 1)
                # with deltas to follow, the final dump's sha256 (checked below) covers the base too
                if len(chain) == 1 and got != b.dump_sha256:
                    raise IntegrityError(f"{obj.path} does not decompress to its recorded dump")
            else:
                raw = work / f"delta-{i}"
                unzstd_file(local, raw, obj.sha256, hash_output=False)
                raws.append(raw)
        except IntegrityError as exc:
            raise IntegrityError(f"{obj.path} is corrupt: {exc.message} (needed by backup {rec.id})") from exc
        local.unlink()
    if not raws:
        return base_dump
    rep.info(f"applying {len(raws)} delta(s) to base {chain[0].id}")
    out = work / "dump"
    try:
        plan = compose(base_dump.stat().st_size, raws)
        write(plan, base_dump, raws, out)
    except RsyncError as exc:
        raise IntegrityError(f"the delta chain of {rec.id} does not apply: {exc}") from exc
    if sha256_of(out) != rec.dump_sha256:
        raise IntegrityError(f"reconstructed dump of {rec.id} does not match its recorded sha256")
    for p in [*raws, base_dump]:
        p.unlink()
    return out


def sha256_of(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def local_fetch(dest: Path) -> Fetch:
    def fetch(obj: FileRecord, to: Path) -> None:
        src = dest / obj.path
        if not src.exists():
            raise IntegrityError(f"{src} is missing")
        shutil.copyfile(src, to)
        os.chmod(to, 0o600)

    return fetch

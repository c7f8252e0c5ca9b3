"""Delta chains in the backup folder: after a dump, store it as a new base or as a delta against
the previous backup (or the base), zstd-compressed; reconstruct any chained backup's dump in one
pass (its deltas composed, the base streamed into place), every object's sha256 checked on the way
and the result's against the recorded dump_sha256.

Local layout under dest/chain/: <id>.base.zst, <id>.delta.zst (decompressed: a valid rdiff delta),
<id>.sig (rdiff signature of that backup's dump, local only: the next delta is made against it).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..config import Config
from ..errors import IntegrityError, RsyncError
from ..fsio import atomic_write, sha256_file, storage_error, tmp_name
from ..rsync import bounded_sig_params
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
    """A file wrapper that hashes what is read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha256.update(data)
        return data


def unzstd_file(src: Path, dst: Path, want_src_sha256: str) -> None:
    """Decompress src into dst (a scratch file: not fsynced), checking src's sha256 in the same read;
    dst is removed if it does not match."""
    try:
        with atomic_write(dst, durable=False, hashing=False) as out, open(src, "rb") as f:
            hr = _HashingReader(f)
            zstandard.ZstdDecompressor().copy_stream(hr, out.file, read_size=4 << 20, write_size=4 << 20)  # type: ignore[arg-type]
            while hr.read(1 << 20):  # hash any bytes after the last frame too
                pass
            if hr.sha256.hexdigest() != want_src_sha256:
                raise IntegrityError(f"{src.name} is corrupt: sha256 mismatch")
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{src.name} is corrupt (zstd: {exc})") from exc


def unzstd_pieces(src: Path, chunk: int, depth: int = 3) -> Generator[memoryview, None, None]:
    """src decompressed, as consecutive pieces of `chunk` bytes (the last shorter): decompressed on
    another core into a few reused buffers (bounded memory), each valid until the next is asked for.
    IntegrityError if zstd finds it damaged (its sha256 is the caller's to check)."""
    free: queue.Queue[bytearray] = queue.Queue()
    full: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue()
    stop = threading.Event()
    for _ in range(depth):
        free.put(bytearray(chunk))

    def produce() -> None:
        try:
            with open(src, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r:
                while not stop.is_set():
                    buf = free.get()
                    view, n = memoryview(buf), 0
                    while n < chunk and (got := r.readinto(view[n:])):
                        n += got
                    full.put((buf, n))
                    if n < chunk:
                        return
        except zstandard.ZstdError as exc:
            full.put(IntegrityError(f"{src.name} is corrupt (zstd: {exc})"))
        except BaseException as exc:  # handed to the consumer
            full.put(exc)

    t = threading.Thread(target=produce, name="unzstd", daemon=True)
    t.start()
    try:
        while True:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            yield memoryview(buf)[:n]
            free.put(buf)
            if n < chunk:
                return
    finally:
        stop.set()
        free.put(bytearray(chunk))  # wakes a producer waiting for a buffer
        t.join()


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
        if basis_dump is not None and not (basis_dump.is_file() and sha256_file(basis_dump)[1] == b.dump_sha256):
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
        bl, sl = bounded_sig_params(rec.dump_size, d.effective_block_len)  # bounded memory at any size
        rs_signature(dump, chain_dir / f"{rec.id}.sig", block_len=bl, strong_len=sl)
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


# one object as a readable local file (checked by the caller): written to the scratch path given, or,
# when the object already is a local file, that file, read in place (never to be removed)
Fetch = Callable[[FileRecord, Path], Path]


def reconstruct(m: manifest.Manifest, rec: BackupRecord, fetch: Fetch, work: Path, rep: Reporter) -> Path:
    """Rebuild rec's dump in `work` from its chain. Every object's sha256 is checked as it arrives;
    the deltas are composed into one map first, then the base is decompressed on another core and
    streamed straight into its places in the output (it never exists as a file), and the result is
    checked against rec's dump_sha256 before anything reads it. Returns the dump's path."""
    from ..rsync.compose import CHUNK, compose, write

    try:
        chain = chain_of(m, rec)
    except ValueError as exc:
        raise IntegrityError(f"cannot reconstruct {rec.id}: {exc}") from exc
    work.mkdir(parents=True, exist_ok=True)
    for b in chain:
        if not b.objects:
            raise IntegrityError(f"backup {b.id} (needed by {rec.id}) has no stored objects")
    base, deltas = chain[0], chain[1:]
    if base.kind != "base":
        raise IntegrityError(f"{base.id} is not a base")
    base_obj = base.objects[0]
    base_zst = fetch(base_obj, work / Path(base_obj.path).name)
    out = work / "dump"
    raws = [work / f"delta-{i}" for i in range(1, len(deltas) + 1)]

    def unpack(obj: FileRecord, raw: Path) -> Path:
        local = fetch(obj, work / Path(obj.path).name)
        try:
            unzstd_file(local, raw, obj.sha256)
        except IntegrityError as exc:
            raise IntegrityError(f"{obj.path} is corrupt: {exc.message} (needed by backup {rec.id})") from exc
        except FileNotFoundError as exc:
            raise IntegrityError(f"{local} is missing (needed by backup {rec.id})") from exc
        _remove_scratch(local, work)
        return raw

    if raws:
        rep.info(f"applying {len(raws)} delta(s) to base {base.id}")
    with ThreadPoolExecutor(2, thread_name_prefix="fetch") as pool:
        # on the other core: check the base, bring and unpack the deltas, while this one composes
        # each delta as soon as it is there
        base_sha = pool.submit(lambda: sha256_file(base_zst)[1])
        ready = [pool.submit(unpack, b.objects[0], raw) for b, raw in zip(deltas, raws, strict=True)]
        try:
            plan = compose(base.dump_size, (f.result() for f in ready))
            if base_sha.result() != base_obj.sha256:
                raise IntegrityError(f"{base_obj.path} is corrupt: sha256 mismatch (needed by backup {rec.id})")
        except RsyncError as exc:
            raise IntegrityError(f"the delta chain of {rec.id} does not apply: {exc}") from exc
        except OSError as exc:  # an object that cannot be read, a full disk for the unpacked deltas
            raise storage_error(exc, Path(exc.filename or work), "reading or unpacking") from exc
        finally:
            for f in ready:
                f.cancel()
    pieces = unzstd_pieces(base_zst, CHUNK)
    try:
        written = write(plan, pieces, raws, out)
    except (RsyncError, IntegrityError) as exc:
        msg = exc.message if isinstance(exc, IntegrityError) else str(exc)
        raise IntegrityError(f"{base_obj.path} does not decompress to its recorded dump: {msg}") from exc
    except OSError as exc:  # e.g. the disk holding the work folder is full
        raise storage_error(exc, out, "writing") from exc
    finally:
        pieces.close()  # stops the decompressing thread at once if the write stopped early
    if written.base_bytes != base.dump_size:
        raise IntegrityError(f"{base_obj.path} decompresses to {written.base_bytes} bytes, not {base.dump_size}")
    if written.sha256 != rec.dump_sha256:
        raise IntegrityError(f"reconstructed dump of {rec.id} does not match its recorded sha256")
    for p in [*raws, base_zst]:
        _remove_scratch(p, work)
    return out


def _remove_scratch(p: Path, work: Path) -> None:
    if p.is_relative_to(work):  # not an object read in place
        p.unlink()


def local_fetch(dest: Path) -> Fetch:
    def fetch(obj: FileRecord, scratch: Path) -> Path:
        src = dest / obj.path
        if not src.is_file():
            raise IntegrityError(f"{src} is missing")
        return src

    return fetch

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
import os
import queue
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zstandard

from ..config import Config
from ..errors import IntegrityError, RsyncError
from ..fsio import atomic_write, checkpoint, make_dirs, open_regular, sha256_file, storage_error, tmp_name
from ..naming import check_relpath
from ..rsync import bounded_sig_params, load_signature
from ..rsync import delta as rs_delta
from ..rsync import signature as rs_signature
from ..store.chain import Basis, by_series, chain_of, next_basis
from ..store.records import BackupRecord, DirFile, FileRecord, ObjectRecord
from ..store.repository import current_slots
from .common import Reporter

CHAIN_DIR = "chain"
ZSTD_LEVEL = 3  # bases: fast, multi-threaded
DELTA_ZSTD_LEVEL = 19  # deltas are small: squeeze them, they are what crosses the network every day


def zstd_file(dest: Path, src: Path, rel: str, level: int = ZSTD_LEVEL, raw_size: int | None = None) -> ObjectRecord:
    """Compress src into the backup folder's object `rel` (chain/...) durably; returns its record."""
    dst = dest / check_relpath(rel, (f"{CHAIN_DIR}/",))
    make_dirs(dst.parent)
    size = src.stat().st_size
    # threads only for big inputs (each thread has its own tables); the size lets zstd scale them
    cctx = zstandard.ZstdCompressor(level=level, threads=-1 if size > 64 << 20 else 0, write_checksum=True)
    with atomic_write(dst) as out, open(src, "rb") as f:
        writer = cctx.stream_writer(out, size=size, closefd=False)  # type: ignore[arg-type]
        while chunk := f.read(4 << 20):
            writer.write(chunk)
        writer.flush(zstandard.FLUSH_FRAME)
    return ObjectRecord(path=rel, size=out.size, sha256=out.sha256.hexdigest(), raw_size=raw_size)


def unzstd_checked(src: Path, dst: Path, want_sha256: str, limit: int, size: int) -> None:
    """Decompress src (an object of `size` bytes, read in place: fsio.open_regular) into dst (a scratch
    file: not fsynced), but only once src's sha256 matched: it is hashed first, then decompressed from
    the same open file (what was checked is what is read), and at most `limit` bytes come out (a small
    object never becomes a huge file). dst is removed on failure."""
    try:
        with open_regular(src, size) as f:
            h = hashlib.sha256()
            while chunk := f.read(4 << 20):  # (open_regular's file refuses to read past `size`)
                h.update(chunk)
            if h.hexdigest() != want_sha256:
                raise IntegrityError(f"{src.name} is corrupt: sha256 mismatch")
            f.seek(0)
            with (
                atomic_write(dst, durable=False, hashing=False) as out,
                zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r,
            ):
                n = 0
                while chunk := r.read(4 << 20):
                    n += len(chunk)
                    if n > limit:
                        raise IntegrityError(f"{src.name} decompresses to more than its recorded {limit} bytes")
                    out.write(chunk)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{src.name} is corrupt (zstd: {exc})") from exc


def unzstd_pieces(src: Path, chunk: int, size: int, limit: int, depth: int = 3) -> Generator[memoryview, None, None]:
    """src (an object of `size` bytes, read in place: fsio.open_regular) decompressed, as consecutive
    pieces of `chunk` bytes (the last shorter): decompressed on another core into a few reused buffers
    (bounded memory), each valid until the next is asked for. IntegrityError if zstd finds it damaged,
    if more than `size` bytes are read (src is opened again after its sha256 was checked, which is the
    caller's to check: it may have been swapped or grown since), or if it decompresses to more than
    `limit` bytes (its caller would read every piece before it could tell)."""
    free: queue.Queue[bytearray] = queue.Queue()
    full: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue()
    stop = threading.Event()
    for _ in range(depth):
        free.put(bytearray(chunk))

    def produce() -> None:
        try:
            with (
                open_regular(src, size) as f,
                zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r,
            ):
                out = 0
                while not stop.is_set():
                    buf = free.get()
                    view, n = memoryview(buf), 0
                    while n < chunk and (got := r.readinto(view[n:])):
                        n += got
                    out += n
                    if out > limit:
                        raise IntegrityError(f"{src.name} decompresses to more than its recorded {limit} bytes")
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


def _chain_dir(dest: Path) -> Path:
    chain_dir = dest / CHAIN_DIR
    if chain_dir.is_symlink():
        raise IntegrityError(f"{chain_dir} is a symbolic link; deltadump's own folders never are")
    make_dirs(chain_dir)
    return chain_dir


def _basis(cfg: Config, backups: list[BackupRecord], *, directory: bool) -> Basis:
    """The chain rules' basis, when it is a dump of the same shape (one file, or a folder of files)."""
    d = cfg.delta
    basis = next_basis(backups, d.mode, d.rebase_ratio, d.max_chain)
    if basis.record is not None and bool(basis.record.dir_files) != directory:
        return Basis(None, "the chain holds dumps of the other format (file or folder): a new base")
    return basis


def delta_with_basis(sig: bytes, new: Path, raw: Path, basis: Path | None, want: tuple[int, str]) -> Any:
    """rdiff delta of `new` against the signature `sig` (its bytes, as they were checked) into `raw`.
    With `basis`, the file the signature should be of (yesterday's dump, or its file of a table),
    matches are confirmed by its bytes; but only the file the signature was made of may lend them (a
    changed or damaged one would make a delta that rebuilds something else, recorded good): it is
    opened once (a regular file, no larger than recorded) and its size and sha256 must be `want` (a size
    of 0: not recorded). It is hashed on another thread, through the descriptor the delta reads (a swap
    of its name changes nothing), while the delta reads it: a basis that is no longer in memory is read
    from the disk once, not twice. A delta made with a basis that proves to be another file is made again
    from the signature alone. Returns the delta's statistics."""
    size, sha = want
    loaded = load_signature(sig)  # (once, from the very bytes: a delta made again uses it too)
    try:
        f = open_regular(basis, size or None) if basis is not None else None
    except (IntegrityError, OSError):
        f = None  # (missing, a link, no regular file, grown: it lends nothing)
    if f is None:
        return rs_delta(loaded, new, raw)
    stop = threading.Event()

    def digest() -> tuple[int, str] | None:
        h, n, fd = hashlib.sha256(), 0, f.fileno()
        while not stop.is_set():
            chunk = os.pread(fd, 4 << 20, n)  # (the delta reads the same descriptor at offsets of its own)
            if not chunk:
                return n, h.hexdigest()
            h.update(chunk)
            n += len(chunk)
            if size and n > size:
                return None
        return None

    err: RsyncError | OSError | None = None
    with f, ThreadPoolExecutor(1, thread_name_prefix="basis-sha256") as pool:
        proof = pool.submit(digest)
        try:
            st = rs_delta(loaded, new, raw, basis=f)
        except (RsyncError, OSError) as exc:  # (a basis cut short, say: decided by its proof)
            err = exc
        except BaseException:
            stop.set()
            raise
        try:
            got = proof.result()
        except OSError:
            got = None
    if got is not None and got[1] == sha and (not size or got[0] == size):
        if err is not None:
            raise err
        return st
    raw.unlink(missing_ok=True)
    return rs_delta(loaded, new, raw)


def make_chain_objects(
    cfg: Config, dest: Path, backups: list[BackupRecord], rec_id: str, dump: Path, dump_sha256: str, rep: Reporter
) -> dict[str, Any]:
    """Store `dump` (the new backup's uncompressed dump) as a base or a delta against the basis the
    chain rules choose among `backups`; returns the record's chain fields."""
    d = cfg.delta
    chain_dir = _chain_dir(dest)
    basis = _basis(cfg, backups, directory=False)
    owners = current_slots(backups)
    out: dict[str, Any] = {}
    sig_of_basis = chain_dir / f"{basis.record.id}.sig" if basis.record else None
    sig_bytes: bytes | None = None
    if basis.record is not None and sig_of_basis is not None:
        want, bid = basis.record.signature, basis.record.id
        if want is None or sig_of_basis.is_symlink() or not sig_of_basis.is_file():
            basis = Basis(None, f"signature of {bid} missing: a new base")
            sig_of_basis = None
        elif (sig_bytes := _read_checked(sig_of_basis, want.size, want.sha256)) is None:
            basis = Basis(None, f"signature of {bid} is damaged: a new base")
            sig_of_basis = None
    out["dump_sha256"] = dump_sha256
    out["dump_size"] = size = dump.stat().st_size
    if basis.record is None or sig_of_basis is None or sig_bytes is None:
        rep.info(basis.reason)
        out.update(kind="base", base=rec_id, parent=None)
        out["objects"] = [zstd_file(dest, dump, f"{CHAIN_DIR}/{rec_id}.base.zst", raw_size=size)]
    else:
        b = basis.record
        out.update(kind="delta", base=b.base, parent=b.id)
        raw = chain_dir / tmp_name(Path(f"{rec_id}.delta")).name
        basis_dump = dest / b.path if owners.get(b.path) is b else None
        try:
            st = delta_with_basis(sig_bytes, dump, raw, basis_dump, (b.dump_size, b.dump_sha256))
            rep.info(f"delta against {b.id}: {st.literal_bytes / 1e6:.2f} MB new data, {st.copy_cmds} copies")
            raw_size = raw.stat().st_size
            level = DELTA_ZSTD_LEVEL if raw_size < 64 << 20 else ZSTD_LEVEL
            out["objects"] = [zstd_file(dest, raw, f"{CHAIN_DIR}/{rec_id}.delta.zst", level, raw_size=raw_size)]
        finally:
            with contextlib.suppress(FileNotFoundError):
                raw.unlink()
    # the signature the next delta is made against (incremental: this dump; differential: the base)
    if out["kind"] == "base" or d.mode == "incremental":
        sig = chain_dir / f"{rec_id}.sig"
        bl, sl = bounded_sig_params(size, d.effective_block_len)  # bounded memory at any size
        rs_signature(dump, sig, block_len=bl, strong_len=sl)
        size, digest = sha256_file(sig)
        out["signature"] = ObjectRecord(path=f"{CHAIN_DIR}/{sig.name}", size=size, sha256=digest)
    return out


SMALL_FILE = 64 << 10  # files below this are stored whole when they change: a delta would save little


def make_dir_chain_objects(
    cfg: Config, dest: Path, backups: list[BackupRecord], rec_id: str, dump: Path, slot: str, files: list[FileRecord],
    keys: dict[str, str], rep: Reporter,
) -> dict[str, Any]:  # fmt: skip
    """Store a directory-format dump (uncompressed), each table's data file as a chain of its own: whole
    (zstd) in a base; in a delta backup, nothing when the file is unchanged (same size and sha256 as the
    parent's file of the same table: no delta work, no upload), an rdiff delta (zstd) against the
    parent's file of the same table (matched by the table's identity, `keys`, not its file number),
    or whole when it is new or small. `files` are named in the slot `slot` (which may have folders of its
    own: %D/..., %y/...). Returns the record's chain fields."""
    d = cfg.delta
    chain_dir = _chain_dir(dest)
    basis = _basis(cfg, backups, directory=True)
    parent = basis.record
    owners = current_slots(backups)
    prev = {f.key: f for f in parent.dir_files} if parent is not None else {}
    prev_slot = dest / parent.path if parent is not None and owners.get(parent.path) is parent else None
    rep.info(basis.reason if parent is None else f"per-table deltas against {parent.id}")
    folder = f"{CHAIN_DIR}/{rec_id}"
    out_files: list[DirFile] = []
    stored = changed = 0
    for f in files:
        name = f.path.removeprefix(f"{slot}/")  # the name inside the dump's folder
        src = dump / name
        key = keys.get(name, f"file:{name}")
        p = prev.get(key)
        sig: ObjectRecord | None = None
        if p is not None and (p.size, p.sha256) == (f.size, f.sha256):
            df = DirFile(name=name, key=key, size=f.size, sha256=f.sha256, how="same", signature=p.signature)
        elif (p is not None and (ps := p.signature) is not None and f.size >= SMALL_FILE
              and (sig_bytes := _read_checked(dest / ps.path, ps.size, ps.sha256))):  # fmt: skip
            raw = chain_dir / tmp_name(Path(f"{rec_id}.{name}.delta")).name
            basis_file = prev_slot / p.name if prev_slot is not None else None
            try:
                delta_with_basis(sig_bytes, src, raw, basis_file, (p.size, p.sha256))
                raw_size = raw.stat().st_size
                obj = zstd_file(dest, raw, f"{folder}/{name}.delta.zst", DELTA_ZSTD_LEVEL if raw_size < 64 << 20
                                else ZSTD_LEVEL, raw_size=raw_size)  # fmt: skip
            finally:
                with contextlib.suppress(FileNotFoundError):
                    raw.unlink()
            df = DirFile(name=name, key=key, size=f.size, sha256=f.sha256, how="delta", object=obj)
            changed += 1
        else:
            obj = zstd_file(dest, src, f"{folder}/{name}.zst", raw_size=f.size)
            df = DirFile(name=name, key=key, size=f.size, sha256=f.sha256, how="whole", object=obj)
            changed += 1
        new_sig = parent is None or d.mode == "incremental"  # differential: the base's signatures serve
        if df.how != "same" and f.size >= SMALL_FILE and new_sig:
            sig_path = f"{folder}/{name}.sig"
            bl, sl = bounded_sig_params(f.size, d.effective_block_len)
            rs_signature(src, dest / sig_path, block_len=bl, strong_len=sl)
            size, digest = sha256_file(dest / sig_path)
            sig = ObjectRecord(path=sig_path, size=size, sha256=digest)
            df = df.model_copy(update={"signature": sig})
        elif df.how != "same" and p is not None and d.mode == "differential":
            df = df.model_copy(update={"signature": p.signature})
        if df.object is not None:
            stored += df.object.size
        out_files.append(df)
    rep.info(f"{changed} of {len(out_files)} files changed; {stored / 1e6:.2f} MB stored")
    tree = hashlib.sha256("".join(f"{x.name}\0{x.sha256}\n" for x in out_files).encode()).hexdigest()
    fields: dict[str, Any] = {"dir_files": out_files, "dump_sha256": tree, "dump_size": sum(x.size for x in out_files)}
    fields["objects"] = [x.object for x in out_files if x.object is not None]
    if parent is None:
        fields.update(kind="base", base=rec_id, parent=None)
    else:
        fields.update(kind="delta", base=parent.base, parent=parent.id)
    return fields


def _read_checked(p: Path, size: int, sha256: str) -> bytes | None:
    """The file p of the backup folder (a signature), read once in place as a regular file no larger
    than recorded, when it is what its record says; else None. Its user takes these bytes, never the
    file again: a writer swapping it after the check cannot give the user another."""
    try:
        with open_regular(p, size) as f:
            data = bytearray()
            while chunk := f.read(4 << 20):
                data += chunk
    except (IntegrityError, FileNotFoundError, NotADirectoryError):
        return None
    return bytes(data) if (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256) else None


def needed_signatures(backups: list[BackupRecord], mode: str) -> dict[str, tuple[ObjectRecord, str]]:
    """The signature files the next delta needs: {path under chain/: (its record, the backup it is of)}."""
    chained = [b for b in backups if b.in_chain]
    if not chained:
        return {}
    last = chained[-1]
    if last.dir_files:
        return {f.signature.path: (f.signature, last.id) for f in last.dir_files if f.signature is not None}
    sig = needed_signature(backups, mode)
    rec = next((b for b in backups if b.id == sig), None)
    return {rec.signature.path: (rec.signature, rec.id)} if rec is not None and rec.signature is not None else {}


def needed_signature(backups: list[BackupRecord], mode: str) -> str | None:
    """The id whose signature the next delta is made against (the newest chained backup, or its base)."""
    chained = [b for b in backups if b.in_chain]
    if not chained:
        return None
    last = chained[-1]
    return last.id if mode == "incremental" else (last.base or last.id)


def collect_objects(dest: Path, backups: list[BackupRecord], mode: str, rep: Reporter) -> list[str]:
    """Delete the files of chain/ that no live record names (retention's deleted objects, objects of
    an interrupted backup) and every signature but those the next delta needs. Run under the run
    lock, after the records that named them were dropped (references before data)."""
    chain_dir = dest / CHAIN_DIR
    if not chain_dir.is_dir() or chain_dir.is_symlink():
        return []
    named = {o.path for b in backups for o in b.objects}
    for group in by_series(backups).values():  # each database's chain keeps the signatures its next delta needs
        named |= set(needed_signatures(group, mode))
    folders = {str(Path(p).parent) for p in named}
    gone = []
    for p in sorted(chain_dir.rglob("*"), key=lambda q: -len(q.parts)):
        rel = p.relative_to(dest).as_posix()
        if rel in named or (p.is_dir() and not p.is_symlink() and rel in folders):
            continue
        if p.is_dir() and not p.is_symlink():
            if not any(p.iterdir()):
                p.rmdir()
            continue
        checkpoint(f"delete {rel}")
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        gone.append(rel)
    return gone


# one object as a readable local file (checked by the caller): written to the scratch path given, or,
# when the object already is a local file, that file, read in place (never to be removed)
Fetch = Callable[[FileRecord, Path], Path]


def reconstruct(backups: list[BackupRecord], rec: BackupRecord, fetch: Fetch, work: Path, rep: Reporter) -> Path:
    """Rebuild rec's dump in `work` from its chain (a file; a folder for the directory format). Every
    object's sha256 is checked as it arrives, and the result's against its record before anything
    reads it. Returns the dump's path."""
    try:
        chain = chain_of({b.id: b for b in backups}, rec)
    except ValueError as exc:
        raise IntegrityError(f"cannot reconstruct {rec.id}: {exc}") from exc
    work.mkdir(parents=True, exist_ok=True)
    if rec.dir_files:
        return _reconstruct_dir(chain, rec, fetch, work, rep)
    for b in chain:
        if not b.objects:
            raise IntegrityError(f"backup {b.id} (needed by {rec.id}) has no stored objects")
    base, deltas = chain[0], chain[1:]
    if deltas:
        rep.info(f"applying {len(deltas)} delta(s) to base {base.id}")
    out = work / "dump"
    rebuild(base.objects[0], base.dump_size, [d.objects[0] for d in deltas], rec.dump_sha256, rec.dump_size, fetch,
            work, out, rec.id)  # fmt: skip
    return out


def _reconstruct_dir(chain: list[BackupRecord], rec: BackupRecord, fetch: Fetch, work: Path, rep: Reporter) -> Path:
    """A directory-format dump, file by file: each file's own chain is its last whole copy in the
    backup chain and the deltas after it (unchanged days cost nothing)."""
    out = work / "dump"
    out.mkdir(mode=0o700, exist_ok=True)
    by_key = [{f.key: f for f in b.dir_files} for b in chain]
    for f in rec.dir_files:
        versions = [(b, m[f.key]) for b, m in zip(chain, by_key, strict=True) if f.key in m]
        start = max((i for i, (_, v) in enumerate(versions) if v.how == "whole"), default=None)
        if start is None:
            raise IntegrityError(f"{f.name} of {rec.id}: no whole copy of it in its chain")
        base_b, base_v = versions[start]
        deltas = [v for _, v in versions[start + 1 :] if v.how == "delta"]
        if base_v.object is None or any(d.object is None for d in deltas):
            raise IntegrityError(f"{f.name} of {rec.id}: an object of its chain is not recorded")
        rebuild(base_v.object, base_v.size, [d.object for d in deltas if d.object is not None], f.sha256, f.size,
                fetch, work, out / f.name, f"{rec.id} ({f.name}, from {base_b.id})")  # fmt: skip
    return out


def rebuild(
    base_obj: ObjectRecord | FileRecord, base_size: int, delta_objs: list[ObjectRecord] | list[FileRecord],
    want_sha256: str, want_size: int, fetch: Fetch, work: Path, out: Path, label: str,
) -> None:  # fmt: skip
    """One file from a zstd base and zstd rdiff deltas: the deltas are composed into one map first,
    then the base is decompressed on another core and streamed straight into its places in `out` (it
    never exists as a file); every object is hashed before it is decompressed, and `out` against
    `want_sha256`."""
    from ..rsync.compose import CHUNK, compose, write

    base_zst = fetch(base_obj, work / f"{out.name}.base.zst")
    raws = [work / f"{out.name}.delta-{i}" for i in range(1, len(delta_objs) + 1)]

    def unpack(obj: FileRecord, raw: Path) -> Path:
        local = fetch(obj, raw.with_name(raw.name + ".zst"))
        # legacy objects (format 1) recorded no raw size: a delta is never more than its result's size
        # plus its commands' bytes, bounded here generously
        limit = obj.raw_size if obj.raw_size is not None else 2 * want_size + (1 << 20)
        try:
            unzstd_checked(local, raw, obj.sha256, limit, obj.size)
        except IntegrityError as exc:
            raise IntegrityError(f"{obj.path} is corrupt: {exc.message} (needed by backup {label})") from exc
        except FileNotFoundError as exc:
            raise IntegrityError(f"{local} is missing (needed by backup {label})") from exc
        _remove_scratch(local, work)
        return raw

    with ThreadPoolExecutor(2, thread_name_prefix="fetch") as pool:
        # on the other core: check the base, bring and unpack the deltas, while this one composes
        # each delta as soon as it is there
        base_sha = pool.submit(lambda: sha256_file(base_zst, max_size=base_obj.size)[1])
        ready = [pool.submit(unpack, d, raw) for d, raw in zip(delta_objs, raws, strict=True)]
        try:
            plan = compose(base_size, (f.result() for f in ready))
            if base_sha.result() != base_obj.sha256:
                raise IntegrityError(f"{base_obj.path} is corrupt: sha256 mismatch (needed by backup {label})")
        except RsyncError as exc:
            raise IntegrityError(f"the delta chain of {label} does not apply: {exc}") from exc
        except OSError as exc:  # an object that cannot be read, a full disk for the unpacked deltas
            raise storage_error(exc, Path(exc.filename or work), "reading or unpacking") from exc
        finally:
            for f in ready:
                f.cancel()
    pieces = unzstd_pieces(base_zst, CHUNK, base_obj.size, base_size)
    try:
        written = write(plan, pieces, raws, out)
    except (RsyncError, IntegrityError) as exc:
        msg = exc.message if isinstance(exc, IntegrityError) else str(exc)
        raise IntegrityError(f"{base_obj.path} does not decompress to its recorded dump: {msg}") from exc
    except OSError as exc:  # e.g. the disk holding the work folder is full
        raise storage_error(exc, out, "writing") from exc
    finally:
        pieces.close()  # stops the decompressing thread at once if the write stopped early
    if written.base_bytes != base_size:
        raise IntegrityError(f"{base_obj.path} decompresses to {written.base_bytes} bytes, not {base_size}")
    if written.sha256 != want_sha256:
        raise IntegrityError(f"reconstructed dump of {label} does not match its recorded sha256")
    for p in [*raws, base_zst]:
        _remove_scratch(p, work)


def _remove_scratch(p: Path, work: Path) -> None:
    if p.is_relative_to(work):  # not an object read in place
        p.unlink()


def local_fetch(dest: Path) -> Fetch:
    def fetch(obj: FileRecord, scratch: Path) -> Path:
        src = dest / obj.path
        if src.parent.is_symlink() or src.is_symlink():
            raise IntegrityError(f"{src} is a symbolic link; deltadump never writes one")
        if not src.is_file():
            raise IntegrityError(f"{src} is missing")
        return src

    return fetch

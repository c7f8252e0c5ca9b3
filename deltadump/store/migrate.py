"""Migration of repository format v1 (one deltadump-manifest.json listing every backup) to format v2
(signed records and a head), in place, on first use. The data files (rotation slots, chain objects,
offsite full/ copies) keep their names: only the records are new. Every name and number of the old
manifest is checked like any other hostile input before it becomes a record.
"""

from __future__ import annotations

from datetime import date

from pydantic import ValidationError

from ..errors import IntegrityError
from . import manifest as v1
from .records import BackupRecord, FileRecord, Note, ObjectRecord, TablesRecord


def _file(f: v1.FileRecord, cls: type[FileRecord]) -> FileRecord:
    return cls(path=f.path, size=f.size, sha256=f.sha256)


def kept(m: v1.Manifest, *, offsite: bool) -> list[v1.BackupRecord]:
    """The v1 backups that still hold data: here, those restorable from their slot or chain (and
    replaced ones, which the offsite copy may hold); offsite, those not pruned there. Failed runs after
    the newest good backup are kept to tell of them."""
    good = [b for b in m.backups if b.status == "ok"]
    last_good = m.backups.index(good[-1]) if good else -1
    out = []
    for i, b in enumerate(m.backups):
        if b.status == "failed":
            if i > last_good and not offsite:
                out.append(b)
        elif not b.pruned and not (offsite and b.offsite_pruned):
            out.append(b)
    return out


def convert(
    m: v1.Manifest, repository: str, *, offsite: bool = False
) -> tuple[list[BackupRecord | TablesRecord | Note], int, date | None]:
    """v2 records numbered 1..n in the old order (with tables attachments and notes), and the %n counter
    state (distinct days with a good backup, the last of them)."""
    out: list[BackupRecord | TablesRecord | Note] = []
    n = 0
    try:
        for b in kept(m, offsite=offsite):
            n += 1
            if b.tables:
                out.append(TablesRecord(repository=repository, number=n, id=b.id, tables=dict(b.tables)))
            rec = BackupRecord(
                repository=repository, number=n, id=b.id, started=b.started, finished=b.finished, status=b.status,
                path=b.path, format=b.format, compress=b.compress, size=b.size,
                files=[_file(f, FileRecord) for f in b.files], database=b.database,
                server_version=b.server_version, pg_dump_version=b.pg_dump_version, duration=b.duration,
                error=b.error, kind=b.kind, parent=b.parent, base=b.base, dump_sha256=b.dump_sha256,
                dump_size=b.dump_size, objects=[_file(o, ObjectRecord) for o in b.objects],
                after=b.after is not None,
            )  # fmt: skip
            out.append(rec)  # its `tables` (the attachment's hash) is filled in when it is written
            for kind, note in (("drill", b.drill), ("after", b.after)):
                if note is None:
                    continue
                n += 1
                if kind == "drill" and isinstance(note, v1.DrillRecord):
                    out.append(Note(repository=repository, number=n, backup=b.id, kind="drill", at=note.at, ok=note.ok,
                                    tables=note.tables, differences=note.differences, seconds=note.seconds,
                                    source=note.source))  # fmt: skip
                elif isinstance(note, v1.AfterRecord) and note.exit_code is not None:
                    out.append(Note(repository=repository, number=n, backup=b.id, kind="after",
                                    at=note.finished or b.finished or b.started, ok=note.exit_code == 0,
                                    exit_code=note.exit_code, error=note.error))  # fmt: skip
                else:
                    n -= 1
    except ValidationError as exc:
        err = exc.errors()[0]
        raise IntegrityError(
            f"the old manifest cannot be migrated: {'.'.join(map(str, err['loc']))}: {err['msg'][:200]}",
            hint="it names something deltadump never writes; set it aside and start a new backup folder",
        ) from None
    days = sorted({b.started.date() for b in m.backups if b.status == "ok"})
    return out, len(days), (days[-1] if days else None)

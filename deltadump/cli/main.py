"""`deltadump`: the command line. Parses arguments, runs a job, renders the result; maps errors to
exit codes (0 success, 1 the operation failed, 2 bad usage or config). The only module that prints."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..config import Config, config_path, load
from ..errors import EXIT_FAILED, EXIT_USAGE, DeltadumpError, redact
from ..naming import one_line
from ..store.records import BackupRecord, Note

if TYPE_CHECKING:
    from ..jobs.backup import RunResult
    from ..jobs.drill import DrillResult
    from ..jobs.repo import LocalView

_WIDTH = None if sys.stdout.isatty() else 160
# markup off: every string shown (table names, error messages, paths: read from a database, a record or
# a command line) is printed literally, never taken for rich markup
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, width=_WIDTH, soft_wrap=_WIDTH is not None, markup=False)


class CliReporter:
    """Progress on a terminal (rich), plain lines otherwise; always on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None

    def info(self, msg: str) -> None:
        if not self.quiet:
            err.print(redact(msg))

    def progress(self, label: str, done: int, total: int | None = None) -> None:
        if self.quiet or not self.tty:
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), console=err, transient=True)  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task(label, total=total)
        self._progress.update(self._task, completed=done, total=total)

    def done(self, label: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _cfg(args: argparse.Namespace) -> Config:
    return load(getattr(args, "config", None))


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _trust_args(args: argparse.Namespace) -> dict[str, object]:
    return {"trust": getattr(args, "trust", None), "allow_older": getattr(args, "allow_older", False)}


def _is_backup_ref(word: str) -> bool:
    """A word that names a backup (latest, a date, an id, a path), never an offsite copy's name (a letter
    first, then letters, digits, - and _; never 'latest')."""
    return word == "latest" or word[:1].isdigit() or "." in word or "/" in word


def _offsite_choice(args: argparse.Namespace, cfg: Config) -> tuple[bool, str | None]:
    """Where a command reads: (False, None) for the backup folder, (True, NAME) for an offsite copy (None:
    the only one). From `--from local|offsite [NAME]` or `--offsite [NAME]`. A word after them that is not
    a copy's name but a backup's (`restore --from offsite latest`, `drill --offsite latest`, as before
    copies had names) is taken as the BACKUP argument. Several copies and no name: UsageError (exit 2)."""
    from ..errors import UsageError

    src: list[str] | None = getattr(args, "source", None)
    flag: str | None = getattr(args, "offsite", None)
    if src is not None and flag is not None:
        raise UsageError("give either --from or --offsite, not both")
    if src is None and flag is None:
        return False, None
    if src is not None and src[0] not in ("local", "offsite"):
        raise UsageError(f"--from takes local or offsite [NAME], not {src[0]!r}")
    if src is not None and src[0] == "local":
        if len(src) > 1:
            raise UsageError(f"--from local takes no name ({src[1]!r})")
        return False, None
    words = src[1:] if src is not None else ([flag] if flag else [])
    names = [c.copy_name for c in cfg.copies]
    copy = None
    if words and not _is_backup_ref(words[0]):
        copy = words.pop(0)
        if copy not in names:
            raise UsageError(f"no offsite copy named {copy!r} in the config (its copies: {', '.join(names) or 'none'})")
    if words:
        if len(words) == 1 and getattr(args, "backup", "") is None and _is_backup_ref(words[0]):
            args.backup = words[0]
        else:
            raise UsageError(f"unexpected argument {words[0]!r} after the offsite copy's name")
    cfg.offsite_copy(copy)  # no copy configured: ConfigError; several and none named: UsageError
    return True, copy


def backup_rows(backups: list[BackupRecord], notes: list[Note], view: LocalView | None) -> list[dict[str, object]]:
    """Newest first, each with what is known of it: its status (ok, failed, replaced: its slot was
    reused and it is in no chain), its latest drill and after-command result."""
    rows = []
    for b in reversed(backups):
        status: str = b.status
        if view is not None and b.status == "ok" and not view.restorable(b):
            status = "replaced"
        mine = [n for n in notes if n.backup == b.id]
        drill = max((n for n in mine if n.kind == "drill"), key=lambda n: n.number, default=None)
        after = max((n for n in mine if n.kind == "after"), key=lambda n: n.number, default=None)
        rows.append({**b.model_dump(mode="json"), "state": status, "database": _db_label(b),
                     "drill": None if drill is None else {"ok": drill.ok, "at": drill.at.isoformat(),
                                                          "differences": drill.differences},
                     "after_exit": None if after is None else after.exit_code})  # fmt: skip
    return rows


def _db_label(b: BackupRecord) -> str:
    from ..jobs.cluster import label_of

    return label_of(b)


def render_list(rows: list[dict[str, object]], title: str = "backups, newest first") -> None:
    t = Table(title=title)
    whole = any(r["database"] for r in rows)  # a whole-server config's: which database each backup is of
    for col in ("id", "started", *(("database",) if whole else ()), "status", "path", "kind", "size", "duration",
                "drill", "after"):  # fmt: skip
        t.add_column(col)
    for r in rows:
        status = str(r["state"]) + (f": {r['error']}" if r["error"] else "")
        drill = r["drill"]
        d = "" if not isinstance(drill, dict) else ("ok" if drill["ok"] else "FAILED")
        after = "" if r["after_exit"] is None else f"exit {r['after_exit']}"
        size = r["size"]
        cells = [str(r["id"]), str(r["started"])[:19], *((str(r["database"]),) if whole else ()), status,
                 str(r["path"]), str(r["kind"]),
                 _size(size) if isinstance(size, int) and size else "", f"{r['duration']:.1f} s", d, after]  # fmt: skip
        t.add_row(*[Text(c) for c in cells])  # Text: stored strings are shown literally, never as markup
    out.print(t)


def cmd_init(args: argparse.Namespace) -> int:
    from ..jobs.init import init

    path = config_path(args.config)
    version, public = init(path, args.dsn, args.dest, args.password_file or "")
    out.print(f"wrote {path} (mode 0600); the database answers (PostgreSQL {version}); {args.dest} is writable",
              markup=False)  # fmt: skip
    out.print(f"signing key: {load(path).signing_key_path} (0600); its public key, which proves the backups and the "
              f"offsite copy are yours (keep it with your recovery papers):\n  {public}", markup=False)  # fmt: skip
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from ..jobs.backup import backup_and_report

    cfg = _cfg(args)
    runs: list[RunResult] = []
    backup_and_report(cfg, CliReporter(args.quiet), wait=args.wait, on_run=runs.append)
    for rec in runs[0].records:
        of = (" (globals)" if rec.format == "globals" else f" (database {rec.db})") if cfg.whole_server else ""
        out.print(f"backup {rec.id}{of}: {cfg.slot_where(rec.path)} ({_size(rec.size)}, {rec.duration:.1f} s)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    rep = CliReporter(args.quiet)
    offsite, copy = _offsite_choice(args, cfg)
    if offsite:
        from ..jobs.offsite import Offsite

        off = Offsite(cfg, rep, identity=args.identity, copy=copy, **_trust_args(args))  # type: ignore[arg-type]
        repo = off.load()
        rows = backup_rows(repo.backups(), repo.notes(), None) if repo.head else []
        title = f"offsite copy {off.title()}" + (f", head {repo.head.seq} of {repo.head.time:%Y-%m-%d %H:%M}"
                                                     if repo.head else ": empty")  # fmt: skip
    else:
        from ..jobs.repo import local_view, open_local

        repo = open_local(cfg, rep, **_trust_args(args))  # type: ignore[arg-type]
        rows = backup_rows(repo.backups(), repo.notes(), local_view(repo, cfg.dest, cfg.backup.remote))
        title = "backups, newest first"
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        render_list(rows, title)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..jobs.verify import verify

    cfg = _cfg(args)
    rep = CliReporter(args.quiet)
    offsite, copy = _offsite_choice(args, cfg)
    if offsite:
        from ..jobs.offsite import Offsite

        off = Offsite(cfg, rep, identity=args.identity, copy=copy, **_trust_args(args))  # type: ignore[arg-type]
        live, problems = off.verify(rep)
        for b in live:
            if b.id in problems:
                for p in problems[b.id]:
                    out.print(f"FAILED  {b.id}  {p}", markup=False)
            else:
                out.print(f"ok      {b.id}  offsite{'' if len(cfg.copies) == 1 else ' ' + off.name} ({b.kind})",
                          markup=False)  # fmt: skip
        if problems:
            err.print(f"deltadump: error: {len(problems)} of {len(live)} offsite backup(s) failed verification")
            return EXIT_FAILED
        return 0
    report = verify(cfg, None if args.all or not args.backup else args.backup, deep=args.deep, reporter=rep,
                    of_db=args.db)  # fmt: skip
    bad = 0
    for r in report.results:
        if r.ok:
            out.print(f"ok      {r.backup.id}  {r.backup.path}  ({', '.join(r.checked)})", markup=False)
        else:
            bad += 1
            for p in r.problems:
                out.print(f"FAILED  {r.backup.id}  {p}", markup=False)
    for path, ids in report.damaged.items():
        if ids:
            out.print(f"DAMAGED {path}: needed by {', '.join(ids)}", markup=False)
    if not report.results:
        out.print("no backups to verify")
    if bad:
        err.print(f"deltadump: error: {bad} of {len(report.results)} backup(s) failed verification")
        return EXIT_FAILED
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ..jobs.restore import restore

    cfg = _cfg(args)
    offsite, copy = _offsite_choice(args, cfg)
    ref = args.backup or args.at or "latest"
    if args.server:
        return _restore_server(cfg, args, ref)
    for opt in ("to_dsn", "password_file", "only"):
        if getattr(args, opt):
            from ..errors import UsageError

            raise UsageError(f"--{opt.replace('_', '-')} goes with restore --server")
    if args.to_datadir:
        from ..jobs.restore import restore_datadir

        r2 = restore_datadir(cfg, ref, Path(args.to_datadir), start=args.start, port=args.port,
                             reporter=CliReporter(args.quiet), from_offsite=offsite, copy=copy,
                             identity=args.identity, **_trust_args(args))  # type: ignore[arg-type]  # fmt: skip
        started = " and started it" if args.start else ""
        out.print(f"laid out {r2.backup.id} in {r2.database}{started} in {r2.seconds:.1f} s")
        return 0
    if not args.to_db:
        from ..errors import UsageError

        raise UsageError("restore needs --to-db NAME (logical backups) or --to-datadir DIR (physical backups)")
    from ..rsync.parallel import cpu_count

    # each job is a pg_restore connection and a server backend: on a machine that also runs the server,
    # more jobs than half the cores only compete (measured: --jobs=2 no faster than 1 on 2 cores)
    jobs = args.jobs if args.jobs is not None else (cfg.backup.jobs or max(1, min(4, cpu_count() // 2)))
    res = restore(cfg, ref, args.to_db, dsn=args.dsn, clean=args.clean, jobs=jobs,
                  reporter=CliReporter(args.quiet), from_offsite=offsite, copy=copy,
                  identity=args.identity, of_db=args.db, **_trust_args(args))  # type: ignore[arg-type]  # fmt: skip
    out.print(f'restored {res.backup.id} ({res.source}) into "{res.database}" in {res.seconds:.1f} s')
    return 0


def _restore_server(cfg: Config, args: argparse.Namespace, ref: str) -> int:
    from ..errors import UsageError
    from ..jobs.server_restore import restore_server
    from ..rsync.parallel import cpu_count

    if not args.to_dsn:
        raise UsageError("restore --server needs --to-dsn DSN (the server to restore onto)")
    for opt in ("to_db", "to_datadir", "dsn", "clean", "db"):
        if getattr(args, opt):
            raise UsageError(f"restore --server does not take --{opt.replace('_', '-')}")
    jobs = args.jobs if args.jobs is not None else (cfg.backup.jobs or max(1, min(4, cpu_count() // 2)))
    offsite, copy = _offsite_choice(args, cfg)
    res = restore_server(cfg, ref, args.to_dsn, password_file=args.password_file or "", only=args.only, jobs=jobs,
                         reporter=CliReporter(args.quiet), from_offsite=offsite, copy=copy,
                         identity=args.identity, **_trust_args(args))  # type: ignore[arg-type]  # fmt: skip
    for d in res.databases:
        if d.ok and d.drill is not None:
            how = "created with its owner and settings" if d.created else "into the existing database"
            out.print(f'ok      {d.name}: {d.backup.id if d.backup else ""} restored ({how}), drill passed '
                      f"({len(d.drill.rows)} tables)", markup=False)  # fmt: skip
        else:
            why = d.error or ("; ".join(d.drill.differences[:3]) if d.drill else "")
            out.print(f"FAILED  {d.name}: {why}", markup=False)
    if not res.ok:
        bad = res.failed
        err.print(redact(one_line(f"deltadump: error: {len(bad)} of {len(res.databases)} database(s) failed: "
                                  f"{bad[0].name}: {bad[0].error or 'the drill found differences'}")))  # fmt: skip
        return EXIT_FAILED
    out.print(f"restored the server ({len(res.databases)} database(s)) in {res.seconds:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..jobs.demo import run_demo

    rep = CliReporter(False)
    res = run_demo(rep, lambda b, n, v: render_list(backup_rows(b, n, v)), Path(args.keep) if args.keep else None)
    t = Table(title="what reached the offsite copy each day, against a compressed dump of the same day")
    for col in ("day", "backup", "kind", "sent offsite", "pg_dump -Fc", "share"):
        t.add_column(col)
    for d in res.days:
        t.add_row(str(d.day), d.backup.id, d.backup.kind, _size(d.uploaded), _size(d.compressed_dump),
                  f"{d.uploaded / d.compressed_dump:.1%}")  # fmt: skip
    out.print(t)
    if res.drill is not None:
        render_drill(res.drill)
    t = Table(title="restored from the offsite copy alone, against the source, table by table")
    for col in ("table", "rows (source)", "rows (restored)", "checksum", "match"):
        t.add_column(col)
    for name in sorted(set(res.source) | set(res.restored)):
        a, b = res.source.get(name), res.restored.get(name)
        t.add_row(name, str(a[0]) if a else "-", str(b[0]) if b else "-", ((a or b or ("", ""))[1] or "")[:16],
                  "yes" if a == b else "NO")  # fmt: skip
    out.print(t)
    if res.ok:
        out.print("demo passed: daily deltas sent offsite, the drill passed, and the offsite copy alone restores "
                  "an identical database; no server is left running")  # fmt: skip
        return 0
    err.print("deltadump: error: the drill failed or the restored database differs from the source")
    return EXIT_FAILED


def render_drill(res: DrillResult) -> None:
    t = Table(title=f"drill of backup {res.backup.id}: restored into a throwaway database, compared, dropped")
    for col in ("table", "rows recorded", "rows restored", "result"):
        t.add_column(col)
    for name, want, got, verdict in res.rows:
        t.add_row(name, "-" if want is None else str(want), "-" if got is None else str(got), verdict)
    out.print(t)


def cmd_drill(args: argparse.Namespace) -> int:
    from ..jobs.drill import drill

    cfg = _cfg(args)
    offsite, copy = _offsite_choice(args, cfg)
    res = drill(cfg, args.backup or "latest", offsite=offsite, copy=copy, identity=args.identity,
                reporter=CliReporter(args.quiet), of_db=args.db, **_trust_args(args))  # type: ignore[arg-type]  # fmt: skip
    render_drill(res)
    if res.ok:
        out.print(f"drill passed in {res.seconds:.1f} s")
        return 0
    err.print(one_line(f"deltadump: error: drill of {res.backup.id} found {len(res.differences)} difference(s): "
                       f"{res.differences[0]}"))  # fmt: skip
    return EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from ..jobs.status import status

    st = status(_cfg(args), CliReporter(True))
    if args.json:
        print(json.dumps(st.as_dict(), indent=1))
    else:
        age = "never" if st.last_good_age_hours is None else f"{st.last_good_age_hours:.1f} h ago"
        lines = [f"last backup:      {st.last_id or 'none'} ({st.last_status or '-'}) {st.last_started or ''}"]
        if st.last_error:
            lines.append(f"last error:       {st.last_error}")
        lines.append(f"last good backup: {st.last_good_id or 'none'}, {age} (alert after {st.alert_after_hours:g} h)")
        drill_s = (
            "never" if st.last_drill_at is None else f"{st.last_drill_at} ({'ok' if st.last_drill_ok else 'FAILED'})"
        )
        lines.append(f"last drill:       {drill_s}")
        if len(st.copies) > 1:
            width = max(len(str(c["name"])) for c in st.copies)
            lines += [f"offsite {c['name']!s:<{width}}: {c['text']}" for c in st.copies]
        else:
            lines.append(f"offsite:          {st.offsite}")
        for d in st.databases:  # a whole-server config: each database, and the globals
            good = "never" if d["last_good_age_hours"] is None else f"{d['last_good_age_hours']:.1f} h ago"
            gone = "" if d["in_last_run"] else ", no longer backed up (backups kept)"
            state = f"{d['last_status'] or '-'}{': ' + str(d['last_error']) if d['last_error'] else ''}"
            lines.append(f"  {d['database']}: last {state}, last good {good}{' STALE' if d['stale'] else ''}{gone}")
        for ln in lines:
            out.print(ln, markup=False)
    if st.stale:
        lagging = [str(c["name"]) for c in st.copies if c["stale"]]
        which = "the offsite copy"
        if len(st.copies) > 1:
            which = ("the offsite copy " if len(lagging) == 1 else "the offsite copies ") + ", ".join(lagging)
        why = f"{which} lags" if st.offsite_stale else "the last good backup is too old (or there is none)"
        if st.stale_databases and not st.offsite_stale:
            why = f"the last good backup of {', '.join(st.stale_databases)} is too old (or there is none)"
        err.print(f"deltadump: error: {one_line(why)}")
        return EXIT_FAILED
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from ..jobs.prune import prune

    cfg = _cfg(args)
    offsite, copy = _offsite_choice(args, cfg)
    res = prune(cfg, dry_run=args.dry_run, offsite=offsite, copy=copy, reporter=CliReporter(args.quiet),
                identity=args.identity)  # fmt: skip
    t = Table(title=f"retention of {res.where}" + (" (dry run: nothing deleted)" if args.dry_run else ""))
    of = {i: _db_label(b) for i, b in res.backups.items()}  # a whole-server config's: each backup's database
    whole = any(of.values())
    for col in ("id", "started", *(("database",) if whole else ()), "decision", "why"):
        t.add_column(col)
    for d in reversed(res.plan.decisions):
        b = res.backups.get(d.id)
        t.add_row(Text(d.id), Text(b.started.isoformat(timespec="seconds") if b else ""),
                  *((Text(of.get(d.id, "")),) if whole else ()),
                  Text("keep" if d.keep else ("delete" if args.dry_run else "deleted")), Text(d.why))  # fmt: skip
    if args.json:
        print(json.dumps([{"id": d.id, "number": d.number, "keep": d.keep, "why": d.why,
                           **({"database": of.get(d.id, "")} if whole else {})}
                          for d in res.plan.decisions], indent=1))  # fmt: skip
    else:
        out.print(t)
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    from ..jobs.repo import key_path, public_key

    cfg = _cfg(args)
    pk = public_key(cfg)
    if pk is None:
        err.print(f"deltadump: error: no signing key at {key_path(cfg)} yet (init or the first backup creates it)")
        return EXIT_FAILED
    out.print(pk.encode(), markup=False)
    if not args.quiet:
        err.print(f"the public key of {key_path(cfg)} (id {pk.fingerprint}); check a record by hand with "
                  f"minisign -V -P {pk.encode()} -m FILE", markup=False)  # fmt: skip
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from .. import schedule

    cfg = _cfg(args)
    cfg_path = config_path(getattr(args, "config", None))
    if args.action == "show":
        s = schedule.parse(cfg.schedule)
        out.print(f"schedule: {s.cron}" + (f" ({s.tz.key})" if s.tz else ""))
        from ..clock import now

        for t in s.next_runs(now(), 5):
            out.print(f"  {t.isoformat(timespec='minutes')}")
        return 0
    name = schedule.unit_name(args.name, cfg_path)
    if args.cron:
        target = Path(args.dir or "/etc/cron.d") / f"deltadump-{name}"
        text = schedule.cron_line(cfg, cfg_path)
        _write_unit(target, text, args.force)
        out.print(f"wrote {target}:\n{text}cron picks it up by itself.")
        return 0
    units = schedule.systemd_units(cfg, cfg_path, name)
    d = Path(args.dir or "/etc/systemd/system")
    for fname, text in units.items():
        _write_unit(d / fname, text, args.force)
        out.print(f"wrote {d / fname}")
    out.print(f"enable it with:\n  systemctl daemon-reload && systemctl enable --now deltadump-{name}.timer")
    return 0


def _write_unit(path: Path, text: str, force: bool) -> None:
    from ..errors import ConfigError
    from ..fsio import write_bytes_atomic

    if path.exists() and not force:
        raise ConfigError(f"{path} exists; add --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, text.encode(), mode=0o644)


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from .. import schedule
    from ..jobs.backup import backup_and_report
    from ..store.lock import RunLock

    cfg = _cfg(args)
    schedule.parse(cfg.schedule)
    stopping = {"flag": False}

    def on_term(signum: int, frame: object) -> None:
        stopping["flag"] = True
        err.print("deltadump: stopping after the current step (signal received)")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    rep = CliReporter(args.quiet)
    from ..jobs.ring import ensure_state

    ensure_state(cfg)  # an smb:// dest's state folder, where the scheduler's lock lives
    with RunLock(cfg.dest, name="deltadump-scheduler.lock"):
        schedule.run_forever(cfg, lambda: backup_and_report(cfg, rep, wait=True), stop=lambda: stopping["flag"],
                             log=lambda m: err.print(redact(m)),
                             last_success=lambda: _last_success(cfg))  # fmt: skip
    return 0


def _last_success(cfg: Config) -> datetime | None:
    from ..jobs.common import SilentReporter
    from ..jobs.repo import open_local
    from ..store.repository import newest_good

    if not (cfg.dest / "heads").is_dir() and not (cfg.dest / "deltadump-manifest.json").exists():
        return None
    good = newest_good(open_local(cfg, SilentReporter()).backups())
    return good.started if good is not None else None


def cmd_trust_host(args: argparse.Namespace) -> int:
    from ..targets.sftp import DEFAULT_KNOWN_HOSTS, trust_host

    shown, done = trust_host(args.url, args.known_hosts or "", replace=args.replace)
    out.print(f"{shown}: {done} in {args.known_hosts or DEFAULT_KNOWN_HOSTS}", markup=False)
    return 0


def cmd_rdiff(args: argparse.Namespace) -> int:
    from .rdiff import run

    return run(args.rdiff_args, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltadump", description="Safe, restorable, delta-friendly PostgreSQL backups.")
    p.add_argument("--version", action="version", version=f"deltadump {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $DELTADUMP_CONFIG, else ./deltadump.toml)")  # fmt: skip
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="detail on errors")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output")
    p.add_argument("--config", metavar="PATH", default=None, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", default=False, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", default=False, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("init", parents=[common], help="write a config after checking database and folder")
    s.add_argument("--dsn", required=True, help="libpq URI or key=value string (no password in it)")
    s.add_argument("--dest", required=True, help="backup folder (must exist)")
    s.add_argument("--password-file", help="file whose first line is the database password")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("backup", parents=[common], help="make one backup now")
    s.add_argument("--wait", action="store_true", help="wait for a running backup instead of refusing")
    s.set_defaults(func=cmd_backup)

    trust = argparse.ArgumentParser(add_help=False)
    trust.add_argument("--trust", metavar="KEY", help="public key (RW... or a .pub file) the records must be signed "
                       "with (default: the config's signing key)")  # fmt: skip
    trust.add_argument("--allow-older", action="store_true",
                       help="accept a head older than one seen before (a copy restored on purpose)")  # fmt: skip

    s = sub.add_parser("list", parents=[common, trust], help="every recorded backup, newest first")
    s.add_argument("--json", action="store_true")
    s.add_argument("--from", dest="source", nargs="+", metavar=("local|offsite", "NAME"),
                   help="where to read: the backup folder (local, the default) or an offsite copy (offsite, with "
                   "the copy's name when the config has several)")  # fmt: skip
    s.add_argument("--offsite", nargs="?", const="", metavar="NAME",
                   help="list an offsite copy's backups (NAME: which, when the config has several)")  # fmt: skip
    s.add_argument("--identity", type=Path, help="age secret key file (encrypted offsite copies)")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("verify", parents=[common, trust], help="re-check sizes, sha256 and structure")
    s.add_argument("backup", nargs="?", help="backup id, path, or 'latest' (default: all current backups)")
    s.add_argument("--all", action="store_true", help="every current backup (the default)")
    s.add_argument("--db", metavar="NAME", help="a whole-server config: this database's backups only")
    s.add_argument("--from", dest="source", nargs="+", metavar=("local|offsite", "NAME"),
                   help="where to read: the backup folder (local, the default) or an offsite copy (offsite, with "
                   "the copy's name when the config has several)")  # fmt: skip
    s.add_argument("--offsite", nargs="?", const="", metavar="NAME",
                   help="check an offsite copy: presence, sha256, chains (NAME: which, when the config has "
                   "several)")  # fmt: skip
    s.add_argument("--deep", action="store_true", help="also rebuild every chained backup's dump and check it")
    s.add_argument("--identity", type=Path, help="age secret key file (encrypted offsite copies)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("restore", parents=[common, trust], help="restore a backup into a database")
    s.add_argument("backup", nargs="?", help="backup id, path, date or 'latest' (default: latest)")
    s.add_argument("--from", dest="source", nargs="+", metavar=("local|offsite", "NAME"),
                   help="where to take the backup from: the backup folder (local, the default) or an offsite copy "
                   "(offsite, with the copy's name when the config has several; works with the local folder "
                   "gone)")  # fmt: skip
    s.add_argument("--at", metavar="latest|DATE", help="the newest backup on or before DATE (YYYY-MM-DD)")
    s.add_argument("--identity", type=Path, help="age secret key file, to decrypt an encrypted offsite copy")
    s.add_argument("--to-db", metavar="NAME", help="target database (created if missing)")
    s.add_argument("--to-datadir", metavar="DIR", help="physical backups: lay out a data directory (must be empty)")
    s.add_argument("--start", action="store_true", help="with --to-datadir: start a server on it and wait")
    s.add_argument("--port", type=int, help="with --start: the port (default: a free one)")
    s.add_argument("--dsn", help="server to restore to (default: the config's)")
    s.add_argument("--clean", action="store_true", help="drop and recreate a non-empty target database")
    s.add_argument("--jobs", type=int, default=None,
                   help="parallel pg_restore jobs (default: half the cores, 1 to 4)")  # fmt: skip
    s.add_argument("--db", metavar="NAME", help="a whole-server config: the database whose backup BACKUP means")
    s.add_argument("--server", action="store_true", help="a whole-server backup onto an empty server: the roles, "
                   "then every database with its owner and settings, each drilled")  # fmt: skip
    s.add_argument("--to-dsn", metavar="DSN", help="with --server: the server to restore onto")
    s.add_argument("--password-file", metavar="F", help="with --server: the target's password (first line); else "
                   "PGPASSWORD or ~/.pgpass")  # fmt: skip
    s.add_argument("--only", metavar="NAME", help="with --server: only this database (after the roles)")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("demo", parents=[common], help="run the whole cycle on a private embedded server")
    s.add_argument("--keep", metavar="DIR", help="keep the demo's files (backups, config) in DIR")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("drill", parents=[common, trust],
                       help="restore into a throwaway database and compare every table")  # fmt: skip
    s.add_argument("backup", nargs="?", help="backup id, date or 'latest' (default)")
    s.add_argument("--from", dest="source", nargs="+", metavar=("local|offsite", "NAME"),
                   help="where to read: the backup folder (local, the default) or an offsite copy (offsite, with "
                   "the copy's name when the config has several)")  # fmt: skip
    s.add_argument("--offsite", nargs="?", const="", metavar="NAME",
                   help="drill an offsite copy (NAME: which, when the config has several)")  # fmt: skip
    s.add_argument("--db", metavar="NAME", help="a whole-server config: the database whose backup BACKUP means")
    s.add_argument("--identity", type=Path, help="age secret key file (encrypted offsite copies)")
    s.set_defaults(func=cmd_drill)

    s = sub.add_parser("status", parents=[common], help="last backup, its age, last drill, offsite state")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("prune", parents=[common], help="apply retention: show (and unless --dry-run, carry out) "
                       "what is kept and deleted, and why")  # fmt: skip
    s.add_argument("--dry-run", action="store_true", help="only show the plan")
    s.add_argument("--offsite", nargs="?", const="", metavar="NAME",
                   help="an offsite copy's retention (NAME: which, when the config has several)")  # fmt: skip
    s.add_argument("--identity", type=Path, help="age secret key file (encrypted offsite copies)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("key", parents=[common], help="print the public key that checks this config's backups")
    s.set_defaults(func=cmd_key)

    s = sub.add_parser("schedule", parents=[common], help="show the next runs, or install a systemd timer or cron line")
    s.add_argument("action", choices=["show", "install"])
    g = s.add_mutually_exclusive_group()
    g.add_argument("--systemd", action="store_true", help="a service + timer pair (the default)")
    g.add_argument("--cron", action="store_true", help="a line in /etc/cron.d")
    s.add_argument("--dir", help="where to write (default /etc/systemd/system or /etc/cron.d)")
    s.add_argument("--name", help="unit name suffix (default: the config file's name)")
    s.add_argument("--force", action="store_true", help="replace existing files")
    s.set_defaults(func=cmd_schedule)

    s = sub.add_parser("run", parents=[common], help="stay in the foreground and back up on schedule")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("trust-host", help="add an SFTP server's host key to known_hosts, once (prints its fingerprint)")
    s.add_argument("url", help="sftp://user@host[:port]/path (only host and port are used)")
    s.add_argument("--known-hosts", metavar="FILE", help="the known_hosts file ([offsite] known_hosts; "
                   "default ~/.ssh/known_hosts)")  # fmt: skip
    s.add_argument("--replace", action="store_true", help="replace a different key already listed for the server")
    s.set_defaults(func=cmd_trust_host)

    s = sub.add_parser("rdiff", help="librsync rdiff stand-in: signature | delta | patch (see --help)",
                       add_help=False, prefix_chars="\0")  # fmt: skip
    s.add_argument("rdiff_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_rdiff)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    if args.func is not cmd_run:  # SIGTERM aborts cleanly: temp files removed, failure recorded, lock freed
        import signal

        def on_term(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
    try:
        code = args.func(args)
    except DeltadumpError as exc:
        err.print(redact(f"deltadump: error: {one_line(exc.message)}"))
        if verbose:
            if exc.hint:
                err.print(redact(f"hint: {exc.hint}"))
            if exc.detail:
                err.print(redact(exc.detail.rstrip()))
            if exc.__cause__ is not None:
                err.print(redact(f"cause: {exc.__cause__!r}"))
        code = exc.exit_code
    except KeyboardInterrupt:
        err.print("deltadump: interrupted")
        code = 130
    except Exception as exc:  # a bug: one line, the traceback only with -v
        err.print(redact(f"deltadump: internal error: {type(exc).__name__}: {one_line(str(exc))}"))
        if verbose:
            err.print(redact(traceback.format_exc()))
        code = EXIT_FAILED
    sys.exit(code)


assert EXIT_USAGE == 2


if __name__ == "__main__":
    main()

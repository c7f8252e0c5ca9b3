"""Config: loads and validates the TOML file into typed, frozen models; resolves where it lives.

Keys are the product's contract (README.md, "Config"). Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

if TYPE_CHECKING:
    from .targets import TargetOptions

DEFAULT_NAME = "deltadump.toml"
SIGNING_KEY_NAME = "deltadump-signing.key"
# Block length for delta backups of dumps, chosen by measuring consecutive dumps of a mail database
# (docs/offsite.md): rdiff's default (the square root of the size, ~20 KiB for 400 MB) turns every
# changed row into ~20 KiB of literal data; 512 anchors nearly every moved row, and matches then grow
# byte by byte to the row's edges (2.9 MB vs 0.17 MB a day on a 56 MB dump; 256 gains nothing more).
DUMP_BLOCK_LEN = 512


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Model):
    dsn: str
    password_file: str = ""
    pg_bin: str = ""
    # whole-server configs: these databases (or "all": every one that accepts connections, templates
    # excepted, minus `exclude`) and the globals, each backed up on its own; the dsn names the server and
    # the database to connect to first. None: the one database the dsn names (a single-database config)
    databases: list[str] | Literal["all"] | None = None
    exclude: list[str] = []

    @field_validator("databases", mode="before")
    @classmethod
    def _check_all(cls, v: object) -> object:
        if isinstance(v, str) and v != "all":
            raise ValueError(f'must be a list of database names, or "all" (not {v!r})')
        return v

    @field_validator("databases", "exclude")
    @classmethod
    def _check_names(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, list):
            from .naming import dbname_problem

            for name in v:
                if (why := dbname_problem(name)) is not None:
                    raise ValueError(f"database name {name!r} is no database name: {why}")
            if len(set(v)) != len(v):
                raise ValueError("a database is named twice")
        return v

    @model_validator(mode="after")
    def _check_whole(self) -> DatabaseConfig:
        if self.databases == []:
            raise ValueError('databases lists no database (name them, or "all")')
        if self.exclude and self.databases != "all":
            raise ValueError('exclude applies to databases = "all"')
        return self


class BackupConfig(_Model):
    kind: Literal["logical", "physical"] = "logical"
    dest: str
    name: str = "DBBACK-%w.DMP"
    format: Literal["custom", "directory", "plain", "tar"] = "custom"
    compress: int = Field(6, ge=0, le=9)
    options: list[str] = []
    after: str = ""
    after_timeout: int = Field(3600, gt=0)
    signing_key: str = ""  # Ed25519 key (minisign format) that signs every record; default: in the config's folder
    # whole-server configs: the roles' passwords (their hashes) in the globals backup, or not
    globals: Literal["without-passwords", "with-passwords"] = "without-passwords"
    jobs: int = Field(0, ge=0, le=64)  # parallel pg_dump/pg_restore jobs (directory format); 0: the cores, at most 4
    # dest = "smb://...": the rotation slots go to the share; the records, locks and chain objects stay in a
    # local state folder (default: <config folder>/<config name>.state)
    state: str = ""
    username: str = ""  # smb dest (or the url's user@)
    password_file: str = ""  # smb dest: first line; never the password itself
    domain: str = ""
    require_encryption: bool = True
    dialect: Literal["", "3.1.1", "3.0.2", "3.0", "2.1", "2.0.2"] = ""

    @property
    def remote(self) -> bool:
        """dest is a share (smb://), not a local folder."""
        return "://" in self.dest

    @field_validator("name")
    @classmethod
    def _check_template(cls, v: str) -> str:
        from .naming import validate_template

        validate_template(v)
        return v

    @field_validator("dest")
    @classmethod
    def _check_dest(cls, v: str) -> str:
        if not v:
            raise ValueError("dest must name a folder")
        if "://" in v:
            from .targets import split_url

            if not v.startswith("smb://"):
                raise ValueError("dest is a folder or an smb:// url (a share reached without mounting)")
            split_url(v)  # no password in it, a share, a valid port
        return v

    @model_validator(mode="after")
    def _check_remote(self) -> BackupConfig:
        smb_keys = ("state", "username", "password_file", "domain", "dialect")
        if not self.remote:
            for key in smb_keys:
                if getattr(self, key):
                    raise ValueError(f"{key} applies to an smb:// dest only")
            return self
        check_smb(self.dest, self.username, self.password_file, self.require_encryption, self.dialect)
        if self.kind == "physical" or self.format == "directory":
            what = "physical backups" if self.kind == "physical" else 'format = "directory"'
            raise ValueError(f"an smb:// dest takes single-file dumps (custom, plain, tar); {what} need a folder")
        return self

    def target_options(self) -> TargetOptions:
        from .targets import TargetOptions

        return TargetOptions(username=self.username, password_file=self.password_file, domain=self.domain,
                             require_encryption=self.require_encryption, dialect=self.dialect)  # fmt: skip


class DeltaConfig(_Model):
    enabled: bool = False
    mode: Literal["incremental", "differential"] = "incremental"
    block_len: int = Field(0, ge=0, le=1 << 24)
    rebase_ratio: float = Field(0.5, gt=0)
    max_chain: int = Field(30, ge=1)

    @property
    def effective_block_len(self) -> int:
        return self.block_len or DUMP_BLOCK_LEN


class KeepConfig(_Model):
    daily: int = Field(7, ge=0)
    weekly: int = Field(4, ge=0)
    monthly: int = Field(6, ge=0)


class RetentionConfig(KeepConfig):
    keep_last: int = Field(1, ge=1)


class CopyRetention(_Model):
    """An offsite copy's own retention (`[offsite.retention]`, or `retention = {...}` in its table):
    a key it does not give takes the value of the top-level [retention]."""

    daily: int | None = Field(None, ge=0)
    weekly: int | None = Field(None, ge=0)
    monthly: int | None = Field(None, ge=0)
    keep_last: int | None = Field(None, ge=1)


DEFAULT_COPY = "default"  # the name of a single [offsite] table's copy (and of one [[offsite]] without a name)
# a copy's name is part of file names (deltadump-offsite/NAME/), metric labels and the rollback state:
# a letter first (never taken for a backup id or a date on the command line), then letters, digits, - and _
COPY_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
RESERVED_COPY_NAMES = ("latest", "local", "offsite")


class OffsiteConfig(_Model):
    name: str = ""  # "" = "default" (a single copy); required when there are several
    url: str = ""
    endpoint_url: str = ""  # s3
    username: str = ""  # smb (or the url's user@)
    password_file: str = ""  # smb: first line; never the password itself
    domain: str = ""  # smb
    require_encryption: bool = True  # smb
    dialect: Literal["", "3.1.1", "3.0.2", "3.0", "2.1", "2.0.2"] = ""  # smb: "" negotiates the newest
    identity: str = ""  # sftp: private key file ("" = ssh-agent)
    known_hosts: str = ""  # sftp: "" = ~/.ssh/known_hosts
    encrypt: bool = False
    recipients: list[str] = []
    keep: KeepConfig | None = None  # the retention of configs written before [retention] existed
    retention: CopyRetention | None = None  # this copy's own retention, over the top-level [retention]
    alert_after: str = "26h"  # `status` fails when the newest good backup is not offsite after this long

    @property
    def copy_name(self) -> str:
        return self.name or DEFAULT_COPY

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if v and not COPY_NAME_RE.fullmatch(v):
            raise ValueError(f"invalid copy name {v[:40]!r}: a letter, then up to 31 letters, digits, - or _")
        if v in RESERVED_COPY_NAMES:
            raise ValueError(f"{v!r} cannot name a copy (the command line gives it another meaning)")
        return v

    @field_validator("alert_after")
    @classmethod
    def _check_alert(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if v:
            from .targets import split_url

            split_url(v)  # a known scheme, no password in it, the parts each scheme needs
        return v

    @model_validator(mode="after")
    def _check_keys(self) -> OffsiteConfig:
        scheme = self.url.partition("://")[0] if self.url else ""
        only = {"endpoint_url": "s3", "username": "smb", "password_file": "smb", "domain": "smb", "dialect": "smb",
                "identity": "sftp", "known_hosts": "sftp"}  # fmt: skip
        for key, owner in only.items():
            if getattr(self, key) and scheme != owner:
                raise ValueError(f"{key} applies to {owner}:// urls only")
        if scheme == "smb":
            check_smb(self.url, self.username, self.password_file, self.require_encryption, self.dialect)
        return self

    def target_options(self) -> TargetOptions:
        from .targets import TargetOptions

        return TargetOptions(username=self.username, password_file=self.password_file, domain=self.domain,
                             require_encryption=self.require_encryption, dialect=self.dialect,
                             identity=self.identity, known_hosts=self.known_hosts)  # fmt: skip


def check_smb(url: str, username: str, password_file: str, require_encryption: bool, dialect: str) -> None:
    """The keys an smb:// url needs, consistent with it (an offsite copy's, or an smb:// dest's)."""
    from urllib.parse import unquote, urlsplit

    user = unquote(urlsplit(url).username or "")
    if user and username and user != username:
        raise ValueError(f"the url names user {user!r} but username is {username!r}")
    if not (user or username) or not password_file:
        raise ValueError("an smb:// url needs a username (or user@ in the url) and a password_file")
    if require_encryption and dialect.startswith("2"):
        raise ValueError(f"SMB dialect {dialect} has no encryption: set require_encryption = false to use it")


def parse_duration(v: str) -> float:
    """'26h', '7d', '90m', '3600s', '1d12h' -> seconds."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", v.strip().lower())
    if not parts or "".join(f"{a}{b}" for a, b in parts) != re.sub(r"\s+", "", v.strip().lower()):
        raise ValueError(f"invalid duration {v!r} (use e.g. 90m, 26h, 7d)")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return sum(float(a) * unit[b] for a, b in parts)


class DrillConfig(_Model):
    checksums: bool = False
    every: str = ""

    @field_validator("every")
    @classmethod
    def _check_every(cls, v: str) -> str:
        if v:
            parse_duration(v)
        return v


class ScheduleConfig(_Model):
    at: str = ""
    cron: str = ""
    timezone: str = ""
    alert_after: str = "26h"

    @field_validator("alert_after")
    @classmethod
    def _check_alert(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        if v:
            from zoneinfo import ZoneInfo

            try:
                ZoneInfo(v)
            except Exception:
                raise ValueError(f"unknown timezone {v!r}") from None
        return v


class NotifyConfig(_Model):
    email: list[str] = []
    smtp: str = "localhost:25"
    # "starttls" (the default) or "smtps": TLS with the certificate and host name verified (against the
    # system's CAs, or ca_file); "none": plain SMTP, allowed only without a login
    tls: Literal["starttls", "smtps", "none"] | None = None
    starttls: bool | None = None  # the older key: true = tls "starttls", false = tls "none"
    tls_verify: bool = True  # false: encrypt without checking who answers (the explicit escape hatch)
    ca_file: str = ""
    username: str = ""
    password_file: str = ""
    sender: str = ""
    webhook: str = ""
    on: list[Literal["failure", "success", "drill"]] = ["failure"]
    timeout: float = Field(20, gt=0)
    ping_url: str = ""  # dead-man pings: URL/start, URL on success, URL/fail (healthchecks.io, Uptime Kuma)
    metrics_file: str = ""  # node_exporter textfile written after every run

    @field_validator("ping_url", "webhook")
    @classmethod
    def _check_http(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("webhook")
    @classmethod
    def _check_webhook(cls, v: str) -> str:
        if v and not v.lower().startswith(("http://", "https://")):
            raise ValueError("webhook must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _check_tls(self) -> NotifyConfig:
        if self.tls is not None and self.starttls is not None and (self.tls == "starttls") != self.starttls:
            raise ValueError(f"starttls = {str(self.starttls).lower()} contradicts tls = {self.tls!r}; keep only tls")
        if self.username and self.tls_mode == "none":
            raise ValueError('an SMTP login (username) is refused without TLS: set tls = "starttls" or "smtps"')
        return self

    @property
    def tls_mode(self) -> str:
        if self.tls is not None:
            return self.tls
        return "none" if self.starttls is False else "starttls"


class Config(_Model):
    database: DatabaseConfig
    backup: BackupConfig
    delta: DeltaConfig = DeltaConfig()
    # the offsite copies: a single [offsite] table (the copy named "default"), or [[offsite]] tables
    offsite: list[OffsiteConfig] = []
    retention: RetentionConfig | None = None
    drill: DrillConfig = DrillConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    notify: NotifyConfig = NotifyConfig()
    path: Path | None = None

    @field_validator("offsite", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        if isinstance(v, dict):  # a single [offsite] table: the copy named "default"
            return [v] if v else []
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> Config:
        if self.backup.kind == "physical" and self.delta.enabled:
            raise ValueError('[delta] works on logical dumps; it cannot be enabled with [backup] kind = "physical"')
        self._check_whole_server()
        copies = self.offsite
        if any(not c.url for c in copies) and (len(copies) > 1 or any(c.name for c in copies)):
            raise ValueError("every [[offsite]] copy needs a url")
        if len(copies) > 1:
            unnamed = [str(i) for i, c in enumerate(copies, 1) if not c.name]
            if unnamed:
                raise ValueError(f"with several [[offsite]] copies each needs a name (copy {', '.join(unnamed)} "
                                 "has none)")  # fmt: skip
            if any(c.keep is not None for c in copies):
                raise ValueError("keep belongs to configs with a single [offsite]; with several copies use "
                                 "[retention] and each copy's retention")  # fmt: skip
        # a name is a folder's (deltadump-offsite/NAME/), and the backup folder may be on a disk that
        # ignores case (FAT, exFAT, an SMB share): two copies may not differ in case alone
        folded = [c.copy_name.lower() for c in copies]
        dup = sorted({c.copy_name for c in copies if folded.count(c.copy_name.lower()) > 1})
        if dup:
            named = " and ".join(repr(n) for n in dup) if len(dup) > 1 else f"{dup[0]!r} twice"
            raise ValueError(f"two [[offsite]] copies are named {named}; each name must be unique, in more than "
                             "case")  # fmt: skip
        urls = [c.url.rstrip("/") for c in copies]
        same = sorted({u for u in urls if urls.count(u) > 1})
        if same:
            raise ValueError("two [[offsite]] copies have the same url; each copy needs a place of its own")
        return self

    def _check_whole_server(self) -> None:
        b = self.backup
        if not self.whole_server:
            if "%D" in b.name.replace("%%", ""):
                raise ValueError(f"name template {b.name!r} uses %D (the database), which only configs with "
                                 "[database] databases have")  # fmt: skip
            if "globals" in b.model_fields_set:
                raise ValueError("[backup] globals applies to whole-server configs ([database] databases)")
            return
        if "%D" not in b.name.replace("%%", ""):
            raise ValueError(f"name template {b.name!r} has no %D: with [database] databases every database and "
                             'the globals need slots of their own, e.g. name = "%D/DBBACK-%w.DMP"')  # fmt: skip
        if b.kind == "physical":
            raise ValueError('[database] databases makes logical dumps; a physical backup (kind = "physical") '
                             "copies the whole server already")  # fmt: skip
        if b.format == "plain":
            raise ValueError('[database] databases needs format "custom", "directory" or "tar": a plain dump '
                             "cannot carry a database's owner and settings for restore --server")  # fmt: skip

    @property
    def whole_server(self) -> bool:
        """[database] databases is set: every listed database and the globals, each backed up on its own."""
        return self.database.databases is not None

    @property
    def offsite_enabled(self) -> bool:
        return any(c.url for c in self.offsite)

    @property
    def copies(self) -> list[OffsiteConfig]:
        """The configured offsite copies, in config order."""
        return [c for c in self.offsite if c.url]

    def offsite_copy(self, name: str | None = None) -> OffsiteConfig:
        """The copy named `name`; None: the only one. UsageError when there are several and none is
        named, ConfigError when there is none or no copy has that name."""
        from .errors import UsageError

        copies = self.copies
        if not copies:
            raise ConfigError("no [offsite] url in the config")
        if name is None or name == "":
            if len(copies) == 1:
                return copies[0]
            raise UsageError(f"the config has {len(copies)} offsite copies ({', '.join(c.copy_name for c in copies)}): "
                             "name one (--from offsite NAME, or --offsite NAME)")  # fmt: skip
        for c in copies:
            if c.copy_name == name:
                return c
        raise UsageError(f"no offsite copy named {name!r} in the config (its copies: "
                         f"{', '.join(c.copy_name for c in copies)})")  # fmt: skip

    def copy_keep(self, copy: OffsiteConfig) -> RetentionConfig:
        """A copy's retention: its own keys, the others from [retention] (or the older [offsite] keep)."""
        base = self.keep
        if copy.retention is None:
            return base
        own = {k: v for k, v in copy.retention.model_dump().items() if v is not None}
        return RetentionConfig(**{**base.model_dump(), **own})

    @property
    def dest(self) -> Path:
        """The local backup folder: dest itself, or, when dest is a share (smb://), the state folder that
        holds everything but the rotation slots."""
        if not self.backup.remote:
            return Path(self.backup.dest).expanduser()
        if self.backup.state:
            return Path(self.backup.state).expanduser()
        if self.path is None:
            raise ConfigError("an smb:// dest needs [backup] state (the config has no folder to keep it beside)")
        return self.path.absolute().parent / f"{self.path.stem}.state"

    def slot_where(self, rel: str) -> str:
        """Where a rotation slot is, for people: a path in dest, or a url on the share (the slot's name
        percent-encoded: a whole-server slot holds '%' of its own, "%55p" for the database "Up")."""
        if self.backup.remote:
            from urllib.parse import quote

            return self.backup.dest.rstrip("/") + "/" + quote(rel)
        return str(self.dest / rel)

    def delta_conflict(self) -> str:
        """What in the config deltas cannot do ('' when nothing): checked before a backup, never silently
        rewritten. Deltas need an uncompressed custom or directory dump; a compression level left at
        its default is taken as 0 (the dump is stored zstd-compressed anyway)."""
        if not self.delta.enabled:
            return ""
        if self.backup.format not in ("custom", "directory"):
            return (f'[delta] works on custom or directory dumps, not format = "{self.backup.format}": '
                    'set [backup] format = "custom" or "directory", or disable [delta]')  # fmt: skip
        if self.backup.compress and "compress" in self.backup.model_fields_set:
            return (f"[delta] needs an uncompressed dump, but [backup] compress = {self.backup.compress}: set "
                    "compress = 0 (the chain's objects are zstd-compressed anyway)")  # fmt: skip
        return ""

    @property
    def dump_jobs(self) -> int:
        from os import cpu_count

        return self.backup.jobs or max(1, min(4, cpu_count() or 1))

    @property
    def keep(self) -> RetentionConfig:
        """[retention], else the older [offsite] keep, else the defaults."""
        if self.retention is not None:
            return self.retention
        old = next((c.keep for c in self.offsite if c.keep is not None), None)
        return RetentionConfig(**(old or KeepConfig()).model_dump())

    @property
    def signing_key_path(self) -> Path | None:
        """[backup] signing_key, else deltadump-signing.key in the config's folder (shared by the configs
        kept there, so that they may share a backup folder)."""
        if self.backup.signing_key:
            return Path(self.backup.signing_key).expanduser()
        if self.path is None:
            return None
        return self.path.absolute().parent / SIGNING_KEY_NAME


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """--config PATH, else $DELTADUMP_CONFIG, else ./deltadump.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DELTADUMP_CONFIG")
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_NAME


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = config_path(explicit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found",
            hint="create one with 'deltadump init --dsn DSN --dest DIR', or pass --config PATH",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    _migrate_template_compress(raw, data)
    cfg = parse(data, path)
    for c in cfg.copies:
        if c.encrypt and not c.recipients:
            which = "[offsite]" if len(cfg.copies) == 1 else f"the offsite copy {c.copy_name!r}"
            raise ConfigError(f"{which}: encrypt = true needs at least one age recipient in recipients"
                              f"{' in ' + str(path)}")  # fmt: skip
    return cfg


# What `init` wrote before deltas refused a compressed dump: the default level, written out under this
# comment. Such a line is init's, not the user's choice, so it counts as left at its default (taken as 0
# with [delta], as it always was); a level the user wrote (another value, another comment) still conflicts.
_OLD_INIT_COMPRESS = b"# pg_dump -Z level; 0 = uncompressed (delta-friendly)\ncompress = 6\n"


def _migrate_template_compress(raw: bytes, data: dict[str, object]) -> None:
    backup = data.get("backup")
    if isinstance(backup, dict) and backup.get("compress") == 6 and _OLD_INIT_COMPRESS in raw.replace(b"\r\n", b"\n"):
        del backup["compress"]


def parse(data: dict[str, object], path: Path | None = None) -> Config:
    where = f" in {path}" if path else ""
    try:
        return Config.model_validate({**data, "path": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        parts = [str(x) for x in err["loc"]]
        if parts[:1] == ["offsite"] and len(parts) > 1 and parts[1].isdigit():
            # a single [offsite] table is offsite.KEY; the copies of [[offsite]] are offsite[N].KEY (from 1)
            parts[:2] = ["offsite"] if isinstance(data.get("offsite"), dict) else [f"offsite[{int(parts[1]) + 1}]"]
        loc = ".".join(parts)
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown config key '{loc}'{where}") from None
        if err["type"] == "missing":
            raise ConfigError(f"missing config key '{loc}'{where}") from None
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a rule about several keys
            raise ConfigError(f"invalid config{where}: {msg}") from None
        raise ConfigError(f"invalid config key '{loc}'{where}: {msg}") from None


CONFIG_TEMPLATE = """\
# deltadump configuration (TOML). See README.md, "Config", for every key.

[database]
# libpq URI or key=value string; PG* environment variables apply as in psql.
dsn = {dsn}
# Passwords come from PGPASSWORD, ~/.pgpass or a file named here (first line); never put one in dsn.
# password_file = "/etc/deltadump/db.password"
# Folder with pg_dump/pg_restore/psql to use before any other (optional).
# pg_bin = "/usr/lib/postgresql/16/bin"
# The whole server: every database (or a list) and the roles, each backed up on its own; the name
# below then needs %D (e.g. "%D/DBBACK-%w.DMP"). See README.md, "Whole-server backups".
# databases = "all"

[backup]
# Target folder: a USB disk, a mounted share... It must exist (deltadump never creates it, so an
# unmounted disk is noticed rather than filled on the root filesystem).
dest = {dest}
# Rotation by file-name template: %w weekday 0-6 (0 = Sunday), %d day 01-31, %m month 01-12,
# %y year, %h hour 00-23, %2..%9 a counter cycling 0..n-1 once per day with a good backup, %% a %.
name = "DBBACK-%w.DMP"
# custom | directory | plain | tar
format = "custom"
# pg_dump -Z level; 0 = uncompressed. With [delta] enabled set 0 (deltas need an uncompressed dump;
# their objects are zstd-compressed anyway): a higher level is refused when a backup starts.
compress = 6
# Extra pg_dump arguments, as a list (never passed through a shell).
options = []
# Command to run after each successful backup, in the background; %f = the backup's full path.
after = ""
# Seconds before the after-command is killed.
after_timeout = 3600
"""


def toml_str(s: str) -> str:
    """A TOML basic string holding exactly `s` (quotes, backslashes and control characters escaped)."""
    out = []
    for c in s:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def render_template(dsn: str, dest: str) -> str:
    return CONFIG_TEMPLATE.format(dsn=toml_str(dsn), dest=toml_str(dest))

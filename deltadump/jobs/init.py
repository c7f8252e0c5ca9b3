"""The init job: write a commented config (0600) after checking that the database answers and the
backup folder is writable; never overwrite an existing config."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from ..config import parse, render_template, toml_str
from ..errors import ConfigError, UsageError
from ..fsio import storage_error
from ..store.keys import create_secret, load_secret
from .common import check_dest, connect


def init(path: Path, dsn: str, dest: str, password_file: str = "") -> tuple[str, str]:
    """Returns the server version found and the public key of the new signing key."""
    if path.exists():
        raise ConfigError(f"config file {path} already exists; not overwriting it", hint="edit it, or remove it first")
    if "://" in dest:
        raise UsageError("init --dest takes a folder; for a share (smb://) init with a folder, then set [backup] "
                         "dest and password_file in the config (README, 'A share as dest')")  # fmt: skip
    text = render_template(dsn, str(Path(dest).expanduser().resolve()))
    if password_file:
        line = f"password_file = {toml_str(password_file)}"  # quotes and backslashes escaped
        text = text.replace('# password_file = "/etc/deltadump/db.password"', line)
    cfg = parse(tomllib.loads(text), path)  # the template itself must be a valid config
    srv = connect(cfg.database.dsn, cfg.database.password_file)
    check_dest(cfg.dest)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"config file {path} already exists; not overwriting it") from None
    except OSError as exc:
        raise storage_error(exc, path, "creating") from exc
    with os.fdopen(fd, "w") as f:
        f.write(text)
    key = cfg.signing_key_path
    if key is None:  # cannot happen: the config has a path
        raise ConfigError("no place for the signing key")
    secret = load_secret(key) if key.exists() else create_secret(key)
    return srv.version, secret.public.encode()

"""A folder target: any mounted folder (NFS, SMB, a second disk). Durable writes, sha256 checked."""

from __future__ import annotations

import builtins
import os
import shutil
from pathlib import Path

from ..errors import TargetError
from ..fsio import atomic_write, tmp_name
from ..naming import check_relpath


class FolderTarget:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        """root/key, for a key that passed the one name check, with no symbolic link below the root."""
        try:
            check_relpath(key)
        except ValueError as exc:
            raise TargetError(f"refused key: {exc}") from None
        p = self.root / key
        for parent in list(p.parents)[: len(Path(key).parts) - 1]:
            if parent.is_symlink():
                raise TargetError(f"{parent} is a symbolic link; refusing to follow it out of {self.root}")
        if p.is_symlink():
            raise TargetError(f"{p} is a symbolic link; refusing to follow it out of {self.root}")
        return p

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise TargetError(f"offsite folder {self.root} does not exist", hint="is the share mounted?")

    def put(self, key: str, src: Path, sha256: str) -> None:
        self._check_root()
        dst = self._path(key)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(dst) as f, open(src, "rb") as s:
                while chunk := s.read(4 << 20):
                    f.write(chunk)
                if f.sha256.hexdigest() != sha256:
                    raise TargetError(f"{src} changed while being copied to {dst}")
        except OSError as exc:
            raise TargetError(f"cannot write {dst}: {exc.strerror or exc}") from exc

    def get(self, key: str, dst: Path) -> None:
        src = self._path(key)
        tmp = tmp_name(dst)
        try:  # a fetched copy is scratch, checked by its user: a kernel copy, no fsync
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except FileNotFoundError as exc:
            tmp.unlink(missing_ok=True)
            raise TargetError(f"{src} is missing offsite") from exc
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TargetError(f"cannot read {src}: {exc.strerror or exc}") from exc

    def local_path(self, key: str) -> Path | None:
        p = self._path(key)
        if not p.is_file():
            raise TargetError(f"{p} is missing offsite")
        return p

    def stat(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> dict[str, int]:
        self._check_root()
        out = {}
        for p in self.root.rglob("*"):
            if p.is_file() and not p.is_symlink() and not p.name.startswith(".tmp-"):
                k = p.relative_to(self.root).as_posix()
                if k.startswith(prefix):
                    out[k] = p.stat().st_size
        return out

    def clean_temporaries(self) -> builtins.list[str]:
        """Remove the temporary files puts killed mid-way left (ours: the .tmp- names); the caller holds
        the only write access to this copy (its run lock)."""
        gone: builtins.list[str] = []
        if not self.root.is_dir():
            return gone
        for p in self.root.rglob(".tmp-*"):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                gone.append(p.relative_to(self.root).as_posix())
        return gone

    def delete(self, key: str) -> None:
        p = self._path(key)
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TargetError(f"cannot delete {p}: {exc.strerror}") from exc

"""A folder target: any mounted folder (NFS, SMB, a second disk). Durable writes, sha256 checked.

Every key is checked (targets.check_key): a link planted in the folder never makes us read, write or
delete outside it, even one swapped in between a check and a use (objects are opened with O_NOFOLLOW
and the opened file's real path must lie inside the folder; a put or a delete works through
descriptors of the key's folders, each opened relative to the one above with O_NOFOLLOW)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from ..errors import StorageError, TargetError
from ..fsio import atomic_write
from . import MissingObject, check_key, check_prefix, copy_limited, fetch_into, listed_key


class FolderTarget:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise TargetError(f"offsite folder {self.root} does not exist", hint="is the share mounted?")

    def _inside(self, real: str, key: str) -> None:
        root = os.path.realpath(self.root)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise TargetError(f"{self.root / key} leads outside the offsite folder (to {real}); refused",
                              hint="someone planted a link in the offsite folder; remove it")  # fmt: skip

    def _open(self, key: str) -> int:
        """A read descriptor of the object: never through a link at its name, and only a regular file
        whose real path lies inside the folder. O_NONBLOCK: a FIFO planted at the name opens at once
        (and is refused as no file) instead of waiting forever for a writer; files ignore the flag."""
        p = self._path(key)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise MissingObject(f"{p} is missing offsite") from None
        except OSError as exc:
            if os.path.islink(p):
                raise TargetError(f"{p} is a link, not an object; refused",
                                  hint="someone planted a link in the offsite folder; remove it") from None  # fmt: skip
            raise TargetError(f"cannot read {p}: {exc.strerror or exc}") from exc
        try:
            self._inside(os.readlink(f"/proc/self/fd/{fd}"), key)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TargetError(f"{p} is not a regular file; refused",
                                  hint="someone planted it in the offsite folder; remove it")  # fmt: skip
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _folder_fd(self, key: str, *, create: bool = False) -> tuple[int, str]:
        """A descriptor of the key's folder, each folder below the root opened relative to the one above
        and never through a link (O_NOFOLLOW), and the key's last name: a folder swapped for a link
        between a check and a write (a store is not trusted) cannot lead a write or a delete outside.
        `create`: missing folders are made. The caller closes the descriptor."""
        parts = check_key(key).split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise TargetError(f"{self.root / key} leads through a link or a file, not a folder; "
                                          "refused", hint="someone planted a link in the offsite folder; remove it"
                                          ) from None  # fmt: skip
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def put(self, key: str, src: Path, sha256: str) -> None:
        self._check_root()
        dst = self._path(key)
        try:
            s = open(src, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise TargetError(f"cannot read {src}: {exc.strerror or exc}") from None
        try:
            with s:
                folder, _name = self._folder_fd(key, create=True)
                try:  # (every name in the key's folder by its descriptor: never through a link)
                    with atomic_write(dst, dir_fd=folder) as f:
                        while chunk := s.read(4 << 20):
                            f.write(chunk)
                        if f.sha256.hexdigest() != sha256:
                            raise TargetError(f"{src} changed while being copied to {dst}")
                finally:
                    os.close(folder)
        except StorageError as exc:  # full disk, permission denied: fsio's message and hint
            raise TargetError(exc.message, hint=exc.hint) from exc
        except OSError as exc:
            raise TargetError(f"cannot write {dst}: {exc.strerror or exc}") from exc

    def get(self, key: str, dst: Path, limit: int | None = None) -> None:
        fd = self._open(key)

        def fetch(tmp: Path) -> None:  # a fetched copy is scratch, checked by its user: no fsync
            try:
                with os.fdopen(fd, "rb") as s, open(tmp, "wb") as out:
                    copy_limited(s.read, out, tmp, limit, str(self._path(key)))
            except OSError as exc:
                raise TargetError(f"cannot read {self._path(key)}: {exc.strerror or exc}") from exc

        fetch_into(dst, fetch)

    def local_path(self, key: str) -> Path | None:
        os.close(self._open(key))
        return self._path(key)

    def stat(self, key: str) -> int | None:
        p = self._path(key)
        try:
            s = os.lstat(p)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TargetError(f"cannot read {p}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(s.st_mode):
            return None  # a link or a folder is no object
        self._inside(os.path.realpath(p.parent), key)
        return s.st_size

    def list(self, prefix: str = "") -> dict[str, int]:
        check_prefix(prefix)
        self._check_root()
        out = {}
        for folder, dirs, files in os.walk(self.root):  # links to folders are not followed
            rel = Path(folder).relative_to(self.root).as_posix()
            dirs[:] = [d for d in dirs if listed_key(f"{rel}/{d}" if rel != "." else d)]
            for name in files:
                k = f"{rel}/{name}" if rel != "." else name
                if listed_key(k) is None or not k.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    s = os.lstat(os.path.join(folder, name))
                    if stat.S_ISREG(s.st_mode):  # links are never objects
                        out[k] = s.st_size
        return out

    def clean_temporaries(self) -> builtins.list[str]:
        """Remove the temporary files puts killed mid-way left (ours: the .tmp- names); the caller holds
        the only write access to this copy (its run lock). Links are never followed, and each file is
        removed through its folder's descriptor (a folder swapped for a link meanwhile leads nowhere)."""
        gone: builtins.list[str] = []
        if not self.root.is_dir():
            return gone
        # the walk starts at a descriptor of the root, opened as puts open it: fwalk yields nothing for a
        # top that is a link, and the configured folder may well be one (/srv/offsite -> /mnt/nas/...)
        top = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for folder, _dirs, files, dfd in os.fwalk(".", dir_fd=top):
                for name in files:
                    if not name.startswith(".tmp-"):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                            os.unlink(name, dir_fd=dfd)
                            gone.append(os.path.normpath(os.path.join(folder, name)))
        finally:
            os.close(top)
        return gone

    def delete(self, key: str) -> None:
        p = self._path(key)
        try:
            folder, name = self._folder_fd(key)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TargetError(f"cannot delete {p}: {exc.strerror}") from exc
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                shutil.rmtree(name, dir_fd=folder)
            else:
                os.unlink(name, dir_fd=folder)  # a link is removed, never what it points to
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TargetError(f"cannot delete {p}: {exc.strerror}") from exc
        finally:
            os.close(folder)

"""An S3 target: any S3-compatible object store, through boto3 (credentials from the standard AWS
environment variables and files). Every request carries a SHA-256 checksum of its bytes. Large
objects go in parts (multipart), two at a time, and an upload interrupted by anything (a failure, a
kill) is resumed by the next put of the same key: the parts the store already holds and that match
the file (same size and checksum, or MD5 ETag) are kept, only the others are sent. botocore's standard
retry mode retries transient failures (resets, 500, 503, throttling) with capped, jittered backoff;
a permanent failure (403, missing bucket, bad credentials) is reported at once with a hint."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..fsio import sha256_file
from . import MissingObject, check_key, check_prefix, fetch_into, listed_key, too_large

PART = 16 << 20  # bytes per part (S3: at least 5 MiB but the last, at most 10,000 parts)
MAX_PARTS = 10_000
ATTEMPTS = 6
PERMANENT = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "403", "404",
             "AllAccessDisabled", "InvalidBucketName", "AuthorizationHeaderMalformed"}  # fmt: skip


class S3Target:
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        cfg = Config(retries={"max_attempts": ATTEMPTS, "mode": "standard"}, connect_timeout=10, read_timeout=120)
        self.client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=cfg)
        self.transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=2)
        self.part_size = PART

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, key: str) -> str:
        return self._join(check_key(key))

    def _join(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, action: str, key: str) -> TargetError:
        from botocore.exceptions import ClientError, NoCredentialsError

        inner: BaseException | None = exc  # boto3's transfer manager wraps the client's error
        while inner is not None and not isinstance(inner, ClientError | NoCredentialsError):
            inner = inner.__cause__ or inner.__context__
        if inner is not None:
            exc = inner
        if isinstance(exc, NoCredentialsError):
            return TargetError(
                f"no S3 credentials for s3://{self.bucket} while {action}",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials",
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            if code in PERMANENT or status in (401, 403):
                return TargetError(
                    f"S3 refused {action} s3://{self.bucket}/{self._join(key)}: {code}",
                    hint="check the bucket name and the credentials (AWS environment variables or ~/.aws)",
                )
            err = TargetError(f"S3 failed {action} s3://{self.bucket}/{self._join(key)}: {code or status} "
                              f"(gave up after {attempts + 1} attempts)")  # fmt: skip
            err.transient = True
            return err
        err = TargetError(f"S3 at {self.endpoint_url or 'AWS'} unreachable while {action} {key}: {exc}")
        err.transient = True
        return err

    def put(self, key: str, src: Path, sha256: str) -> None:
        k = self._key(key)
        try:
            size, actual = sha256_file(src)
        except OSError as exc:
            raise TargetError(f"cannot read {src}: {exc.strerror or exc}") from None
        if actual != sha256:
            raise TargetError(f"{src} does not match its expected sha256; not uploading it")
        try:
            if size <= self.part_size:
                self.client.put_object(Bucket=self.bucket, Key=k, Body=src.read_bytes(), Metadata={"sha256": sha256},
                                       ChecksumSHA256=_b64(bytes.fromhex(sha256)))  # fmt: skip
            else:
                self._put_parts(k, src, size, sha256)
            head = self.client.head_object(Bucket=self.bucket, Key=k)
        except Exception as exc:
            if isinstance(exc, TargetError):
                raise
            raise self._error(exc, "uploading to", key) from exc
        if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != sha256:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=k)
            raise TargetError(f"s3://{self.bucket}/{k} does not match what was uploaded; removed, to be sent again")

    def _put_parts(self, k: str, src: Path, size: int, sha256: str) -> None:
        part = max(self.part_size, -(-size // MAX_PARTS))
        count = -(-size // part)
        fd = os.open(src, os.O_RDONLY)
        try:

            def read(number: int) -> tuple[bytes, str]:
                data = os.pread(fd, part, (number - 1) * part)
                return data, _b64(hashlib.sha256(data).digest())

            upload_id, held = self._resumable(k)
            kept: dict[int, dict[str, Any]] = {}  # parts the store holds with exactly this file's bytes
            for number, have in held.items():
                if number <= count:
                    data, checksum = read(number)
                    if have.get("Size") == len(data) and (
                        have.get("ChecksumSHA256") == checksum
                        or (not have.get("ChecksumSHA256") and have.get("ETag", "").strip('"') == _md5(data))
                    ):
                        kept[number] = {"PartNumber": number, "ETag": have["ETag"], "ChecksumSHA256": checksum}
            if upload_id is not None and not kept:  # nothing of ours in it: start afresh (with our metadata)
                self._abort(k, upload_id)
                upload_id = None
            if upload_id is None:
                upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=k, Metadata={"sha256": sha256},
                                                                ChecksumAlgorithm="SHA256")["UploadId"]  # fmt: skip

            def send(number: int) -> dict[str, Any]:
                if number in kept:
                    return kept[number]
                data, checksum = read(number)
                etag = self.client.upload_part(Bucket=self.bucket, Key=k, UploadId=upload_id, PartNumber=number,
                                               Body=data, ChecksumSHA256=checksum)["ETag"]  # fmt: skip
                return {"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum}

            with ThreadPoolExecutor(2, thread_name_prefix="s3-part") as pool:
                parts = list(pool.map(send, range(1, count + 1)))
        finally:
            os.close(fd)
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload_id,
                                              MultipartUpload={"Parts": parts})  # fmt: skip

    def _resumable(self, k: str) -> tuple[str | None, dict[int, dict[str, Any]]]:
        """The unfinished upload of k that holds the most parts, with them; other ones are aborted."""
        best: tuple[str | None, dict[int, dict[str, Any]]] = (None, {})
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=k).get("Uploads", [])
        for up in [u for u in uploads if u["Key"] == k]:
            held: dict[int, dict[str, Any]] = {}
            marker = 0
            while True:
                res = self.client.list_parts(Bucket=self.bucket, Key=k, UploadId=up["UploadId"],
                                             PartNumberMarker=marker)  # fmt: skip
                held.update({p["PartNumber"]: p for p in res.get("Parts", [])})
                if not res.get("IsTruncated"):
                    break
                marker = res["NextPartNumberMarker"]
            if best[0] is None or len(held) > len(best[1]):
                if best[0] is not None:
                    self._abort(k, best[0])
                best = (up["UploadId"], held)
            else:
                self._abort(k, up["UploadId"])
        return best

    def _abort(self, k: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload_id)

    def get(self, key: str, dst: Path, limit: int | None = None) -> None:
        k = self._key(key)
        where = f"s3://{self.bucket}/{k}"

        def fetch(tmp: Path) -> None:
            try:
                if limit is not None:  # the declared size before a byte comes, the size that came after
                    size = self.stat(key)
                    if size is None:
                        raise MissingObject(f"{where} is missing offsite")
                    if size > limit:
                        raise too_large(where, limit)
                with open(tmp, "r+b") as out:  # (made owner-only by fetch_into)
                    self.client.download_fileobj(
                        self.bucket, k, out, Config=self.transfer, Callback=_Counter(where, limit)
                    )
                if limit is not None and os.stat(tmp).st_size > limit:
                    raise too_large(where, limit)
            except TargetError:
                raise
            except Exception as exc:
                from botocore.exceptions import ClientError

                code = str(exc.response.get("Error", {}).get("Code")) if isinstance(exc, ClientError) else ""
                if code in ("404", "NoSuchKey"):
                    raise MissingObject(f"{where} is missing offsite") from exc
                raise self._error(exc, "downloading", key) from exc

        fetch_into(dst, fetch)

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None  # objects are downloaded

    def stat(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        k = self._key(key)
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=k)["ContentLength"])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(exc, "checking", key) from exc
        except Exception as exc:
            raise self._error(exc, "checking", key) from exc

    def list(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=base + check_prefix(prefix))
            for page in pages:
                for obj in page.get("Contents", []):
                    name = listed_key(obj["Key"][len(base) :])  # temporary and foreign names are not ours
                    if name is not None:
                        out[name] = int(obj["Size"])
        except Exception as exc:
            raise self._error(exc, "listing", prefix) from exc
        return out

    def delete(self, key: str) -> None:
        k = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=k)
        except Exception as exc:
            raise self._error(exc, "deleting", key) from exc


class _Counter:
    """A download's progress callback: the bytes received so far, refused with too_large as soon as they
    pass `limit` (the callback runs as each chunk is read, before it is written: a GET that streams more
    than the HEAD said is cut there)."""

    def __init__(self, where: str, limit: int | None) -> None:
        self.where = where
        self.limit = limit
        self.got = 0
        self.lock = threading.Lock()  # parts are read by two threads

    def __call__(self, n: int) -> None:
        with self.lock:
            self.got += n  # negative when a part is read again
            over = self.limit is not None and self.got > self.limit
        if over:
            raise too_large(self.where, self.limit or 0)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()  # S3's ETag of a part (not a security check)

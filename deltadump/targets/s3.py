"""An S3 target: any S3-compatible object store, through boto3 (credentials from the standard AWS
environment variables and files). Large objects go in parts (multipart); botocore's standard retry
mode retries transient failures (resets, 500, 503, throttling) with capped, jittered backoff; a
permanent failure (403, missing bucket, bad credentials) is reported at once with a hint."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..fsio import sha256_file, tmp_name

PART = 64 << 20
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

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, action: str, key: str) -> TargetError:
        from botocore.exceptions import ClientError, NoCredentialsError

        inner: BaseException | None = exc  # boto3's transfer manager wraps the client's error
        while inner is not None and not isinstance(inner, ClientError | NoCredentialsError):
            inner = inner.__cause__ or inner.__context__
        if inner is not None:
            exc = inner  # type: ignore[assignment]
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
                    f"S3 refused {action} s3://{self.bucket}/{self._key(key)}: {code}",
                    hint="check the bucket name and the credentials (AWS environment variables or ~/.aws)",
                )
            err = TargetError(f"S3 failed {action} s3://{self.bucket}/{self._key(key)}: {code or status} "
                              f"(gave up after {attempts + 1} attempts)")  # fmt: skip
            err.transient = True
            return err
        err = TargetError(f"S3 at {self.endpoint_url or 'AWS'} unreachable while {action} {key}: {exc}")
        err.transient = True
        return err

    def _abort_stale_uploads(self, key: str) -> None:
        with contextlib.suppress(Exception):
            res = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._key(key))
            for up in res.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])

    def put(self, key: str, src: Path, sha256: str) -> None:
        size, actual = sha256_file(src)
        if actual != sha256:
            raise TargetError(f"{src} does not match its expected sha256; not uploading it")
        self._abort_stale_uploads(key)  # parts of an upload killed mid-way are never completed
        try:  # the store checks every part against a SHA-256 checksum sent with it
            extra = {"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"}
            self.client.upload_file(str(src), self.bucket, self._key(key), Config=self.transfer, ExtraArgs=extra)
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if isinstance(exc, TargetError):
                raise
            raise self._error(exc, "uploading to", key) from exc
        if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != sha256:
            raise TargetError(f"s3://{self.bucket}/{self._key(key)} does not match what was uploaded")

    def get(self, key: str, dst: Path) -> None:
        tmp = tmp_name(dst)
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp))
            os.replace(tmp, dst)
        except Exception as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            from botocore.exceptions import ClientError

            if isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                raise TargetError(f"s3://{self.bucket}/{self._key(key)} is missing offsite") from exc
            raise self._error(exc, "downloading", key) from exc

    def local_path(self, key: str) -> Path | None:
        return None  # objects are downloaded

    def stat(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(exc, "checking", key) from exc
        except Exception as exc:
            raise self._error(exc, "checking", key) from exc

    def list(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        base = self._key("")
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(base) :]] = int(obj["Size"])
        except Exception as exc:
            raise self._error(exc, "listing", prefix) from exc
        return out

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._error(exc, "deleting", key) from exc

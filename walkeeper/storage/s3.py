"""A repository in an S3 bucket (AWS, MinIO, Ceph RGW, any S3-compatible store).

With storage/s3_client.py (the client, error mapping) the only modules that import boto3, and only when an
``s3://`` repository is opened: archive_command runs once per WAL segment and must not pay ~300 ms for an SDK
it does not use.

Atomicity comes from S3 itself: an object becomes visible only when a single PUT or a
CompleteMultipartUpload succeeds, so a reader never sees a partial object. A failed stream aborts
its multipart upload; a killed process leaves an incomplete upload that no reader can see, which
``list_leftovers`` reports and ``remove_leftover`` aborts (walkeeper expire does so for dead writers;
a lifecycle rule "abort incomplete multipart uploads after N days" is a good second net).

``overwrite=False`` sends ``If-None-Match: *``, which AWS S3 (since 2024), MinIO and moto evaluate
atomically. Stores without conditional writes: set ``[s3] conditional_writes = false`` and the
backend checks with HEAD first, which is best effort (a writer racing between HEAD and PUT wins).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from walkeeper.core.config import S3Config
from walkeeper.core.errors import AlreadyExists, ConfigError, NotFound, StorageError, TransientError
from walkeeper.storage.base import (
    TEMP_PREFIX,
    Leftover,
    ObjectInfo,
    Source,
    iter_source,
    validate_key,
    validate_leftover,
    validate_prefix,
)
from walkeeper.storage.retry import RetryPolicy
from walkeeper.storage.s3_client import TRANSIENT_CODES, Body, make_client, map_error, require_sdk

T = TypeVar("T")
MIN_PART = 5 * 1024 * 1024  # S3's smallest allowed part (except the last)
log = logging.getLogger(__name__)
MAX_SINGLE_PUT = 5 * 1024**3
class S3Storage:
    """Objects under ``prefix`` in ``bucket``; keys map to ``prefix + key``."""

    def __init__(self, bucket: str, prefix: str = "", settings: S3Config | None = None,
                 retry: RetryPolicy | None = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.settings = settings or S3Config()
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._retry = retry or RetryPolicy()
        self._conditional = self.settings.conditional_writes
        self._client_lock = threading.Lock()
        self._client_obj: Any = None
        if self.settings.multipart_chunk_size < MIN_PART:
            raise ConfigError(f"[s3] multipart_chunk_size must be at least {MIN_PART} bytes (an S3 limit)")
        if self.settings.max_concurrency < 1:
            raise ConfigError("[s3] max_concurrency must be at least 1")

    @classmethod
    def from_url(cls, url: str, options: Any = None) -> S3Storage:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"invalid S3 repository URL {url!r}", hint='use repo = "s3://bucket/prefix"')
        if parts.query or parts.fragment:
            raise ConfigError(f"S3 repository URL {url!r} must not have a query or fragment")
        prefix = parts.path.strip("/")
        if prefix:
            validate_key(prefix)
        settings = getattr(options, "s3", None) or S3Config()
        require_sdk()
        return cls(parts.netloc, prefix, settings, RetryPolicy.from_options(options))

    # -- client and error mapping ---------------------------------------------------------

    @property
    def _client(self) -> Any:
        """The boto3 client, built on first use (importing boto3 then, not before)."""
        with self._client_lock:
            if self._client_obj is None:
                self._client_obj = self._make_client()
            return self._client_obj

    def _make_client(self) -> Any:
        return make_client(self.settings, self.url)

    def _error(self, exc: Exception, action: str, key: str | None = None) -> StorageError:
        """Translate a botocore failure into our hierarchy; NotFound only for a missing object."""
        return map_error(exc, action, key, url=self.url, bucket=self.bucket, settings=self.settings)

    def _call(self, action: str, key: str | None, func: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return func()
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, action, key) from None

    def _extra_args(self, metadata: dict[str, str] | None) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {}
        if metadata:
            args["Metadata"] = dict(metadata)
        if s.storage_class:
            args["StorageClass"] = s.storage_class
        if s.sse:
            args["ServerSideEncryption"] = s.sse
            if s.sse == "aws:kms" and s.sse_kms_key_id:
                args["SSEKMSKeyId"] = s.sse_kms_key_id
        return args

    # -- the Storage interface ------------------------------------------------------------

    def put(self, key: str, source: Source, *, overwrite: bool = True,
            metadata: dict[str, str] | None = None) -> None:
        """A single PUT up to one chunk (every WAL segment), a multipart upload for longer streams."""
        full = self.prefix + validate_key(key)
        extra = self._extra_args(metadata)
        if isinstance(source, bytes | bytearray | memoryview) and len(source) <= MAX_SINGLE_PUT:
            self._put_single(key, full, bytes(source), overwrite, extra)
            return
        parts = _parts(iter_source(source), self.settings.multipart_chunk_size)
        first = next(parts, b"")
        if len(first) < self.settings.multipart_chunk_size:  # the whole stream fits one request
            self._put_single(key, full, first, overwrite, extra)
            return
        self._put_multipart(key, full, first, parts, overwrite, extra)

    def _refuse_existing(self, key: str, full: str) -> None:
        """Best-effort no-clobber for stores without conditional writes (a racing writer can win)."""
        try:
            self._call("checking", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        except NotFound:
            return
        raise AlreadyExists(f"object {key} already exists")

    def _put_single(self, key: str, full: str, body: bytes, overwrite: bool, extra: dict[str, Any]) -> None:
        args = dict(Bucket=self.bucket, Key=full, Body=body, **extra)
        if not overwrite:
            if self._conditional:
                try:
                    self._call("storing", key, lambda: self._client.put_object(**args, IfNoneMatch="*"))
                    return
                except StorageError as exc:
                    if "NotImplemented" not in str(exc):
                        raise
                    self._conditional = False  # this store ignores nothing, it refuses: fall back
            self._refuse_existing(key, full)
        self._call("storing", key, lambda: self._client.put_object(**args))

    def _put_multipart(self, key: str, full: str, first: bytes, rest: Iterator[bytes], overwrite: bool,
                       extra: dict[str, Any]) -> None:
        """Stream parts with at most ``max_concurrency`` in flight; abort the upload on any failure."""
        if not overwrite and not self._conditional:
            self._refuse_existing(key, full)
        created = self._retrying(lambda: self._call("starting upload of", key, lambda: (
            self._client.create_multipart_upload(Bucket=self.bucket, Key=full, **extra))))
        upload_id = created["UploadId"]
        parts: dict[int, str] = {}
        try:
            with ThreadPoolExecutor(self.settings.max_concurrency, thread_name_prefix="wk-s3-part") as pool:
                pending: set[Future[None]] = set()
                number, body = 1, first
                while body:
                    if len(pending) >= self.settings.max_concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            fut.result()
                    pending.add(pool.submit(self._upload_part, key, full, upload_id, number, body, parts))
                    number += 1
                    body = next(rest, b"")  # read the next part while others upload
                for fut in pending:
                    fut.result()
            completion: dict[str, Any] = {"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]}
            args = dict(Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload=completion)
            if not overwrite and self._conditional:
                args["IfNoneMatch"] = "*"
            try:
                self._retrying(lambda: self._call("completing upload of", key, lambda: (
                    self._client.complete_multipart_upload(**args))))
            except (StorageError, NotFound):
                # An earlier attempt of ours may have completed the upload and lost
                # only the answer: the upload is then gone (NoSuchUpload) or the key taken (If-None-Match).
                if not self._holds_exactly(key, full, parts):
                    raise
                log.info("completing %s: an earlier attempt had completed it; the stored object is ours", key)
        except BaseException:
            # Never leave parts behind (they cost money and are invisible to readers anyway).
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    def _holds_exactly(self, key: str, full: str, parts: dict[int, str]) -> bool:
        """Whether the stored object is the multipart upload of exactly these parts (by its ETag).

        S3, MinIO and moto give a completed multipart object the ETag md5(part digests) + "-" + count;
        a store that does not (SSE-KMS) simply never matches, and the completion error stands.
        """
        digest = hashlib.md5(usedforsecurity=False)
        for number in sorted(parts):
            digest.update(bytes.fromhex(parts[number].strip('"')))
        try:
            head = self._call("checking", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        except StorageError:
            return False
        return str(head.get("ETag", "")).strip('"') == f"{digest.hexdigest()}-{len(parts)}"

    def _upload_part(self, key: str, full: str, upload_id: str, number: int, body: bytes,
                     parts: dict[int, str]) -> None:
        response = self._retrying(lambda: self._call(f"uploading part {number} of", key, lambda: (
            self._client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number,
                                     Body=body))))
        parts[number] = response["ETag"]

    def _retrying(self, func: Callable[[], T]) -> T:
        """Retry one step of a streamed upload here: the stream it came from cannot be replayed."""
        delays = self._retry.delays()
        while True:
            try:
                return func()
            except TransientError:
                delay = next(delays, None)
                if delay is None:
                    raise
                time.sleep(delay)

    def open(self, key: str) -> BinaryIO:
        """An optimistic GET (no HEAD first); the body streams and a short read is an error."""
        full = self.prefix + validate_key(key)
        response = self._call("reading", key, lambda: self._client.get_object(Bucket=self.bucket, Key=full))
        return io.BufferedReader(Body(response["Body"], self._error, key), 1024 * 1024)  # type: ignore[arg-type]

    def get(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def stat(self, key: str) -> ObjectInfo:
        full = self.prefix + validate_key(key)
        head = self._call("reading", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp(),
                          dict(head.get("Metadata") or {}))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """ListObjectsV2 pages; S3 returns keys in UTF-8 byte order, which is our key order."""
        validate_prefix(prefix)
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after is not None:
            args["StartAfter"] = self.prefix + start_after
        token: str | None = None
        while True:
            page_args = dict(args, ContinuationToken=token) if token else args
            page = self._call("listing", prefix or "/", lambda a=page_args: self._client.list_objects_v2(**a))
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix):]
                if any(part.startswith(TEMP_PREFIX) for part in key.split("/")):
                    continue
                yield ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete(self, keys: Iterable[str]) -> None:
        """DeleteObjects in batches of 1000; S3 reports deleting a missing key as success."""
        batch = [self.prefix + validate_key(k) for k in keys]
        for start in range(0, len(batch), 1000):
            objects = [{"Key": k} for k in batch[start:start + 1000]]
            response = self._call("deleting objects in", None, lambda o=objects: self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": o, "Quiet": True}))
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                code = first.get("Code", "")
                cls = TransientError if code in TRANSIENT_CODES else StorageError
                raise cls(f"could not delete {len(errors)} objects in {self.url}, e.g. {first.get('Key')}: "
                          f"{code}: {first.get('Message', '')}")

    def list_leftovers(self, prefix: str = "") -> Iterator[Leftover]:
        """Incomplete multipart uploads (with the bytes their parts hold) and hidden temp objects."""
        validate_prefix(prefix)
        found = [Leftover("upload", key, *self._upload_parts(key, upload_id, initiated), upload_id)
                 for key, upload_id, initiated in self._uploads(prefix)]
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        token: str | None = None
        while True:  # our puts never write temp objects, but a foreign tool's may lie here
            page_args = dict(args, ContinuationToken=token) if token else args
            page = self._call("listing", prefix or "/", lambda a=page_args: self._client.list_objects_v2(**a))
            for item in page.get("Contents", []):
                path = item["Key"][len(self.prefix):]
                if path.rpartition("/")[2].startswith(TEMP_PREFIX):
                    found.append(Leftover("temp", path, int(item["Size"]), item["LastModified"].timestamp()))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        return iter(sorted(found, key=lambda f: (f.path, f.upload_id)))

    def _uploads(self, prefix: str) -> Iterator[tuple[str, str, float]]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            page = self._call("listing uploads in", prefix or "/", lambda a=dict(args): (
                self._client.list_multipart_uploads(**a)))
            for upload in page.get("Uploads", []):
                key = upload["Key"][len(self.prefix):]
                if upload["Key"].startswith(self.prefix + prefix):
                    yield key, upload["UploadId"], upload["Initiated"].timestamp()
            if not page.get("IsTruncated"):
                return
            args.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))

    def _upload_parts(self, key: str, upload_id: str, initiated: float) -> tuple[int, float]:
        """Bytes held by an upload's parts, and its last activity (the newest part, else its start)."""
        total, last = 0, initiated
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key, "UploadId": upload_id}
        while True:
            try:
                page = self._call("listing parts of", key, lambda a=dict(args): self._client.list_parts(**a))
            except (NotFound, StorageError):
                return total, last  # completed or aborted meanwhile
            for part in page.get("Parts", []):
                total += int(part.get("Size", 0))
                if part.get("LastModified") is not None:
                    last = max(last, part["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return total, last
            args["PartNumberMarker"] = page.get("NextPartNumberMarker", 0)

    def remove_leftover(self, leftover: Leftover) -> None:
        full = self.prefix + validate_leftover(leftover)
        if leftover.kind == "upload":
            try:
                self._call("aborting upload of", leftover.path, lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=leftover.upload_id))
            except StorageError as exc:
                if "NoSuchUpload" not in str(exc):
                    raise
            except NotFound:
                pass
        elif leftover.kind == "temp":
            self._call("removing", leftover.path, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    def close(self) -> None:
        with self._client_lock:
            if self._client_obj is not None:
                with contextlib.suppress(Exception):
                    self._client_obj.close()
                self._client_obj = None


def _parts(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a stream into parts of exactly ``size`` bytes (the last one shorter), holding one part."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)



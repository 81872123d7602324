"""Where a model registry keeps its bytes: a directory, Redis, or S3-compatible storage.

Each backend is a ``models.registry.RegistryBlobs`` (structurally; connectors import no
models): it moves the weights bytes, the manifest text and the labels document, and makes a
version write create-only so versions stay immutable. Layouts:

* directory ``ROOT/{name}/versions/{N}/{weights.safetensors,manifest.json}`` and
  ``ROOT/{name}/labels.json``; a version is built in a temporary directory and renamed into
  place (a rename onto an existing version fails), the labels file is replaced atomically;
* Redis hash ``registry:{name}:v:{N}`` (``weights``, ``manifest``), sorted set
  ``registry:{name}:versions``, string ``registry:{name}:labels``, set ``registry:names``;
  the create is one Lua script (exists? then nothing); on a Redis Cluster, where those keys
  live in different slots, the script creates the version hash and the index follows it;
* S3 ``{prefix}/{name}/versions/{N}/weights.safetensors`` and ``.../manifest.json``,
  ``{prefix}/{name}/labels.json``, through boto3 (any S3-compatible endpoint); the manifest
  is written last and with ``If-None-Match: *``, so a version exists once its manifest does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from streaminfer.connectors.redis_client import (
    CLUSTER_SCHEMES,
    RedisClient,
    connect,
    is_cluster,
    write_in_order,
)
from streaminfer.errors import ConfigError, RegistryError

__all__ = ["DirectoryRegistryBlobs", "RedisRegistryBlobs", "S3RegistryBlobs",
           "registry_blobs_from_url"]

WEIGHTS, MANIFEST, LABELS = "weights.safetensors", "manifest.json", "labels.json"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DirectoryRegistryBlobs:
    """A registry in a local (or shared, e.g. NFS) directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name / "versions"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir()
                      if p.name.isdigit() and (p / MANIFEST).is_file())

    def create(self, name: str, version: int, weights: bytes, manifest: str) -> bool:
        folder = self.root / name / "versions"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / str(version)
        if final.exists():
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder))
        try:
            (tmp / WEIGHTS).write_bytes(weights)
            (tmp / MANIFEST).write_text(manifest, encoding="utf-8")
            try:
                os.rename(tmp, final)  # fails if another writer created ``final`` meanwhile
            except OSError:
                return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def read(self, name: str, version: int) -> tuple[bytes, str]:
        folder = self.root / name / "versions" / str(version)
        try:
            return (folder / WEIGHTS).read_bytes(), (folder / MANIFEST).read_text("utf-8")
        except FileNotFoundError:
            raise RegistryError(f"{name} has no version {version} in {self.root}") from None

    def read_labels(self, name: str) -> str | None:
        path = self.root / name / LABELS
        return path.read_text("utf-8") if path.is_file() else None

    def write_labels(self, name: str, text: str) -> None:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".labels-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, folder / LABELS)

    def __repr__(self) -> str:
        return f"DirectoryRegistryBlobs({str(self.root)!r})"


_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'weights', ARGV[1], 'manifest', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"""

# The same for one key (Redis Cluster): the index is written by the caller afterwards.
_CREATE_ONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'weights', ARGV[1], 'manifest', ARGV[2])
return 1
"""


class RedisRegistryBlobs:
    """A registry in Redis (mind its memory: every version stays until deleted)."""

    def __init__(self, client: RedisClient, prefix: str = "registry") -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisRegistryBlobs needs decode_responses=False: weights are "
                             "binary")
        self.client, self.prefix = client, prefix
        self._cluster = is_cluster(client)
        self._create = client.register_script(_CREATE_ONE if self._cluster else _CREATE)

    def _key(self, name: str, *parts: object) -> str:
        return ":".join([self.prefix, name, *map(str, parts)])

    def names(self) -> list[str]:
        return sorted(_text(m) for m in self.client.smembers(f"{self.prefix}:names"))

    def versions(self, name: str) -> list[int]:
        return [int(_text(m)) for m in self.client.zrange(self._key(name, "versions"), 0, -1)]

    def create(self, name: str, version: int, weights: bytes, manifest: str) -> bool:
        keys = [self._key(name, "v", version), self._key(name, "versions"),
                f"{self.prefix}:names"]
        if not self._cluster:
            return bool(self._create(keys=keys, args=[weights, manifest, version, name]))
        # Cluster: the three keys live in different slots. Create the version (atomic on its
        # own key), then index it; the index steps are idempotent, so they also run when the
        # version exists (a writer that crashed after its create is indexed by the next).
        created = bool(self._create(keys=keys[:1], args=[weights, manifest]))
        self.client.zadd(keys[1], {str(version): version})
        self.client.sadd(keys[2], name)
        return created

    def read(self, name: str, version: int) -> tuple[bytes, str]:
        weights, manifest = self.client.hmget(self._key(name, "v", version),
                                              ["weights", "manifest"])
        if weights is None or manifest is None:
            raise RegistryError(f"{name} has no version {version} in Redis "
                                f"({self._key(name, 'v', version)})")
        return weights, _text(manifest)

    def read_labels(self, name: str) -> str | None:
        value = self.client.get(self._key(name, "labels"))
        return None if value is None else _text(value)

    def write_labels(self, name: str, text: str) -> None:
        write_in_order(self.client, [lambda p: p.set(self._key(name, "labels"), text),
                                     lambda p: p.sadd(f"{self.prefix}:names", name)])

    def __repr__(self) -> str:
        return f"RedisRegistryBlobs({self.client!r}, prefix={self.prefix!r})"


class S3RegistryBlobs:
    """A registry in an S3 bucket (AWS, MinIO, Ceph, ...) through boto3."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None,
                 endpoint_url: str | None = None, region: str | None = None) -> None:
        if client is None:
            import boto3  # only for S3 registries

            client = boto3.client("s3", endpoint_url=endpoint_url,
                                  region_name=region or os.environ.get("AWS_DEFAULT_REGION",
                                                                       "us-east-1"))
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def _key(self, *parts: object) -> str:
        return "/".join([*([self.prefix] if self.prefix else []), *map(str, parts)])

    def _list(self, prefix: str, delimiter: str = "/") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter=delimiter):
            out += [p["Prefix"][len(prefix):].strip("/") for p in page.get("CommonPrefixes", [])]
        return out

    def names(self) -> list[str]:
        return sorted(self._list(self._key("") if self.prefix else ""))

    def versions(self, name: str) -> list[int]:
        found = self._list(self._key(name, "versions", ""))
        return sorted(int(v) for v in found if v.isdigit()
                      and self._exists(self._key(name, "versions", v, MANIFEST)))

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError:
            return False
        return True

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def create(self, name: str, version: int, weights: bytes, manifest: str) -> bool:
        from botocore.exceptions import ClientError

        manifest_key = self._key(name, "versions", version, MANIFEST)
        if self._exists(manifest_key):
            return False
        self.client.put_object(Bucket=self.bucket, Key=self._key(name, "versions", version,
                                                                  WEIGHTS), Body=weights)
        try:
            self.client.put_object(Bucket=self.bucket, Key=manifest_key,
                                   Body=manifest.encode(), IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def read(self, name: str, version: int) -> tuple[bytes, str]:
        manifest = self._get(self._key(name, "versions", version, MANIFEST))
        weights = self._get(self._key(name, "versions", version, WEIGHTS))
        if manifest is None or weights is None:
            raise RegistryError(f"{name} has no version {version} in s3://{self.bucket}/"
                                f"{self._key(name)}")
        return weights, manifest.decode()

    def read_labels(self, name: str) -> str | None:
        data = self._get(self._key(name, LABELS))
        return None if data is None else data.decode()

    def write_labels(self, name: str, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(name, LABELS),
                               Body=text.encode())

    def __repr__(self) -> str:
        return f"S3RegistryBlobs(s3://{self.bucket}/{self.prefix})"


def registry_blobs_from_url(url: str, *, s3_endpoint: str | None = None) -> Any:
    """The backend a URL names: a path or ``file:///path``, ``redis://...``,
    ``s3://bucket/prefix`` (``s3_endpoint`` or ``AWS_ENDPOINT_URL`` for a non-AWS server)."""
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
        return RedisRegistryBlobs(connect(url))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"registry URL {url!r}: expected s3://bucket/prefix")
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        return S3RegistryBlobs(parsed.netloc, parsed.path, endpoint_url=endpoint)
    if parsed.scheme == "file":
        return DirectoryRegistryBlobs(parsed.path)
    if "://" in url:
        raise ConfigError(f"registry URL must be a path, file://, redis:// or s3://, got "
                          f"{url!r}")
    with contextlib.suppress(OSError):
        Path(url).mkdir(parents=True, exist_ok=True)
    return DirectoryRegistryBlobs(url)

"""Images by reference: fetch the bytes behind image URIs and paths, many at once, with retries.

A posts column may hold `s3://bucket/key`, `gs://bucket/key`, `az://container/key` (or
`abfs[s]://container@account.dfs.core.windows.net/key`), `http(s)://host/path`, or a local path. `Fetcher` gets
them on an asyncio loop in its own thread, through obstore (Rust object_store: it releases the GIL) for the object
stores and aiohttp for http(s) (its resolver is where the address policy checks every address it may connect to):

- a bounded number of GETs in flight (`FetchConfig.concurrency`), all stores together;
- one store (client and connection pool) per (scheme, bucket or host), built once and reused for the run;
- one GET per object, no HEAD; connect and request timeouts; http(s) redirects followed here, hop by hop;
- image references are untrusted (ctmwa_batch.imagepolicy): a size cap on every store, an address policy on every
  http(s) hop, local paths confined to allowed roots; a refusal is decided before the bytes are read into memory;
- retries here, not in obstore (its own are off, so every try is counted): exponential backoff with full jitter on
  5xx, 429, 408, resets, refused connections and timeouts, within `max_tries` and a time budget per object.

What a row gets (DESIGN.md section 8: a missing object is a fact about the row, a store that is down is a fact about
the run):

    404, NoSuchKey, 410         None, "image not found: <uri>"; never retried
    403, 401                    None, "image permission denied (HTTP 403): <uri>"; counted, and the shard fails
                                (FetchDenied) past `max_denied` rows that are more than `max_denied_share` of its fetches
    transient past the budget   the shard fails (FetchFailed: nothing is committed, the orchestrator retries it),
                                unless `max_failures` allows the row: None, "image fetch failed after K tries: ..."
    other 4xx                   None, "image fetch refused (HTTP 400): <uri>"; never retried
    bad URI, unknown scheme     None, "malformed image URI ..." / "unsupported image URI scheme ..."
    above max_image_bytes       None, "image too large: <uri> (> N bytes)"; never retried
    internal address, a path    None, "image refused: <uri> resolves to <address> (<range>); allow it with ...",
    outside the roots, a device       "image refused: <path> ... is outside the allowed image roots ..."; never retried
    a host name that does not   None, "image host not found: <uri>"; never retried
    resolve

The stores take the one storage configuration (ctmwa_batch.io.storage): the AWS environment first, then the explicit
options; no secret reaches an error text (storage.redact).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from ctmwa_batch.config import DEFAULT_FETCH_CONCURRENCY, ScoreConfig
from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.imagepolicy import (
    DEFAULT_MAX_IMAGE_BYTES,
    MAX_REDIRECTS,
    AddressPolicy,
    ImageRefused,
    ImageTooLarge,
    LocalRoots,
    parse_list,
    too_large,
)
from ctmwa_batch.io import storage

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

logger = logging.getLogger(__name__)

# Scheme as written -> the store kind that serves it.
SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "az",
    "azure": "az",
    "abfs": "az",
    "abfss": "az",
    "http": "http",
    "https": "http",
    "file": "file",
}
SUPPORTED = "s3://, gs://, az://, abfs(s)://, http(s):// or a path"
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_STATUS = re.compile(r"status code: (\d{3})")
MAX_ERROR_CHARS = 160
POLICY_ERROR_CHARS = 400  # a refusal's reason carries its remedy (the flag to set): never cut short of it
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(CtmwaError):
    """Image fetches failed past their retries (a store down, throttling, unreachable) beyond what the run allows:
    the shard fails and nothing is committed, so a retry later scores it with its images."""


class FetchDenied(CtmwaError):
    """Too many image fetches were refused for permission (403/401): a configuration error, not a fact about rows."""


@dataclass(frozen=True)
class FetchConfig:
    """How images by reference are fetched; the defaults suit an object store at tens of ms per request."""

    concurrency: int = DEFAULT_FETCH_CONCURRENCY  # GETs in flight per worker, all stores together
    connect_timeout_s: float = 5.0  # opening a connection
    request_timeout_s: float = 30.0  # one GET, sending to last byte
    max_tries: int = 8  # per object, the first included
    retry_budget_s: float = 60.0  # per object: no new try starts after this long since its first
    backoff_initial_s: float = 0.1  # the first backoff's ceiling; doubles per try (full jitter below it)
    backoff_max_s: float = 5.0  # a backoff's ceiling at most
    max_failures: int = 0  # rows per run that may end image_missing after transient failures outlast the budget
    max_denied: int = 10  # permission-denied rows a run tolerates whatever their share
    max_denied_share: float = 0.1  # beyond max_denied, the share of fetched objects that may be denied
    # ---- untrusted image references (ctmwa_batch.imagepolicy)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # an image above it is image_missing, never read whole
    allow_image_hosts: tuple[str, ...] = ()  # hosts, host:port, addresses, CIDRs http(s) may reach in refused ranges
    image_roots: tuple[str, ...] = ()  # folders local image paths may be read from (the job adds a local input's)
    max_redirects: int = MAX_REDIRECTS  # http(s) redirect hops per image, each checked by the address policy

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"fetch concurrency {self.concurrency}: must be at least 1")
        if self.max_tries < 1:
            raise ValueError(f"max_tries {self.max_tries}: must be at least 1")
        if self.max_failures < 0:
            raise ValueError(f"max_fetch_failures {self.max_failures}: must be 0 or more")
        if self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes {self.max_image_bytes}: must be at least 1")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects {self.max_redirects}: must be 0 or more")
        object.__setattr__(self, "allow_image_hosts", parse_list(self.allow_image_hosts))
        object.__setattr__(self, "image_roots", parse_list(self.image_roots))
        AddressPolicy(self.allow_image_hosts)  # a bad entry fails here, naming it


def local_input_root(input_path: str | Path) -> str | None:
    """The folder tree local image paths may come from by default: a local input's folder (a file's parent), or
    None when the input is in a store (then only --image-root folders are readable)."""
    import pyarrow.fs as pafs

    fs, path = storage.open_filesystem(str(input_path))
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    return path if fs.get_file_info(path).type == pafs.FileType.Directory else str(Path(path).parent)


def fetch_config(score: ScoreConfig, input_root: str | None = None) -> FetchConfig:
    """The fetcher's configuration a scoring config asks for; `input_root` (a local input's folder) is an allowed
    image root besides the configured ones."""
    return FetchConfig(
        concurrency=score.fetch_concurrency,
        max_failures=score.max_fetch_failures,
        max_image_bytes=score.max_image_bytes,
        allow_image_hosts=score.allow_image_hosts,
        image_roots=(*score.image_roots, *([input_root] if input_root else [])),
    )


@dataclass
class FetchStats:
    """What the fetcher did in one run (since `begin`)."""

    objects: int = 0  # URIs and paths asked for
    requests: int = 0  # GETs sent (tries included) and local reads
    retries: int = 0  # tries after the first
    bytes: int = 0  # bytes received
    not_found: int = 0
    denied: int = 0
    failed: int = 0  # transient failures past the budget (allowed by max_failures, else the run failed)
    refused: int = 0  # other 4xx
    invalid: int = 0  # malformed URI or unsupported scheme
    too_large: int = 0  # above max_image_bytes (refused unread or cut off)
    blocked: int = 0  # refused by the address policy or the local path rules
    seconds: float = 0.0  # wall time with at least one request in flight
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds per successful request

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts and p50/p95 request latency in ms."""
        d = {k: v for k, v in asdict(self).items() if k != "latencies"}
        d["seconds"] = round(self.seconds, 3)
        lat = sorted(self.latencies)
        for name, q in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95)):
            d[name] = round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None
        return d


@dataclass(frozen=True)
class _Outcome:
    data: bytes | None
    error: str | None
    kind: str  # ok | not_found | denied | failed | refused | invalid | error


def shown(location: str) -> str:
    """A location as errors show it: a query string (a signed URL's signature) is left out."""
    head, sep, _ = location.partition("?")
    return f"{head}?..." if sep and "://" in head else location


def _short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = storage.redact(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cause(e: BaseException) -> str:
    """The useful part of an obstore error: 'Server returned ... 503 Service Unavailable', 'HTTP error: ...'."""
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "request timed out"
    text = str(e).split("\n\nDebug source", 1)[0].strip()
    if (
        " - " in text
    ):  # "Generic S3 error: Error performing GET <url> in 3ms - Server returned non-2xx status code: ..."
        text = text.rsplit(" - ", 1)[1]
    text = text.split("<?xml", 1)[0].rstrip(": ")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _no_such_host(e: BaseException) -> bool:
    """A host name that does not resolve (NXDOMAIN, no address): a fact about the row's URL, not a store outage
    (EAI_AGAIN, a resolver that is down, stays transient)."""
    import socket

    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return cause.errno in {getattr(socket, n, None) for n in ("EAI_NONAME", "EAI_NODATA")} - {None}
        cause = getattr(cause, "os_error", None) or cause.__cause__
    return False


def _status(e: BaseException) -> int | None:
    m = _STATUS.search(str(e))
    return int(m.group(1)) if m else None


def classify(e: BaseException) -> str:
    """not_found | denied | refused (other 4xx: permanent) | transient, for an exception of one try."""
    status = _status(e)
    name = type(e).__name__
    if status in (404, 410) or (status is None and (isinstance(e, FileNotFoundError) or name == "NotFoundError")):
        return "not_found"
    if status in (401, 403) or name in ("PermissionDeniedError", "UnauthenticatedError"):
        return "denied"
    if status is not None and status < 400:  # a 3xx that is not a redirect (300, 304, 305): permanent
        return "refused"
    if _no_such_host(e):
        return "no_host"
    if status is not None and 400 <= status < 500 and status not in TRANSIENT_STATUS:
        return "refused"
    return "transient"  # 5xx, 429, timeouts, resets, refused connections, anything unknown: retried


# --------------------------------------------------------------------------------------------------- stores


def _seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


def _s3_store(bucket: str, client: ClientConfig, retry: RetryConfig) -> Any:
    from obstore.store import S3Store

    opts = storage.options()
    config: S3Config = {}
    endpoint = storage.s3_endpoint(opts)
    if endpoint:
        # obstore ranks AWS_ENDPOINT_URL_S3 from the environment above a plain `endpoint`; this key ranks with it.
        config["aws_endpoint_url_s3"] = endpoint if "://" in endpoint else f"https://{endpoint}"
        if config["aws_endpoint_url_s3"].startswith("http://"):
            client = {**client, "allow_http": True}
    for key, name in (
        ("region", "region"),
        ("access_key_id", "access_key_id"),
        ("secret_access_key", "secret_access_key"),
        ("session_token", "token"),
    ):
        if opts.get(key):
            config[name] = opts[key]  # type: ignore[literal-required]  # the names above are S3Config keys
    provider = None
    if opts.get("profile") and not opts.get("access_key_id"):
        try:
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider
        except ImportError as e:
            raise storage.StorageError(
                f"storage option profile={opts['profile']!r} needs boto3 for image fetches; pip install boto3, or give access_key_id / secret_access_key"
            ) from e
        provider = Boto3CredentialProvider(boto3.Session(profile_name=opts["profile"]))
    return S3Store(bucket, config=config, client_options=client, retry_config=retry, credential_provider=provider)


class _Stores:
    """One obstore store per (scheme, bucket or container) for s3/gs/az, made on first use and kept for the fetcher's
    life (http(s) goes through _HTTP)."""

    def __init__(self, config: FetchConfig):
        self._client: ClientConfig = {
            "connect_timeout": _seconds(config.connect_timeout_s),
            "timeout": _seconds(config.request_timeout_s),
        }
        self._retry: RetryConfig = {"max_retries": 0}  # retries are ours (counted, classified, budgeted)
        self._stores: dict[tuple[str, str], Any] = {}

    def __len__(self) -> int:
        return len(self._stores)

    def get(self, kind: str, scheme: str, netloc: str) -> Any:
        key = (kind, f"{scheme}://{netloc}" if kind != "s3" else netloc)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = self._make(kind, scheme, netloc)
            logger.debug("image store %s %s", kind, storage.redact(key[1]))
        return store

    def _make(self, kind: str, scheme: str, netloc: str) -> Any:
        from obstore.store import AzureStore, GCSStore

        if kind == "s3":
            return _s3_store(netloc, self._client, self._retry)
        if kind == "gs":
            return GCSStore(netloc, client_options=self._client, retry_config=self._retry)
        if kind == "az":
            if "@" in netloc:  # abfs://container@account.dfs.core.windows.net
                return AzureStore.from_url(
                    f"{scheme}://{netloc}", client_options=self._client, retry_config=self._retry
                )
            return AzureStore(netloc, client_options=self._client, retry_config=self._retry)
        raise AssertionError(f"no object store for {kind}")  # internal: http(s) is _HTTP's


class _AddressRefused(Exception):  # noqa: N818 - not an OSError on purpose: aiohttp passes it through unwrapped
    """Raised by the checking resolver: `address` (of `host`) is refused by the address policy."""

    def __init__(self, host: str, address: str):
        super().__init__(f"{host} resolves to {address}")
        self.host, self.address = host, address


class _HTTP:
    """http(s) GETs through one aiohttp session (a connection pool shared by every host), made on the fetcher's loop
    on first use. Its resolver applies the address policy to every address it returns, and the connector connects only
    to those; an address in the URL itself is checked before the request, and the connected peer once more after.
    Redirects are followed here, each hop checked, at most `max_redirects`. The size cap holds on the declared length
    (refused unread) and on the body as it streams (cut off)."""

    def __init__(self, config: FetchConfig, policy: AddressPolicy):
        self.config = config
        self.policy = policy
        self._session: Any = None

    def _open(self) -> Any:
        import aiohttp
        from aiohttp.abc import AbstractResolver
        from aiohttp.resolver import DefaultResolver

        policy = self.policy

        class CheckingResolver(AbstractResolver):
            def __init__(self) -> None:
                self._inner = DefaultResolver()

            async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[Any]:
                found = await self._inner.resolve(host, port, family)
                for entry in found:  # one refused address refuses the name (no rebinding between tries)
                    if policy.refusal(host, port, entry["host"]) is not None:
                        raise _AddressRefused(host, entry["host"])
                return found

            async def close(self) -> None:
                await self._inner.close()

        c = self.config
        connector = aiohttp.TCPConnector(
            limit=c.concurrency, limit_per_host=0, resolver=CheckingResolver(), ttl_dns_cache=60
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=c.request_timeout_s, sock_connect=c.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),  # no state carried from one row's host to another's
            headers={"User-Agent": "ctmwa-batch"},
            trust_env=False,  # no proxy from the environment: the policy checks the address connected to
        )

    @property
    def open(self) -> int:
        """1 when the session (the http(s) client) is made, else 0: how it counts among the stores."""
        return int(self._session is not None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check_literal(self, where: str, host: str, port: int | None, via: str | None) -> None:
        if not _is_address(host):
            return  # a name: the resolver checks what it resolves to
        refused = self.policy.refused(where, host, port, host, redirected_to=via)
        if refused is not None:
            raise refused

    async def get(self, location: str) -> bytes:
        """The body of `location`; ImageRefused / ImageTooLarge (permanent), _HTTPStatus, or aiohttp's errors."""
        import aiohttp
        import yarl

        if self._session is None:
            self._session = self._open()
        where = shown(location)
        try:
            url = _request_url(location)
        except (ValueError, TypeError) as e:
            raise _Malformed(f"malformed image URI {where}: {e}") from e
        via: str | None = None
        for _ in range(self.config.max_redirects + 1):
            host, port = url.raw_host, url.port
            if not host or url.scheme not in ("http", "https"):
                raise _Malformed(f"malformed image URI {where}: no host" if not host else f"{where}: bad scheme")
            self._check_literal(where, host, port, via)
            try:
                async with self._session.get(url, allow_redirects=False) as resp:
                    transport = resp.connection.transport if resp.connection else None
                    peer = transport.get_extra_info("peername") if transport else None
                    if peer:
                        refused = self.policy.refused(where, host, port, peer[0], redirected_to=via)
                        if refused is not None:
                            resp.close()
                            raise refused
                    if resp.status in REDIRECT_STATUS:
                        target = resp.headers.get("Location")
                        resp.close()
                        if not target:
                            raise ImageRefused(f"image refused: {where} redirects without a Location")
                        try:
                            url = url.join(yarl.URL(target))
                        except (ValueError, TypeError):
                            raise ImageRefused(f"image refused: {where} redirects to an invalid Location") from None
                        via = shown(str(url))
                        if url.scheme not in ("http", "https"):
                            raise ImageRefused(f"image refused: {where} redirects to {via}: only http(s) is followed")
                        continue
                    if not 200 <= resp.status < 300:
                        raise _HTTPStatus(resp.status, resp.reason or "")
                    return await self._body(resp, where)
            except _AddressRefused as e:
                refused = self.policy.refused(where, host, port, e.address, redirected_to=via)
                raise refused or ImageRefused(f"image refused: {where} resolves to {e.address}") from None
            except aiohttp.InvalidURL as e:  # e.g. 127.1 or 2130706433, IPv4 forms aiohttp will not connect to
                raise _Malformed(f"malformed image URI {via or where}: {e}") from None
        raise ImageRefused(f"image refused: {where} redirects more than {self.config.max_redirects} times")

    async def _body(self, resp: Any, where: str) -> bytes:
        cap = self.config.max_image_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            resp.close()  # the connection goes, unread
            raise too_large(where, cap)
        if declared is not None and not resp.headers.get("Content-Encoding"):
            return bytes(await resp.read())  # framed by Content-Length: it cannot grow past the cap
        # Chunked, or compressed: count what arrives. The chunks are kept as they came and joined once at the end,
        # so a body never grows by reallocation (a growing 32 MB buffer is copied at each step, and the allocator
        # keeps what it freed: the process's peak RSS rose with the number of large bodies in flight).
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                chunks.clear()
                resp.close()
                raise too_large(where, cap)
        return b"".join(chunks)


@functools.lru_cache(maxsize=4096)
def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _request_url(location: str) -> Any:
    """The URL to request, as written: existing percent-escapes kept byte for byte (a signed URL's signature covers
    them), only characters a URL cannot carry (spaces, non-ASCII) escaped."""
    import yarl

    if not location.isascii() and not urlsplit(location).netloc.isascii():
        return yarl.URL(location)  # an internationalised host name: yarl encodes it (IDNA)
    return yarl.URL(quote(location, safe=":/?#[]@!$&'()*+,;=%~"), encoded=True)


class _HTTPStatus(Exception):  # noqa: N818 - classified like obstore's errors, by the status in its text
    def __init__(self, status: int, reason: str):
        super().__init__(f"Server returned non-2xx status code: {status} {reason}".rstrip())


class _Malformed(Exception):  # noqa: N818 - a URL aiohttp cannot request: the row's reason
    pass


@dataclass(frozen=True)
class _Target:
    kind: str  # s3 | gs | az | http | file
    scheme: str
    netloc: str  # bucket, container or host (empty for files)
    path: str  # key inside the store, or a local path
    whole: str | None = None  # an http(s) URL, as requested


def parse_location(location: str, base: Path) -> _Target | str:
    """Where an image lives, or the per-row error text of a malformed URI / an unsupported scheme."""
    if "\x00" in location:  # no path or URL holds one; the OS would refuse it deep inside
        return _short(f"malformed image URI {shown(location)!r}: a NUL character")
    if "://" not in location:
        p = Path(location)
        return _Target("file", "file", "", str(p if p.is_absolute() else base / p))
    scheme = location.split("://", 1)[0].lower()
    kind = SCHEMES.get(scheme)
    if kind is None:
        return _short(f"unsupported image URI scheme {scheme!r} in {shown(location)}; use {SUPPORTED}")
    try:
        parts = urlsplit(location)
    except ValueError as e:
        return _short(f"malformed image URI {shown(location)}: {e}")
    if kind == "file":
        return _Target("file", "file", "", unquote(parts.path))
    netloc, path = parts.netloc, parts.path.lstrip("/")
    if not netloc:
        return _short(f"malformed image URI {location}: no {'host' if kind == 'http' else 'bucket'}")
    if not path:
        return _short(f"malformed image URI {location}: no {'path' if kind == 'http' else 'key'}")
    if kind == "http":  # requested as written (percent-escapes and a signed URL's query string kept)
        return _Target(kind, parts.scheme, netloc, unquote(parts.path).lstrip("/"), whole=location)
    return _Target(kind, scheme, netloc, path)


# --------------------------------------------------------------------------------------------------- the fetcher


def _new_loop() -> asyncio.AbstractEventLoop:
    """The fetcher's event loop: uvloop's where it is installed (its transports are C, so the loop's thread holds the
    GIL less per http(s) GET, which the decoding and scoring threads feel), else asyncio's; CTMWA_FETCH_LOOP=asyncio
    picks asyncio's anyway."""
    import os

    if os.environ.get("CTMWA_FETCH_LOOP", "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Fetcher:
    """Fetches image URIs and paths on an asyncio loop in its own thread; `submit` is non-blocking and thread-safe.

    Failure accounting is per run: `begin()` resets the stats and the failure counts (a job calls it per shard).
    """

    def __init__(self, config: FetchConfig | None = None):
        self.config = config or FetchConfig()
        self._stores = _Stores(self.config)
        self._http = _HTTP(self.config, AddressPolicy(self.config.allow_image_hosts))
        self._roots = LocalRoots(self.config.image_roots)
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="image-fetch", daemon=True)
        self._thread.start()
        self._semaphore = asyncio.Semaphore(self.config.concurrency)  # bound to the loop on first use (3.10+)
        self._fatal: CtmwaError | None = None
        self._in_flight = 0
        self._busy_since = 0.0
        self.stats = FetchStats()

    # ---- the run

    def begin(self) -> None:
        """Start a run: fresh stats and failure counts (stores and connections are kept)."""
        self._call(self._reset)

    def _reset(self) -> None:
        self.stats = FetchStats()
        self._fatal = None

    def _call(self, fn: Any) -> Any:
        future: cf.Future = cf.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=60)

    def submit(self, locations: Sequence[str | None], base: Path) -> cf.Future:
        """Start fetching a batch's images; the handle's `result` is (bytes or None, error text or None) per row."""
        return asyncio.run_coroutine_threadsafe(self._batch(list(locations), base), self._loop)

    def submit_windows(self, locations: Sequence[str | None], base: Path) -> list[cf.Future]:
        """`submit` per window of `concurrency` rows, in order: a window's images can be decoded while the next
        window's are still on the way (requests are served first come, first served)."""
        w = self.config.concurrency
        return [self.submit(locations[i : i + w], base) for i in range(0, len(locations), w)] or [self.submit([], base)]

    def result(self, handle: cf.Future) -> tuple[list[bytes | None], list[str | None]]:
        """Wait for a submitted batch; FetchFailed / FetchDenied when the run must fail (nothing committed)."""
        images, errors = handle.result()
        if self._fatal is not None:
            raise self._fatal
        return images, errors

    def fetch(self, locations: Sequence[str | None], base: Path) -> tuple[list[bytes | None], list[str | None]]:
        """submit + result."""
        return self.result(self.submit(locations, base))

    def summary(self) -> dict[str, Any]:
        """This run's stats, JSON-ready (what goes into a shard's marker)."""
        return self._call(
            lambda: (
                self.stats.summary()
                | {"stores": len(self._stores) + self._http.open, "concurrency": self.config.concurrency}
            )
        )

    def close(self) -> None:
        """Cancel what is in flight and stop the loop's thread."""
        if not self._thread.is_alive():
            return
        try:  # the http connections, closed on their loop
            asyncio.run_coroutine_threadsafe(self._http.close(), self._loop).result(timeout=10)
        except Exception as e:  # noqa: BLE001 - closing is best effort
            logger.debug("closing the image http session: %s", e)

        def stop() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_soon(self._loop.stop)

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- on the loop

    async def _batch(self, locations: list[str | None], base: Path) -> tuple[list[bytes | None], list[str | None]]:
        outcomes = await asyncio.gather(*(self._one(loc, base) for loc in locations))
        return [o.data for o in outcomes], [o.error for o in outcomes]

    async def _one(self, location: str | None, base: Path) -> _Outcome:
        try:
            return await self._one_checked(location, base)
        except CtmwaError:
            raise
        except Exception as e:  # noqa: BLE001 - one row's reference never fails the shard (a bug is logged)
            logger.warning("image reference %r: unexpected %s", storage.redact(shown(str(location))), e, exc_info=True)
            self.stats.invalid += 1
            return _Outcome(
                None, _short(f"unusable image reference {shown(str(location))}: {type(e).__name__}"), "invalid"
            )

    async def _one_checked(self, location: str | None, base: Path) -> _Outcome:
        if location is None or location == "":
            return _Outcome(None, None, "absent")
        stats = self.stats
        stats.objects += 1
        target = parse_location(location, base)
        if isinstance(target, str):
            stats.invalid += 1
            return _Outcome(None, target, "invalid")
        if self._fatal is not None:  # the run has failed already: do not keep hammering the store
            return _Outcome(None, "not fetched: the run failed", "error")
        if target.kind == "file":
            outcome = await self._local(location, target)
        elif target.kind == "http":
            outcome = await self._remote(location, lambda: self._http.get(location))
        else:
            try:
                store = self._stores.get(target.kind, target.scheme, target.netloc)
            except CtmwaError:
                raise
            except Exception as e:  # noqa: BLE001 - a store that cannot be built is a configuration error of the run
                stats.invalid += 1
                return _Outcome(
                    None,
                    _short(f"image store for {shown(location)} cannot be configured: {type(e).__name__}: {e}"),
                    "invalid",
                )
            outcome = await self._remote(location, lambda: self._object(store, target.path, location))
        self._account(outcome)
        return outcome

    def _account(self, outcome: _Outcome) -> None:
        stats, c = self.stats, self.config
        if outcome.kind in ("not_found", "denied", "failed", "refused", "too_large", "blocked"):
            setattr(stats, outcome.kind, getattr(stats, outcome.kind) + 1)
        if outcome.kind == "failed" and stats.failed > c.max_failures and self._fatal is None:
            self._fatal = FetchFailed(
                f"{stats.failed} image fetch(es) failed after retries, more than --max-fetch-failures {c.max_failures} "
                f"allows (e.g. {outcome.error}); the image store is down or throttling: nothing is committed and a retry "
                "of the shard scores it later. To commit such rows as image_missing instead, raise --max-fetch-failures "
                "(CTMWA_MAX_FETCH_FAILURES)"
            )
        if (
            outcome.kind == "denied"
            and stats.denied > c.max_denied
            and stats.denied > c.max_denied_share * stats.objects
            and self._fatal is None
        ):
            self._fatal = FetchDenied(
                f"{stats.denied} of {stats.objects} image fetches were refused for permission (e.g. {outcome.error}); "
                "that is a configuration error: check the image store's credentials (AWS_* variables, "
                "CTMWA_STORAGE_OPTIONS, --storage-option) and its bucket policy"
            )

    def _busy(self, delta: int) -> None:
        now = time.perf_counter()
        if self._in_flight == 0 and delta > 0:
            self._busy_since = now
        self._in_flight += delta
        if self._in_flight == 0:
            self.stats.seconds += now - self._busy_since

    async def _local(self, location: str, target: _Target) -> _Outcome:
        async with self._semaphore:
            self._busy(+1)
            t0 = time.perf_counter()
            self.stats.requests += 1
            try:
                data = await asyncio.to_thread(self._roots.read, location, target.path, self.config.max_image_bytes)
            except ImageTooLarge as e:
                return _Outcome(None, _short(str(e), POLICY_ERROR_CHARS), "too_large")
            except ImageRefused as e:
                return _Outcome(None, _short(str(e), POLICY_ERROR_CHARS), "blocked")
            except FileNotFoundError:
                return _Outcome(None, _short(f"image not found: {location}"), "not_found")
            except PermissionError:
                return _Outcome(None, _short(f"image permission denied: {location}"), "denied")
            except OSError as e:
                return _Outcome(None, _short(f"unreadable image path {location}: {type(e).__name__}: {e}"), "refused")
            finally:
                self._busy(-1)
            self.stats.latencies.append(time.perf_counter() - t0)
            self.stats.bytes += len(data)
            return _Outcome(data, None, "ok")

    async def _object(self, store: Any, path: str, location: str) -> bytes:
        """One GET from an object store: the size in the response's head is checked before the body is read."""
        import obstore

        # obstore's client enforces connect_timeout_s and request_timeout_s (client_options)
        result = await obstore.get_async(store, path)
        cap = self.config.max_image_bytes
        if result.meta["size"] > cap:
            raise too_large(shown(location), cap)  # the response is dropped unread
        data = bytes(await result.bytes_async())
        if len(data) > cap:  # the store sent more than it declared
            raise too_large(shown(location), cap)
        return data

    async def _remote(self, location: str, get: Any) -> _Outcome:
        """`get()` (one try: the bytes, or an exception) with the retries, backoff and classification of one object."""
        c, stats = self.config, self.stats
        start = time.perf_counter()
        tries = 0
        while True:
            tries += 1
            if tries > 1:
                stats.retries += 1
            async with self._semaphore:
                if self._fatal is not None:
                    return _Outcome(None, "not fetched: the run failed", "error")
                self._busy(+1)
                stats.requests += 1
                t0 = time.perf_counter()
                try:
                    data = await get()
                except ImageTooLarge as e:
                    return _Outcome(None, _short(str(e), POLICY_ERROR_CHARS), "too_large")
                except ImageRefused as e:
                    return _Outcome(None, _short(str(e), POLICY_ERROR_CHARS), "blocked")
                except _Malformed as e:
                    return _Outcome(None, _short(str(e)), "invalid")
                except Exception as e:  # noqa: BLE001 - classified below
                    error: BaseException | None = e
                else:
                    error = None
                finally:
                    self._busy(-1)
            if error is None:
                stats.latencies.append(time.perf_counter() - t0)
                stats.bytes += len(data)
                return _Outcome(data, None, "ok")
            kind = classify(error)
            if kind == "not_found":
                return _Outcome(None, _short(f"image not found: {shown(location)}"), "not_found")
            if kind == "denied":
                status = _status(error)
                return _Outcome(
                    None,
                    _short(f"image permission denied{f' (HTTP {status})' if status else ''}: {shown(location)}"),
                    "denied",
                )
            if kind == "refused":
                return _Outcome(
                    None, _short(f"image fetch refused (HTTP {_status(error)}): {shown(location)}"), "refused"
                )
            if kind == "no_host":
                return _Outcome(None, _short(f"image host not found: {shown(location)}"), "not_found")
            # transient: back off (full jitter) unless out of tries or of time
            delay = random.uniform(0, min(c.backoff_max_s, c.backoff_initial_s * 2 ** (tries - 1)))
            if tries >= c.max_tries or time.perf_counter() - start + delay > c.retry_budget_s:
                logger.debug(
                    "giving up on %s after %d tries: %s", storage.redact(shown(location)), tries, _cause(error)
                )
                return _Outcome(
                    None,
                    _short(f"image fetch failed after {tries} tries: {shown(location)}: {_cause(error)}"),
                    "failed",
                )
            await asyncio.sleep(delay)


def fetch_images(
    locations: Sequence[str | None], base: Path, config: FetchConfig | None = None
) -> tuple[list[bytes | None], list[str | None]]:
    """One batch fetched by a fetcher of its own (for callers outside the pipeline, e.g. Scorer.score)."""
    with Fetcher(config) as fetcher:
        return fetcher.fetch(locations, base)

"""Image references are untrusted input: what an image URI or path must pass before a byte of it is read into memory.

A posts table comes from users (a scraped table, a partner feed, a URL someone typed), so every row's image reference
is checked by three rules (docs/untrusted-images.md):

- **a size cap** (`max_image_bytes`, default 32 MiB): a declared size above it is refused unread, a body that grows
  past it is cut off: `image too large: <uri> (> N bytes)`;
- **an address policy** for http(s): every address a URL's host resolves to (the ones the client may connect to), on
  every redirect hop, is refused in the internal ranges of `REFUSED_RANGES` unless an `--allow-image-host` entry
  (a host name, `host:port`, an address or a CIDR network) allows it: `image refused: <uri> resolves to <address>
  (<range>); allow it with --allow-image-host ...` (the OWASP SSRF prevention advice);
- **confined local paths**: a path (or `file://` URI) is resolved first (symlinks, `..`), then read only when it lies
  under an allowed root and is a regular file (no devices, FIFOs or sockets), checked again on the opened descriptor.

Every refusal is a permanent per-row outcome (status image_missing and this reason), never retried, so no row can
block a partition. Only the standard library: the config, the settings and the fetcher all use it.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctmwa_batch.errors import CtmwaError

DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024  # 32 MiB: a camera JPEG is a few MB; a post image far less
MAX_REDIRECTS = 5  # hops one image URL may take; every hop passes the address policy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Address ranges an image URL may not reach unless allowed, most specific first: the first that holds an address
# names it in the row's reason. Cloud metadata services live inside link-local, private and shared ranges.
REFUSED_RANGES: tuple[tuple[str, IPNetwork], ...] = tuple(
    (name, ipaddress.ip_network(net))
    for name, net in (
        ("link-local, cloud metadata", "169.254.169.254/32"),  # AWS, GCP, Azure, OpenStack instance metadata
        ("link-local, cloud metadata", "169.254.170.2/32"),  # AWS ECS task metadata and credentials
        ("shared address space, cloud metadata", "100.100.100.200/32"),  # Alibaba Cloud metadata
        ("private, cloud metadata", "fd00:ec2::254/128"),  # AWS instance metadata over IPv6
        ("loopback", "127.0.0.0/8"),
        ("loopback", "::1/128"),
        ("unspecified", "0.0.0.0/8"),  # "this network": 0.0.0.0 reaches the local host on Linux
        ("unspecified", "::/128"),
        ("private", "10.0.0.0/8"),
        ("private", "172.16.0.0/12"),
        ("private", "192.168.0.0/16"),
        ("private", "fc00::/7"),
        ("link-local", "169.254.0.0/16"),
        ("link-local", "fe80::/10"),
        ("site-local", "fec0::/10"),  # deprecated, still routed inside some networks
        ("shared address space", "100.64.0.0/10"),  # carrier-grade NAT, cloud-internal services
        ("multicast", "224.0.0.0/4"),
        ("multicast", "ff00::/8"),
        ("reserved", "240.0.0.0/4"),  # 255.255.255.255 (broadcast) included
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$")


class ImageRefused(CtmwaError):
    """An image reference the policy does not allow (an internal address, a path outside the roots, not a regular
    file); its text is the row's reason."""


class ImageTooLarge(CtmwaError):
    """An image above the size cap; its text is the row's reason."""


def too_large(location: str, max_bytes: int) -> ImageTooLarge:
    """The row's reason for an image above the cap, in the one form every store uses."""
    return ImageTooLarge(f"image too large: {location} (> {max_bytes} bytes)")


# --------------------------------------------------------------------------------------------------- addresses


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to an IPv4 host (mapped, NAT64, 6to4), which is where it goes."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refused_range(address: str | IPAddress) -> str | None:
    """The refused range that holds `address` ("loopback 127.0.0.0/8"), or None for a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    candidates = [ip] + [v4 for v4 in [_embedded_ipv4(ip)] if v4 is not None]
    for candidate in candidates:
        for name, network in REFUSED_RANGES:
            if candidate.version == network.version and candidate in network:
                return f"{name} {network}"
    return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostRule:
    """One --allow-image-host entry: a host name (`*.` for its subdomains), or an address network, and a port."""

    entry: str  # as given
    name: str | None = None  # lowercased host name, or "*.example.com"
    network: IPNetwork | None = None  # an address is a /32 or /128 network
    port: int | None = None  # None = any port

    def allows(self, host: str, port: int | None, address: IPAddress) -> bool:
        """Whether this entry allows connecting to `address` for a URL of `host` and `port`."""
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        assert self.name is not None
        host = host.lower().rstrip(".")
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name


def parse_host_rule(entry: str) -> HostRule:
    """An allow-list entry: `cdn.internal`, `*.internal`, `images.internal:8080`, `10.1.2.3`, `[fd00::1]:443`,
    `10.0.0.0/8`, `fd00::/8`; ValueError naming the entry and the forms otherwise."""
    text = entry.strip()
    forms = "use a host name, host:port, an address, [IPv6]:port or a CIDR network such as 10.0.0.0/8"
    if not text:
        raise ValueError(f"allowed image host {entry!r} is empty; {forms}")
    try:
        return HostRule(entry, network=ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    host, port = text, None
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port_number = None if port is None else int(port)
    except ValueError:
        raise ValueError(f"allowed image host {entry!r}: port {port!r} is not a number; {forms}") from None
    if port_number is not None and not 0 < port_number < 65536:
        raise ValueError(f"allowed image host {entry!r}: port {port_number} out of range; {forms}")
    if _is_address(host):
        return HostRule(entry, network=ipaddress.ip_network(host.split("%", 1)[0]), port=port_number)
    name = host.lower().rstrip(".")
    if not _HOST_NAME.match(name) or "/" in name:
        raise ValueError(f"allowed image host {entry!r} is not a host name, address or network; {forms}")
    return HostRule(entry, name=name, port=port_number)


def parse_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A repeatable option's values from a tuple, a list, or one comma-separated string (the settings' form)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(v).strip() for v in items if str(v).strip())


class AddressPolicy:
    """Which addresses image URLs may reach: public ones always, refused ranges only through an allow-list entry."""

    def __init__(self, allow: Sequence[str] = ()):
        self.rules = tuple(parse_host_rule(e) for e in allow)
        # asked about twice per request (the URL or resolver's address, then the peer): remembered per policy
        self.refusal = functools.lru_cache(maxsize=4096)(self._refusal)  # type: ignore[method-assign]

    def refusal(self, host: str, port: int | None, address: str) -> str | None:
        """None when a URL of `host`:`port` may connect to `address`, else the refused range ("loopback 127.0.0.0/8")."""
        return self._refusal(host, port, address)

    def _refusal(self, host: str, port: int | None, address: str) -> str | None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        where = refused_range(ip)
        if where is None or any(rule.allows(host, port, ip) for rule in self.rules):
            return None
        return where

    def refused(
        self, location: str, host: str, port: int | None, address: str, redirected_to: str | None = None
    ) -> ImageRefused | None:
        """The row's error for a URL (or the hop it was `redirected_to`) whose `host` resolves to a refused `address`,
        or None when it may connect."""
        where = self.refusal(host, port, address)
        if where is None:
            return None
        suggestion = host if port is None else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        hop = f"redirects to {redirected_to}, which " if redirected_to else ""
        return ImageRefused(
            f"image refused: {location} {hop}resolves to {address} ({where}); allow it with "
            f"--allow-image-host {suggestion} (CTMWA_ALLOW_IMAGE_HOSTS)"
        )


# --------------------------------------------------------------------------------------------------- local files


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


class LocalRoots:
    """The folders local image paths may be read from (resolved once), and the confined read."""

    def __init__(self, roots: Iterable[str | Path] = ()):
        resolved: list[str] = []
        for root in roots:
            real = os.path.realpath(os.path.expanduser(str(root)))
            if real not in resolved:
                resolved.append(real)
        self.roots = tuple(resolved)

    def root_of(self, real: str) -> str | None:
        """The allowed root that holds the resolved path `real`, or None."""
        for root in self.roots:
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return root
        return None

    def _outside(self, location: str, real: str) -> ImageRefused:
        resolved = "" if real == location else f" resolves to {real}, which"
        if not self.roots:
            rule = "no folder is allowed (the input is not a local folder)"
        else:
            shown = ", ".join(self.roots[:3]) + (f" and {len(self.roots) - 3} more" if len(self.roots) > 3 else "")
            rule = f"outside the allowed image roots [{shown}]"
        return ImageRefused(
            f"image refused: {location}{resolved} is {rule}; allow a folder with --image-root DIR (CTMWA_IMAGE_ROOTS)"
        )

    def read(self, location: str, path: str, max_bytes: int) -> bytes:
        """The bytes of the local image `path` (`location` as the row gave it), read only when its resolved path is
        under a root and is a regular file of at most `max_bytes`. ImageRefused / ImageTooLarge otherwise;
        FileNotFoundError / PermissionError / OSError as the file system says."""
        real = os.path.realpath(path)
        if self.root_of(real) is None:
            raise self._outside(location, real)
        mode = os.stat(real).st_mode  # refuse a device before opening it (an open alone can act on some)
        if not stat.S_ISREG(mode):
            raise ImageRefused(f"image refused: {location} is {_kind(mode)}; only regular files are read as images")
        # O_NOFOLLOW: a final component swapped for a symlink since realpath fails; O_NONBLOCK: a FIFO swapped in
        # does not block the open; fstat on the descriptor is what was actually opened.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ImageRefused(f"image refused: {location} changed into a symlink while it was read") from e
            raise
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageRefused(
                    f"image refused: {location} is {_kind(st.st_mode)}; only regular files are read as images"
                )
            if st.st_size > max_bytes:
                raise too_large(location, max_bytes)
            chunks, total = [], 0
            while chunk := f.read(min(max_bytes + 1 - total, 1 << 20)):
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:  # grew since the stat, or a size the stat does not tell (/proc)
                    raise too_large(location, max_bytes)
        return b"".join(chunks)


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: Any) -> None:
    """The three flags `ctmwa-batch score` and `ctmwa-batch embed` share (an argparse parser)."""
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=DEFAULT_MAX_IMAGE_BYTES,
        metavar="N",
        help=f"largest image read, in bytes (default {DEFAULT_MAX_IMAGE_BYTES}: 32 MiB); a larger one is "
        "image_missing ('image too large'), refused unread or cut off",
    )
    parser.add_argument(
        "--allow-image-host",
        action="append",
        default=[],
        metavar="H",
        dest="allow_image_hosts",
        help="let http(s) image URLs reach H although it is internal (loopback, private, link-local...): a host name, "
        "*.domain, host:port, an address or a CIDR network; repeatable",
    )
    parser.add_argument(
        "--image-root",
        action="append",
        default=[],
        metavar="DIR",
        dest="image_roots",
        help="a folder local image paths may be read from, besides a local input's own folder; repeatable",
    )


def from_args(args: Any) -> dict[str, Any]:
    """The config fields those flags give: max_image_bytes, allow_image_hosts, image_roots."""
    return {
        "max_image_bytes": args.max_image_bytes,
        "allow_image_hosts": tuple(args.allow_image_hosts),
        "image_roots": tuple(args.image_roots),
    }

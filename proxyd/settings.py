"""Settings of proxyd: one frozen object, built once and passed explicitly to everything.

Where a value comes from, lowest precedence first (as devpi-server does it):

1. the packaged defaults (the field defaults of :class:`ProxySettings`);
2. a TOML config file (``--config FILE``, else the ``PROXYD_CONFIG`` environment variable);
3. environment variables ``PROXYD_<SETTING>`` (e.g. ``PROXYD_CACHE_SIZE=50GiB``);
4. command-line flags, passed to :func:`load_settings` as ``overrides``.

A higher layer replaces a lower layer's value as a whole; in particular the upstreams of the
highest layer that names any replace (not extend) those of the layers below, so what is served
is always visible in one place. Unknown keys are warned about, with the closest known key as a
suggestion; invalid values raise :class:`ConfigError` saying which setting, where it came from,
what is wrong and what was expected. Nothing here reads the process environment or the disk by
itself except the config file named by the caller, so tests need no global state.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from butler.units import human_size as format_size  # one style of sizes everywhere

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "ENV_CONFIG_FILE",
    "ENV_PREFIX",
    "RESERVED_UPSTREAM_NAMES",
    "SETTING_NAMES",
    "ConfigError",
    "ProxySettings",
    "describe",
    "format_size",
    "load_settings",
    "parse_size",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Prefix of the environment variables that set proxyd settings.
ENV_PREFIX = "PROXYD_"
#: Environment variable naming the config file when ``--config`` is not given.
ENV_CONFIG_FILE = "PROXYD_CONFIG"
#: Upstream names that would shadow proxyd's own endpoints (``/metrics``, ``/healthz``).
RESERVED_UPSTREAM_NAMES = frozenset({"metrics", "healthz"})

MIN_BLOCK_SIZE = 64 * KiB
MAX_BLOCK_SIZE = 64 * MiB

_UPSTREAM_NAME = re.compile(r"[a-z0-9_-]+")


def _default_cache_dir() -> Path:
    return Path("~/.cache/proxyd").expanduser()


@dataclass(frozen=True)
class ProxySettings:
    """Everything proxyd can be configured with. Build it with :func:`load_settings`."""

    listen_host: str = "127.0.0.1"
    """Address to listen on; loopback by default so that a fresh install is not an open
    service. Set with the ``listen`` key as ``HOST:PORT`` (``[::1]:8080`` for IPv6)."""
    listen_port: int = 8080
    """Port to listen on (0: any free port, which tests use)."""
    cache_dir: Path = field(default_factory=_default_cache_dir)
    """Directory of the block cache (diskcache)."""
    cache_size: int = 10 * GiB
    """Bytes the cache may hold before least recently used blocks are evicted."""
    block_size: int = 1 * MiB
    """Bytes per cached block: a power of two from 64 KiB to 64 MiB. Smaller blocks waste
    less on small random reads; larger ones mean fewer keys and disk seeks."""
    upstreams: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Upstream name -> base URL; ``/<name>/<path>`` is fetched from ``<URL>/<path>``."""
    signing_params: tuple[str, ...] = ("X-Amz-*",)
    """Glob patterns (case-insensitive) of query parameters that only sign a request; they
    are left out of the cache key and count as credentials. Every other parameter stays in
    the key, in the order it was sent (:func:`proxyd.policy.keys.cache_key`)."""
    max_fetch_bytes: int = 64 * MiB
    """Largest single upstream range request; longer missing runs are split."""
    readahead_bytes: int = 8 * MiB
    """How far an unranged GET keeps filling the cache after its client went away."""
    upstream_connect_timeout: float = 10.0
    """Seconds to establish a connection to an upstream."""
    upstream_read_timeout: float = 60.0
    """Seconds an upstream may stay silent while sending headers or body."""
    upstream_connections: int = 32
    """Concurrent connections per upstream origin (a politeness and abuse cap)."""
    auth_ttl: float = 30.0
    """Seconds an origin's yes/no for (credential, object) is reused without asking again."""
    stale_if_error: float = 86400.0
    """Seconds past expiry that cached content is still served while the origin fails,
    unless the response forbids it (must-revalidate, proxy-revalidate, s-maxage, no-cache)."""
    heuristic_fraction: float = 0.1
    """Heuristic freshness (RFC 9111 §4.2.2): this fraction of the time since Last-Modified."""
    heuristic_max: float = 86400.0
    """Upper bound in seconds of a heuristic freshness lifetime."""
    max_ranges: int = 200
    """Ranges allowed in one Range header; more is answered with 416 (RFC 9110 §14.2). The
    default matches ``butler serve``'s, whose clients batch a cutout's rows up to it."""
    max_header_bytes: int = 8190
    """Longest request header field line (name, colon, value); longer gets 431."""
    max_headers_total_bytes: int = 65536
    """Largest total size of a request's header fields; larger gets 431."""
    max_url_bytes: int = 8190
    """Longest request target; longer gets 414."""
    client_timeout: float = 60.0
    """Seconds a client may take to send its request or to accept more response bytes."""
    evict_low_watermark: float = 0.90
    """Eviction frees space down to this fraction of cache_size ..."""
    evict_high_watermark: float = 0.95
    """... once the cache is filled beyond this fraction of cache_size."""
    access_log: bool | Path = True
    """True: one line per request to the log (stderr); False: none; a path: append there."""
    trusted_proxies: tuple[IPNetwork, ...] = ()
    """Load balancers in front of proxyd (addresses or networks) whose X-Forwarded-For it
    believes: a request from one is logged as coming from the address it forwarded for."""
    metrics: bool = True
    """Serve Prometheus metrics at /metrics."""
    workers: int = 1
    """Processes answering hot reads (the fast lane) on the listening socket; everything
    else is served by the first (proxyd.workers). 0: one per CPU core."""
    fast_lane: bool = True
    """Answer plain GETs of fresh cached bytes before the HTTP framework (proxyd.fastlane)."""
    event_loop: str = "asyncio"
    """"asyncio" (Python's own) or "uvloop" (needs the uvloop package)."""
    via_name: str = field(
        default_factory=lambda: f"proxyd-{secrets.token_hex(4)}", init=False, compare=False
    )
    """This proxy's name in the Via field of the requests it sends upstream (RFC 9110
    §7.6.3): ``proxyd-`` and 8 random hex digits, drawn when the settings are built, before
    worker processes fork, so all of one proxy's processes share it. A request whose Via
    already holds it has been here before: a forwarding loop (answered 508). Not a setting
    (nor part of equality): two proxies must never share it, and tiers of proxyd each draw
    their own."""

    @property
    def listen(self) -> str:
        """``HOST:PORT`` as accepted by the ``listen`` key (IPv6 hosts in brackets)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    @property
    def evict_low_bytes(self) -> int:
        """Cache size in bytes that eviction brings the cache down to."""
        return int(self.cache_size * self.evict_low_watermark)

    @property
    def evict_high_bytes(self) -> int:
        """Cache size in bytes above which eviction starts."""
        return int(self.cache_size * self.evict_high_watermark)


class ConfigError(ValueError):
    """An invalid setting. ``str()`` is a complete message for the user; the CLI prints it
    and exits with status 2."""

    def __init__(self, setting: str, source: str, problem: str, expected: str = "") -> None:
        self.setting = setting
        self.source = source
        self.problem = problem
        self.expected = expected
        message = f"{source}: invalid {setting}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)


class _Invalid(Exception):
    """Raised by a value parser; turned into a ConfigError naming the setting and source."""

    def __init__(self, problem: str, expected: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.expected = expected


# -- value parsers --------------------------------------------------------------------------
#
# Each parser accepts the native type (from TOML or from a CLI that already converted it) and a
# string (from the environment or a CLI that did not), and returns the setting's type.

_SIZE_EXPECTED = "a byte count such as 50GiB, 500MB, 1e9 or 1048576"
_SIZE = re.compile(r"(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)")
# Decimal units are powers of 1000 and binary units (IEC) powers of 1024; single letters
# (k, m, g, t, as nginx and Docker use them) mean the binary units.
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    _SIZE_UNITS[_letter] = 1024**_power
    _SIZE_UNITS[_letter + "b"] = 1000**_power
    _SIZE_UNITS[_letter + "ib"] = 1024**_power


def parse_size(value: object) -> int:
    """Parse a size in bytes: an integer, or a string like ``50GiB``, ``500MB``, ``1e9``.

    Units are case-insensitive: ``KB MB GB TB PB`` are powers of 1000, ``KiB MiB GiB TiB PiB``
    and the single letters ``k m g t p`` powers of 1024, ``B`` or nothing means bytes. The
    result must be a whole, non-negative number of bytes. Raises ValueError with a message
    saying what is wrong.
    """
    try:
        return _size(value)
    except _Invalid as exc:
        raise ValueError(f"{exc.problem}; expected {exc.expected}") from None


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise _Invalid(f"{value!r} is a boolean", _SIZE_EXPECTED)
    if isinstance(value, int):
        number: float | int = value
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise _Invalid(f"{value!r} is not a number with an optional unit", _SIZE_EXPECTED)
        digits, unit = m.groups()
        if len(digits) > 40:
            raise _Invalid(f"{value[:20]!r}... is far too long", _SIZE_EXPECTED)
        multiplier = _SIZE_UNITS.get(unit.lower())
        if multiplier is None:
            raise _Invalid(
                f"{value!r} has an unknown unit {unit!r}",
                "one of B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB (or k, m, g, t, p)",
            )
        if "." in digits or "e" in digits.lower():
            number = float(digits) * multiplier
        else:
            number = int(digits) * multiplier
    else:
        raise _Invalid(f"{value!r} is a {type(value).__name__}", _SIZE_EXPECTED)
    if isinstance(number, float):
        if not math.isfinite(number):
            raise _Invalid(f"{value!r} is not finite", _SIZE_EXPECTED)
        if not number.is_integer():
            raise _Invalid(f"{value!r} is not a whole number of bytes", _SIZE_EXPECTED)
        number = int(number)
    if number < 0:
        raise _Invalid(f"{value!r} is negative", _SIZE_EXPECTED)
    return number


def _sized(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        n = _size(value)
        if n < minimum or (maximum is not None and n > maximum):
            bound = f"at least {format_size(minimum)}"
            if maximum is not None:
                bound = f"between {format_size(minimum)} and {format_size(maximum)}"
            raise _Invalid(f"{format_size(n)} is out of range", f"a size {bound}")
        return n

    return parse


def _block_size(value: object) -> int:
    n = _size(value)
    expected = (
        f"a power of two from {format_size(MIN_BLOCK_SIZE)} to {format_size(MAX_BLOCK_SIZE)}, "
        "such as 1MiB"
    )
    if not MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE:
        raise _Invalid(f"{format_size(n)} is out of range", expected)
    if n & (n - 1):
        raise _Invalid(f"{n} bytes is not a power of two", expected)
    return n


def _integer(minimum: int, maximum: int) -> Callable[[object], int]:
    expected = f"an integer from {minimum} to {maximum}"

    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise _Invalid(f"{value!r} is a boolean", expected)
        if isinstance(value, int):
            n = value
        elif isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,30}", value.strip()):
            n = int(value)
        else:
            raise _Invalid(f"{value!r} is not an integer", expected)
        if not minimum <= n <= maximum:
            raise _Invalid(f"{n} is out of range", expected)
        return n

    return parse


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*([smhd]?)", re.IGNORECASE)


def _duration(minimum: float, *, exclusive: bool = False) -> Callable[[object], float]:
    limit = f"more than {minimum:g}" if exclusive else f"at least {minimum:g}"
    expected = f"seconds ({limit}) as a number or with a unit s, m, h or d, such as 30 or 1d"

    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise _Invalid(f"{value!r} is a boolean", expected)
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            m = _DURATION.fullmatch(value.strip())
            if m is None:
                raise _Invalid(f"{value!r} is not a duration", expected)
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        else:
            raise _Invalid(f"{value!r} is a {type(value).__name__}", expected)
        if not math.isfinite(seconds):
            raise _Invalid(f"{value!r} is not finite", expected)
        if seconds < minimum or (exclusive and seconds == minimum):
            raise _Invalid(f"{seconds:g} seconds is out of range", expected)
        return seconds

    return parse


def _fraction(value: object) -> float:
    expected = "a number greater than 0 and at most 1, such as 0.9"
    if isinstance(value, bool):
        raise _Invalid(f"{value!r} is a boolean", expected)
    if isinstance(value, int | float):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            raise _Invalid(f"{value!r} is not a number", expected) from None
    else:
        raise _Invalid(f"{value!r} is a {type(value).__name__}", expected)
    if not (0.0 < x <= 1.0):  # also false for NaN
        raise _Invalid(f"{x:g} is out of range", expected)
    return x


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid(f"{value!r} is not a boolean", "true or false (also 1/0, yes/no, on/off)")


def _path(value: object) -> Path:
    if isinstance(value, Path):
        return value.expanduser()
    if isinstance(value, str) and value.strip():
        return Path(value.strip()).expanduser()
    raise _Invalid(f"{value!r} is not a path", "a non-empty directory path")


EVENT_LOOPS = ("asyncio", "uvloop")


def _event_loop(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in EVENT_LOOPS:
        return value.strip().lower()
    raise _Invalid(f"{value!r} is not an event loop proxyd knows", " or ".join(EVENT_LOOPS))


def _items(value: object, expected: str) -> Sequence[object]:
    """The items of a list setting: a TOML array, or a string of items separated by commas
    or spaces (an environment variable's)."""
    if isinstance(value, str):
        return [p for p in re.split(r"[,\s]+", value) if p]
    if isinstance(value, list | tuple):
        return value
    raise _Invalid(f"{value!r} is not a list", expected)


def _networks(value: object) -> tuple[IPNetwork, ...]:
    expected = 'a list of IP addresses or networks, such as ["10.0.0.5", "192.168.1.0/24"]'
    networks: list[IPNetwork] = []
    for item in _items(value, expected):
        try:
            networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise _Invalid(f"{item!r} is not an IP address or network", expected) from None
    return tuple(networks)


def _access_log(value: object) -> bool | Path:
    if isinstance(value, bool | Path):
        return value.expanduser() if isinstance(value, Path) else value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        if text in ("-", "stderr"):
            return True
        if text:
            return Path(text).expanduser()
    raise _Invalid(
        f"{value!r} is neither a boolean nor a path",
        'true (log to stderr), false (no access log) or a file path such as "access.log"',
    )


def _listen(value: object) -> tuple[str, int]:
    expected = "HOST:PORT such as 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080"
    if not isinstance(value, str):
        raise _Invalid(f"{value!r} is not a string", expected)
    text = value.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^\s:\[\]/]+):([0-9]{1,5})", text)
    if m is None:
        raise _Invalid(f"{value!r} is not of the form HOST:PORT", expected)
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{host!r} is not an IPv6 address", expected) from None
    if port > 65535:
        raise _Invalid(f"port {port} is out of range", "a port from 0 to 65535")
    return host, port


def _glob_list(value: object) -> tuple[str, ...]:
    expected = 'a list of query-parameter glob patterns such as ["X-Amz-*"]'
    patterns: list[str] = []
    for item in _items(value, expected):
        if not isinstance(item, str) or not item.strip():
            raise _Invalid(f"{item!r} is not a pattern", expected)
        if re.search(r"[\s&=#]", item.strip()):
            raise _Invalid(f"{item!r} contains a space, '&', '=' or '#'", expected)
        patterns.append(item.strip())
    return tuple(patterns)


def _upstream_url(name: str, url: object) -> str:
    expected = "an http:// or https:// base URL such as https://data.example.org/repo"
    if not isinstance(url, str):
        raise _Invalid(f"the URL of upstream {name!r} is not a string: {url!r}", expected)
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _Invalid(
            f"the URL of upstream {name!r} is invalid ({exc}): {text!r}", expected
        ) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _Invalid(
            f"upstream {name!r} has scheme {parts.scheme or 'none'!r} in {text!r}", expected
        )
    if not parts.hostname:
        raise _Invalid(f"upstream {name!r} has no host in {text!r}", expected)
    if parts.username is not None or parts.password is not None:
        raise _Invalid(
            f"upstream {name!r} has user information in {text!r}; it would be sent to the "
            "origin on behalf of every client",
            "a URL without user:password@ (clients send their own credentials)",
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise _Invalid(f"upstream {name!r} has a query or fragment in {text!r}", expected)
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        raise _Invalid(f"upstream {name!r} has whitespace or control characters", expected)
    # Scheme and host are case-insensitive (RFC 9110 §4.2.3): normalise them so that cache
    # keys do not depend on how the URL was typed. The path stays as written, minus a
    # trailing slash: "/<name>/x" maps to "<URL>/x".
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port == {"http": 80, "https": 443}[parts.scheme.lower()]:
        port = None  # the default port is the same origin as no port (RFC 9110 §4.2.3)
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def _upstreams(value: object) -> Mapping[str, str]:
    expected = 'NAME=URL pairs, e.g. {repo = "https://data.example.org/repo"}'
    pairs: list[tuple[str, object]] = []
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str | list | tuple):
        items = [p for p in re.split(r"[,\s]+", value) if p] if isinstance(value, str) else value
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise _Invalid(f"{item!r} is not of the form NAME=URL", expected)
            item_name, _, item_url = item.partition("=")
            pairs.append((item_name.strip(), item_url))
    else:
        raise _Invalid(f"{value!r} is not a table of upstreams", expected)
    result: dict[str, str] = {}
    for name, url in pairs:
        if not _UPSTREAM_NAME.fullmatch(name):
            raise _Invalid(
                f"upstream name {name!r} is not allowed",
                "names of lowercase letters, digits, '_' and '-'",
            )
        if name in RESERVED_UPSTREAM_NAMES:
            raise _Invalid(
                f"upstream name {name!r} is reserved for proxyd's own /{name} endpoint",
                f"a name other than {', '.join(sorted(RESERVED_UPSTREAM_NAMES))}",
            )
        if name in result:
            raise _Invalid(f"upstream {name!r} is given twice", "each name once")
        result[name] = _upstream_url(name, url)
    return MappingProxyType(result)


@dataclass(frozen=True)
class _Spec:
    parse: Callable[[object], Any]
    flag: str
    targets: tuple[str, ...]
    """The ProxySettings fields the key sets."""


def _spec(
    parse: Callable[[object], Any],
    key: str,
    *,
    flag: str = "",
    targets: tuple[str, ...] = (),
) -> _Spec:
    return _Spec(parse, flag or "--" + key.replace("_", "-"), targets or (key,))


# The settings, in the order describe() and the default config file present them.
_SPECS: dict[str, _Spec] = {
    "listen": _spec(_listen, "listen", targets=("listen_host", "listen_port")),
    "cache_dir": _spec(_path, "cache_dir"),
    "cache_size": _spec(_sized(1), "cache_size"),
    "block_size": _spec(_block_size, "block_size"),
    "upstreams": _spec(_upstreams, "upstreams", flag="--upstream"),
    "signing_params": _spec(_glob_list, "signing_params", flag="--signing-param"),
    "max_fetch_bytes": _spec(_sized(MIN_BLOCK_SIZE), "max_fetch_bytes"),
    "readahead_bytes": _spec(_sized(0), "readahead_bytes"),
    "upstream_connect_timeout": _spec(_duration(0, exclusive=True), "upstream_connect_timeout"),
    "upstream_read_timeout": _spec(_duration(0, exclusive=True), "upstream_read_timeout"),
    "upstream_connections": _spec(_integer(1, 10_000), "upstream_connections"),
    "auth_ttl": _spec(_duration(0), "auth_ttl"),
    "stale_if_error": _spec(_duration(0), "stale_if_error"),
    "heuristic_fraction": _spec(_fraction, "heuristic_fraction"),
    "heuristic_max": _spec(_duration(0), "heuristic_max"),
    "max_ranges": _spec(_integer(1, 10_000), "max_ranges"),
    "max_header_bytes": _spec(_integer(256, 1_048_576), "max_header_bytes"),
    "max_headers_total_bytes": _spec(_integer(256, 16_777_216), "max_headers_total_bytes"),
    "max_url_bytes": _spec(_integer(256, 1_048_576), "max_url_bytes"),
    "client_timeout": _spec(_duration(0, exclusive=True), "client_timeout"),
    "evict_low_watermark": _spec(_fraction, "evict_low_watermark"),
    "evict_high_watermark": _spec(_fraction, "evict_high_watermark"),
    "access_log": _spec(_access_log, "access_log"),
    "trusted_proxies": _spec(_networks, "trusted_proxies", flag="--trusted-proxy"),
    "metrics": _spec(_boolean, "metrics"),
    "workers": _spec(_integer(0, 256), "workers"),
    "fast_lane": _spec(_boolean, "fast_lane"),
    "event_loop": _spec(_event_loop, "event_loop"),
}

#: The keys accepted in a config file, as ``PROXYD_<KEY>`` and as ``overrides``.
SETTING_NAMES: tuple[str, ...] = tuple(_SPECS)

_FIELD_NAMES = {f.name for f in fields(ProxySettings) if f.init}
assert {name for spec in _SPECS.values() for name in spec.targets} == _FIELD_NAMES


# -- loading --------------------------------------------------------------------------------


def _suggest(key: str, candidates: Sequence[str], prefix: str = "") -> str:
    """ "; did you mean 'X'?" for the closest candidate, or "". A common ``prefix`` is left out
    of the comparison (every PROXYD_ variable would look alike) but kept in the answer."""
    close = difflib.get_close_matches(
        key.removeprefix(prefix).lower(),
        [c.removeprefix(prefix).lower() for c in candidates],
        n=1,
        cutoff=0.6,
    )
    if not close:
        return ""
    match = next(c for c in candidates if c.removeprefix(prefix).lower() == close[0])
    return f"; did you mean {match!r}?"


def _read_config_file(path: Path) -> dict[str, Any]:
    source = f"config file {path}"
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", source, "the file does not exist", "a TOML file") from None
    except IsADirectoryError:
        raise ConfigError("config", source, "is a directory", "a TOML file") from None
    except OSError as exc:
        raise ConfigError("config", source, f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError("config", source, "is not UTF-8 text", "a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", source, f"is not valid TOML: {exc}", "TOML syntax") from None


def _relative_to(base: Path, value: Any) -> Any:
    """Paths in a config file are relative to the file's directory, not to the CWD."""
    if isinstance(value, Path) and not value.is_absolute():
        return base / value
    return value


def load_settings(
    config_file: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> tuple[ProxySettings, list[str]]:
    """Build the settings from defaults < config file < ``PROXYD_*`` env < ``overrides``.

    ``config_file`` is the ``--config`` argument; when None, ``env["PROXYD_CONFIG"]`` names
    the file if set. ``env`` is usually ``os.environ``. ``overrides`` maps setting names (see
    :data:`SETTING_NAMES`) to values from CLI flags, as strings or already converted; a value
    of None (or an empty list or tuple, what a repeatable option gives when absent) means
    "flag not given" and is skipped, so a CLI can pass all its options. The
    ``upstreams`` override may be a mapping or a list of ``NAME=URL`` strings (repeated
    ``--upstream``). Returns the settings and warnings for the user (unknown keys).

    Raises :class:`ConfigError` for an unreadable config file or any invalid value. An
    unknown override key is a programming error of the caller: ValueError.
    """
    warnings: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(key: str, raw: object, source: str) -> None:
        spec = _SPECS[key]
        try:
            parsed = spec.parse(raw)
        except _Invalid as exc:
            raise ConfigError(key, source, exc.problem, exc.expected) from None
        values[key] = parsed
        sources[key] = source

    if config_file is None and env.get(ENV_CONFIG_FILE, "").strip():
        config_file = Path(env[ENV_CONFIG_FILE].strip()).expanduser()
    if config_file is not None:
        data = _read_config_file(config_file)
        base = config_file.parent
        for key, raw in data.items():
            if key not in _SPECS:
                warnings.append(
                    f"config file {config_file}: unknown setting {key!r} ignored"
                    + _suggest(key, SETTING_NAMES)
                )
                continue
            apply(key, raw, f"config file {config_file}, key {key!r}")
            values[key] = _relative_to(base, values[key])

    known_env = {ENV_PREFIX + key.upper(): key for key in _SPECS}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG_FILE:
            continue
        env_key = known_env.get(var)
        if env_key is None:
            warnings.append(
                f"environment variable {var} is not a proxyd setting and is ignored"
                + _suggest(var, [*known_env, ENV_CONFIG_FILE], ENV_PREFIX)
            )
            continue
        apply(env_key, env[var], f"environment variable {var}")

    for key, raw in overrides.items():
        if key not in _SPECS:
            raise ValueError(f"unknown setting {key!r} in overrides{_suggest(key, SETTING_NAMES)}")
        if raw is None or (isinstance(raw, list | tuple) and not raw):
            continue  # flag not given (a repeatable click option yields () then)
        apply(key, raw, f"command-line flag {_SPECS[key].flag}")

    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key == "listen":
            kwargs["listen_host"], kwargs["listen_port"] = value
        else:
            kwargs[key] = value
    settings = replace(ProxySettings(), **kwargs)
    _check_consistency(settings, sources)
    return settings, warnings


def _check_consistency(s: ProxySettings, sources: Mapping[str, str]) -> None:
    """Rules between settings; the error names every setting involved and its source."""

    def origin(key: str) -> str:
        return f"{key} from {sources.get(key, 'the defaults')}"

    if s.evict_low_watermark >= s.evict_high_watermark:
        raise ConfigError(
            "evict_low_watermark",
            f"{origin('evict_low_watermark')} and {origin('evict_high_watermark')}",
            f"the low watermark {s.evict_low_watermark:g} is not below the high watermark "
            f"{s.evict_high_watermark:g}",
            "evict_low_watermark < evict_high_watermark, such as 0.9 and 0.95",
        )
    if s.max_fetch_bytes < s.block_size:
        raise ConfigError(
            "max_fetch_bytes",
            f"{origin('max_fetch_bytes')} and {origin('block_size')}",
            f"max_fetch_bytes {format_size(s.max_fetch_bytes)} is smaller than one block "
            f"({format_size(s.block_size)})",
            "max_fetch_bytes >= block_size",
        )
    if s.cache_size < s.block_size:
        raise ConfigError(
            "cache_size",
            f"{origin('cache_size')} and {origin('block_size')}",
            f"a cache of {format_size(s.cache_size)} cannot hold one block of "
            f"{format_size(s.block_size)}",
            "cache_size >= block_size (in practice many times larger)",
        )
    if s.max_headers_total_bytes < s.max_header_bytes:
        raise ConfigError(
            "max_headers_total_bytes",
            f"{origin('max_headers_total_bytes')} and {origin('max_header_bytes')}",
            f"the total {s.max_headers_total_bytes} is below the per-field limit "
            f"{s.max_header_bytes}",
            "max_headers_total_bytes >= max_header_bytes",
        )


# -- presentation ---------------------------------------------------------------------------


def _seconds(x: float) -> str:
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if x >= factor and x % factor == 0:
            return f"{x / factor:g}{unit}"
    return f"{x:g}s"


def describe(settings: ProxySettings) -> str:
    """A human-readable, multi-line account of the settings (for ``proxyd stats``)."""
    s = settings
    if s.access_log is True:
        access = "stderr"
    elif s.access_log is False:
        access = "off"
    else:
        access = str(s.access_log)
    rows = [
        ("listen", s.listen),
        ("cache dir", str(s.cache_dir)),
        (
            "cache size",
            f"{format_size(s.cache_size)} (evict from {format_size(s.evict_high_bytes)} "
            f"down to {format_size(s.evict_low_bytes)})",
        ),
        ("block size", format_size(s.block_size)),
        ("max fetch", f"{format_size(s.max_fetch_bytes)} per upstream range request"),
        ("read-ahead", f"{format_size(s.readahead_bytes)} after a client leaves"),
        ("signing params", ", ".join(s.signing_params) or "(none)"),
        ("trusted proxies", ", ".join(map(str, s.trusted_proxies)) or "(none)"),
        (
            "upstream limits",
            f"{s.upstream_connections} connections per origin, connect timeout "
            f"{_seconds(s.upstream_connect_timeout)}, read timeout "
            f"{_seconds(s.upstream_read_timeout)}",
        ),
        ("auth answers", f"reused for {_seconds(s.auth_ttl)}"),
        ("stale if error", _seconds(s.stale_if_error)),
        (
            "heuristic",
            f"{s.heuristic_fraction:g} of age since Last-Modified, at most "
            f"{_seconds(s.heuristic_max)}",
        ),
        (
            "client limits",
            f"{s.max_ranges} ranges, URL {s.max_url_bytes} B, header field "
            f"{s.max_header_bytes} B, headers {s.max_headers_total_bytes} B, timeout "
            f"{_seconds(s.client_timeout)}",
        ),
        ("access log", access),
        ("metrics", "/metrics" if s.metrics else "off"),
        ("workers", str(s.workers) if s.workers else "one per CPU core"),
        ("fast lane", "on" if s.fast_lane else "off"),
        ("event loop", s.event_loop),
    ]
    lines = [f"{label:<16}{value}" for label, value in rows]
    if s.upstreams:
        lines.append("upstreams")
        width = max(len(name) for name in s.upstreams) + 2
        lines += [f"  /{name:<{width}}-> {url}" for name, url in sorted(s.upstreams.items())]
    else:
        lines.append("upstreams       (none configured: every request is refused)")
    return "\n".join(lines)

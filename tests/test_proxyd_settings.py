"""proxyd settings: precedence, unknown keys, value parsing and error messages."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxyd.settings import (
    SETTING_NAMES,
    ConfigError,
    ProxySettings,
    describe,
    format_size,
    load_settings,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent
KiB, MiB, GiB = 1024, 1024**2, 1024**3


def write(tmp_path: Path, text: str, name: str = "proxyd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(
    config: Path | None = None, env: dict[str, str] | None = None, **flags: Any
) -> ProxySettings:
    settings, warnings = load_settings(config, env or {}, flags)
    assert warnings == []
    return settings


def error(config: Path | None = None, env: dict[str, str] | None = None, **flags: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config, env or {}, flags)
    return str(info.value)


# -- defaults and the shipped config file ---------------------------------------------------


def test_defaults() -> None:
    s = load()
    assert (s.listen_host, s.listen_port, s.listen) == ("127.0.0.1", 8080, "127.0.0.1:8080")
    assert s.cache_dir == Path.home() / ".cache" / "proxyd"
    assert s.block_size == MiB
    assert s.upstreams == {}
    assert s.signing_params == ("X-Amz-*",)
    assert s.max_fetch_bytes == 64 * MiB
    assert s.readahead_bytes == 8 * MiB
    assert s.upstream_connections == 32
    assert s.auth_ttl == 30
    assert s.stale_if_error == 86400
    assert (s.heuristic_fraction, s.heuristic_max) == (0.1, 86400)
    assert (s.max_ranges, s.max_header_bytes, s.max_url_bytes) == (200, 8190, 8190)
    assert (s.evict_low_watermark, s.evict_high_watermark) == (0.9, 0.95)
    assert s.access_log is True
    assert s.metrics is True
    assert s == ProxySettings()


def test_shipped_config_is_the_defaults_plus_its_example_upstream() -> None:
    settings, warnings = load_settings(REPO / "config" / "proxyd.toml", {}, {})
    assert warnings == []
    assert settings == ProxySettings(upstreams={"sample": "http://127.0.0.1:8642"})


def test_shipped_config_documents_every_setting() -> None:
    text = (REPO / "config" / "proxyd.toml").read_text()
    for name in SETTING_NAMES:
        key = "[upstreams]" if name == "upstreams" else f"\n{name} = "
        assert key in text, name


# -- precedence -----------------------------------------------------------------------------


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        cache_size = "1GiB"        # file only
        block_size = "256KiB"      # file, then env
        max_ranges = 10            # file, env, then flag
        auth_ttl = 5               # file, then flag
        [upstreams]
        filed = "http://file.example"
        """,
    )
    env = {
        "PROXYD_BLOCK_SIZE": "512KiB",
        "PROXYD_MAX_RANGES": "20",
        "PROXYD_READAHEAD_BYTES": "1MiB",  # env only
        "PROXYD_UPSTREAMS": "envd=http://env.example",
    }
    s = load(config, env, max_ranges=30, auth_ttl="7", listen="0.0.0.0:9000")
    assert s.cache_size == GiB  # file beats default
    assert s.block_size == 512 * KiB  # env beats file
    assert s.readahead_bytes == MiB  # env beats default
    assert s.max_ranges == 30  # flag beats env and file
    assert s.auth_ttl == 7  # flag beats file
    assert s.listen == "0.0.0.0:9000"  # flag beats default
    assert s.upstreams == {"envd": "http://env.example"}  # replaced, not merged
    assert s.max_fetch_bytes == 64 * MiB  # untouched default


def test_flag_upstreams_replace_lower_layers_and_none_means_not_given(tmp_path: Path) -> None:
    config = write(tmp_path, '[upstreams]\na = "http://a.example"\n')
    # A CLI passes every option; unset ones are None or () and must not override.
    s = load(config, {}, upstreams=(), cache_size=None)
    assert s.upstreams == {"a": "http://a.example"}
    s = load(config, {}, upstreams=["b=http://b.example", "c=https://c.example/x"])
    assert s.upstreams == {"b": "http://b.example", "c": "https://c.example/x"}


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, 'cache_size = "2GiB"\n')
    assert load(None, {"PROXYD_CONFIG": str(config)}).cache_size == 2 * GiB
    # --config wins over PROXYD_CONFIG
    other = write(tmp_path, 'cache_size = "3GiB"\n', "other.toml")
    assert load(other, {"PROXYD_CONFIG": str(config)}).cache_size == 3 * GiB


def test_paths_in_file_are_relative_to_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, 'cache_dir = "cache"\naccess_log = "logs/access.log"\n')
    s = load(config)
    assert s.cache_dir == tmp_path / "cache"
    assert s.access_log == tmp_path / "logs" / "access.log"
    assert load(None, {"PROXYD_CACHE_DIR": "~/c"}).cache_dir == Path.home() / "c"


# -- unknown keys ---------------------------------------------------------------------------


def test_unknown_file_key_warns_with_closest_key(tmp_path: Path) -> None:
    config = write(tmp_path, 'cache_sise = "1GiB"\n[upstream]\na = "http://x"\n')
    settings, warnings = load_settings(config, {}, {})
    assert settings == ProxySettings()
    assert len(warnings) == 2
    assert str(config) in warnings[0]
    assert "'cache_sise'" in warnings[0]
    assert "did you mean 'cache_size'?" in warnings[0]
    assert "'upstream'" in warnings[1]
    assert "did you mean 'upstreams'?" in warnings[1]


def test_unknown_env_key_warns_with_closest_key() -> None:
    env = {"PROXYD_BLOCKSIZE": "1MiB", "PROXYD_ZZZ": "1", "HOME": "/x", "PROXYD_CONFIG": ""}
    _, warnings = load_settings(None, env, {})
    assert warnings == [
        "environment variable PROXYD_BLOCKSIZE is not a proxyd setting and is ignored; "
        "did you mean 'PROXYD_BLOCK_SIZE'?",
        "environment variable PROXYD_ZZZ is not a proxyd setting and is ignored",
    ]


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="did you mean 'cache_size'"):
        load_settings(None, {}, {"cache_sise": "1"})


# -- invalid values: message names setting, source, problem and expectation -----------------


@pytest.mark.parametrize(
    ("key", "value", "problem", "expected"),
    [
        ("cache_size", "50XB", "unknown unit 'XB'", "GiB"),
        ("cache_size", "lots", "not a number", "50GiB"),
        ("cache_size", "0.5", "not a whole number of bytes", "byte count"),
        ("cache_size", "0", "out of range", "at least 1 B"),
        ("block_size", "3MiB", "not a power of two", "power of two from 64 KiB to 64 MiB"),
        ("block_size", "32KiB", "out of range", "power of two"),
        ("block_size", "128MiB", "out of range", "power of two"),
        ("max_fetch_bytes", "1KiB", "out of range", "at least 64 KiB"),
        ("readahead_bytes", "-1", "is negative", "byte count"),
        ("listen", "localhost", "not of the form HOST:PORT", "127.0.0.1:8080"),
        ("listen", "127.0.0.1:70000", "port 70000 is out of range", "0 to 65535"),
        ("listen", "[zz::1]:80", "not of the form", "HOST:PORT"),
        ("upstreams", "a=ftp://x", "scheme 'ftp'", "http:// or https://"),
        ("upstreams", "A=http://x", "upstream name 'A' is not allowed", "lowercase"),
        ("upstreams", "a=http://u:p@x/", "user information", "without user:password@"),
        ("upstreams", "a=http://x/?q=1", "query or fragment", "base URL"),
        ("upstreams", "a=http:///path", "no host", "base URL"),
        ("upstreams", "noequals", "not of the form NAME=URL", "NAME=URL"),
        ("upstreams", "a=http://x,a=http://y", "given twice", "each name once"),
        ("upstreams", "metrics=http://x", "reserved", "other than healthz, metrics"),
        ("signing_params", "X-Amz-*,a=b", "contains a space, '&', '=' or '#'", "glob"),
        ("upstream_connect_timeout", "0", "out of range", "more than 0"),
        ("upstream_read_timeout", "soon", "not a duration", "seconds"),
        ("upstream_connections", "0", "out of range", "integer from 1"),
        ("upstream_connections", "many", "not an integer", "integer"),
        ("auth_ttl", "-5", "-5 seconds is out of range", "at least 0"),
        ("stale_if_error", "1w", "not a duration", "s, m, h or d"),
        ("heuristic_fraction", "1.5", "out of range", "at most 1"),
        ("heuristic_fraction", "nan", "out of range", "greater than 0"),
        ("max_ranges", "0", "out of range", "from 1"),
        ("max_header_bytes", "10", "out of range", "from 256"),
        ("max_url_bytes", "x", "not an integer", "integer"),
        ("client_timeout", "0", "out of range", "more than 0"),
        ("evict_low_watermark", "0", "out of range", "greater than 0"),
        ("access_log", "", "neither a boolean nor a path", "true (log to stderr)"),
        ("metrics", "maybe", "not a boolean", "true or false"),
        ("fast_lane", "sometimes", "not a boolean", "true or false"),
        ("event_loop", "trio", "not an event loop proxyd knows", "asyncio or uvloop"),
    ],
)
def test_invalid_values_from_every_source(
    tmp_path: Path, key: str, value: str, problem: str, expected: str
) -> None:
    # environment variable
    message = error(env={f"PROXYD_{key.upper()}": value})
    assert message.startswith(f"environment variable PROXYD_{key.upper()}: invalid {key}: ")
    assert problem in message
    assert expected in message.partition("(expected ")[2]
    # command-line flag
    flag = "--upstream" if key == "upstreams" else "--" + key.replace("_", "-")
    if key == "signing_params":
        flag = "--signing-param"
    flags: dict[str, Any] = {key: value}
    message = error(None, None, **flags)
    assert message.startswith(f"command-line flag {flag}: invalid {key}: ")
    assert problem in message
    # config file (a string value; TOML-typed values are tested below)
    if key == "upstreams":
        name, _, url = value.partition("=")
        if "," in url or not url:
            return
        text = f'[upstreams]\n"{name}" = "{url}"\n'
    else:
        text = f'{key} = "{value}"\n'
    config = write(tmp_path, text)
    message = error(config)
    assert message.startswith(f"config file {config}, key '{key}': invalid {key}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cache_size = true", "is a boolean"),
        ("cache_size = [1]", "is a list"),
        ("max_ranges = 1.5", "not an integer"),
        ("metrics = 1", "not a boolean"),
        ("listen = 8080", "not a string"),
        ('upstreams = "a"', "not of the form NAME=URL"),
        ("upstreams = 3", "not a table of upstreams"),
        ("[upstreams]\na = 3", "is not a string"),
        ("signing_params = 3", "is not a list"),
        ("signing_params = [1]", "is not a pattern"),
        ("heuristic_fraction = true", "is a boolean"),
        ("auth_ttl = inf", "not finite"),
    ],
)
def test_invalid_typed_values_in_file(tmp_path: Path, text: str, problem: str) -> None:
    config = write(tmp_path, text + "\n")
    message = error(config)
    assert f"config file {config}, key '" in message
    assert problem in message


def test_cross_setting_errors_name_both_settings_and_sources(tmp_path: Path) -> None:
    config = write(tmp_path, "evict_high_watermark = 0.8\n")
    message = error(config, {"PROXYD_EVICT_LOW_WATERMARK": "0.85"})
    assert "evict_low_watermark from environment variable PROXYD_EVICT_LOW_WATERMARK" in message
    assert f"evict_high_watermark from config file {config}, key 'evict_high_watermark'" in message
    assert "not below the high watermark" in message

    message = error(block_size="4MiB", max_fetch_bytes="1MiB")
    assert "max_fetch_bytes from command-line flag --max-fetch-bytes" in message
    assert "block_size from command-line flag --block-size" in message
    assert "smaller than one block" in message

    message = error(cache_size="512KiB")
    assert "block_size from the defaults" in message
    assert "cannot hold one block" in message

    message = error(max_header_bytes=9000, max_headers_total_bytes=8192)
    assert "max_headers_total_bytes >= max_header_bytes" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cache_size = ", "is not valid TOML"),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_unreadable_config_file(tmp_path: Path, text: str | bytes, problem: str) -> None:
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    message = error(path)
    assert message.startswith(f"config file {path}: invalid config: ")
    assert problem in message


def test_missing_config_file(tmp_path: Path) -> None:
    message = error(tmp_path / "nope.toml")
    assert "nope.toml: invalid config: the file does not exist" in message
    message = error(tmp_path)
    assert "is a directory" in message


def test_config_error_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"PROXYD_MAX_RANGES": "x"}, {})
    exc = info.value
    assert (exc.setting, exc.source) == ("max_ranges", "environment variable PROXYD_MAX_RANGES")
    assert "not an integer" in exc.problem
    assert isinstance(exc, ValueError)


# -- value parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50GiB", 50 * GiB),
        ("500MB", 500_000_000),
        ("1e9", 10**9),
        ("1.5GiB", 3 * GiB // 2),
        ("1 GiB", GiB),
        ("64k", 64 * KiB),
        ("64K", 64 * KiB),
        ("64kb", 64_000),
        ("2m", 2 * MiB),
        ("1T", 1024**4),
        ("1PB", 10**15),
        ("123", 123),
        ("123B", 123),
        (" 7 MiB ", 7 * MiB),
        (".5KiB", 512),
        ("2.5e3", 2500),
        (4096, 4096),
        (1e6, 10**6),
    ],
)
def test_parse_size(text: str | int | float, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "GiB", "1.5", "1e-3", "-1", "1 2", "1XiB", "1e999", "9" * 5000, True, None]
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**60))
@example(8448)  # 8.25 KiB, shown as "8.2": exactly half a tenth away
def test_format_size_round_trips_exact_values(n: int) -> None:
    text = format_size(n)
    if "." not in text:
        assert parse_size(text.replace(" ", "")) == n
    else:  # one decimal: within half a tenth of the unit (exact arithmetic: 8.25 KiB shown
        # as "8.2" is exactly half a tenth away, which floats would overshoot)
        number, unit = text.split()
        factor = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}[unit]
        assert abs(Fraction(number) * factor - n) <= Fraction(factor, 20)


def test_durations_and_booleans() -> None:
    s = load(
        None,
        {
            "PROXYD_STALE_IF_ERROR": "2h",
            "PROXYD_AUTH_TTL": "1.5",
            "PROXYD_HEURISTIC_MAX": "30m",
            "PROXYD_CLIENT_TIMEOUT": "45s",
            "PROXYD_METRICS": "off",
            "PROXYD_ACCESS_LOG": "false",
        },
    )
    assert (s.stale_if_error, s.auth_ttl, s.heuristic_max, s.client_timeout) == (
        7200,
        1.5,
        1800,
        45,
    )
    assert s.metrics is False
    assert s.access_log is False
    assert load(None, {"PROXYD_ACCESS_LOG": "-"}).access_log is True
    assert load(None, {"PROXYD_ACCESS_LOG": "/var/log/p.log"}).access_log == Path("/var/log/p.log")


def test_listen_forms() -> None:
    assert load(listen="[::1]:0").listen_host == "::1"
    assert load(listen="[::1]:0").listen == "[::1]:0"
    assert load(listen="proxy.example.org:3128").listen_port == 3128


def test_upstream_urls_are_normalised() -> None:
    s = load(
        None,
        {
            "PROXYD_UPSTREAMS": "a=HTTP://Data.Example.ORG:80/Repo/, b=https://x:8443 "
            "c=https://[::1]:443/"
        },
    )
    assert s.upstreams == {
        "a": "http://data.example.org/Repo",
        "b": "https://x:8443",
        "c": "https://[::1]",
    }


def test_signing_params_from_env() -> None:
    assert load(None, {"PROXYD_SIGNING_PARAMS": "X-Amz-*, Signature"}).signing_params == (
        "X-Amz-*",
        "Signature",
    )
    assert load(None, {"PROXYD_SIGNING_PARAMS": ""}).signing_params == ()


def test_settings_are_frozen() -> None:
    s = load(upstreams=["a=http://x"])
    with pytest.raises(AttributeError):
        s.cache_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.upstreams["b"] = "http://y"  # type: ignore[index]


def test_describe() -> None:
    s = load(upstreams=["b=http://b.example", "a=https://a.example/repo"], cache_size="100GiB")
    text = describe(s)
    assert "listen          127.0.0.1:8080" in text
    assert "100 GiB (evict from 95 GiB down to 90 GiB)" in text
    assert "block size      1 MiB" in text
    assert text.index("/a") < text.index("/b")
    assert "-> https://a.example/repo" in text
    assert "none configured" in describe(ProxySettings())

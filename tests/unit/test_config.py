"""The INI file: typed values, defaults, and one clear line for every mistake."""

from __future__ import annotations

import enum
import ipaddress
from pathlib import Path

import pytest
from twisted.python import usage

from boatwist.config import ConfigError, Settings, describe_defaults, load_config, parse_config
from boatwist.tap import Options

ROOT = Path(__file__).resolve().parents[2]


def test_empty_file_gives_the_documented_defaults() -> None:
    """Every key has a default: an empty file is a working configuration."""
    s = parse_config("")
    assert s.server.http == "tcp:8080:interface=127.0.0.1"
    assert s.server.chat == "tcp:8023:interface=127.0.0.1"
    assert s.admission.max_users == 10
    assert s.admission.networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert (s.keepalive.idle, s.keepalive.interval, s.keepalive.count, s.keepalive.user_timeout) == (1, 1, 2, 3.0)
    assert (s.heartbeat.interval, s.heartbeat.stream_interval) == (1.0, 15.0)
    assert s.auth.schemes == ("digest", "basic")
    assert s.auth.digest_algorithms == ("SHA-256", "MD5")


def test_shipped_config_parses() -> None:
    """The etc/embweb.ini the README runs is valid and has the DESIGN.md contract keys."""
    s = load_config(ROOT / "etc" / "embweb.ini")
    assert s.server.http.startswith("tcp:8080")
    assert s.server.chat.startswith("tcp:8023")
    assert s.admission.max_users == 10
    assert s.server.state_dir == Path("var")


def test_values_are_typed() -> None:
    """Numbers, lists and networks come out as Python values."""
    s = parse_config(
        "[admission]\nmax_users = 3\nnetworks = 10.0.0.0/8, ::ffff:0:0/96\nhttp_grace=2.5\n"
        "[auth]\nschemes = Basic\n[keepalive]\nuser_timeout = 0\n"
    )
    assert s.admission.max_users == 3
    assert s.admission.http_grace == 2.5
    assert len(s.admission.networks) == 2
    assert s.auth.schemes == ("basic",)
    assert s.keepalive.user_timeout == 0


def test_settings_are_frozen() -> None:
    """Nothing can change a limit behind the validator's back."""
    s = parse_config("")
    with pytest.raises(Exception):
        s.admission.max_users = 99  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[admission]\nmax_users = ten\n", ["cfg.ini:2:", "[admission] max_users = 'ten'", "whole number"]),
        ("[admission]\nmax_users = 0\n", ["[admission] max_users", "from 1 to"]),
        ("[admission]\nnetworks = 10.0.0.300/8\n", ["[admission] networks", "CIDR"]),
        ("[admission]\nnetworks = 10.0.0.1/8\n", ["[admission] networks", "host bits"]),
        ("[server]\nhttp = tcp:notaport\n", ["[server] http = 'tcp:notaport'", "endpoint"]),
        ("[server]\nhttp = bogus:1234\n", ["[server] http", "endpoint"]),
        ("[server]\nredirect_http = maybe\n", ["[server] redirect_http", "yes or no"]),
        ("[sever]\nhttp = tcp:1\n", ["cfg.ini:1:", "unknown section [sever]"]),
        ("[server]\nhtpp = tcp:1\n", ["cfg.ini:2:", "[server] htpp", "unknown key"]),
        ("[keepalive]\nidle = 1.5\n", ["[keepalive] idle", "whole number"]),
        ("[heartbeat]\ninterval = nan\n", ["[heartbeat] interval", "seconds"]),
        ("[auth]\nschemes = ntlm\n", ["[auth] schemes", "digest, basic"]),
        ("[auth]\nrealm = a\"b\n", ["[auth] realm"]),
        ("[server]\nhttp =\nhttps =\n", ["at least one listener"]),
        ("[server]\nredirect_http = yes\n", ["redirect_http", "https"]),
        ("[server]\nhttp\n", ["cfg.ini"]),
    ],
)
def test_bad_values_name_file_line_key_value_and_expectation(text: str, expected: list[str]) -> None:
    """Each mistake is one line naming where it is and what was expected."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="cfg.ini")
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A wrong --config path says so instead of running with defaults."""
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.ini")


def test_options_turn_config_errors_into_usage_errors(tmp_path: Path) -> None:
    """postOptions raises UsageError, which twistd turns into an exit without traceback."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[admission]\nmax_users = -1\n")
    options = Options()
    options["config"] = str(bad)
    with pytest.raises(usage.UsageError, match=r"\[admission\] max_users"):
        options.postOptions()


def test_options_print_one_line_and_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the command line a config error is one line on stderr and exit status 2."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[keepalive]\ncount = 1000\n")
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[keepalive] count" in err and str(bad) in err


def test_every_key_is_documented_in_the_readme() -> None:
    """The README's configuration table names every key the parser accepts."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [f"[{section}] {key}" for section, key, _ in describe_defaults() if f"`{key}`" not in readme]
    assert not missing, missing


def test_settings_default_user_files_live_in_state_dir() -> None:
    """Empty users/digest_users mean files in state_dir."""
    s = parse_config("[server]\nstate_dir = /tmp/x\n")
    assert s.users_file == Path("/tmp/x/users.htpasswd")
    assert s.digest_users_file == Path("/tmp/x/users.htdigest")
    assert isinstance(s, Settings)


def test_hosts_are_a_list_and_garbage_is_refused() -> None:
    """[http] hosts is a list of names; a URL or a path is not a host name."""
    assert parse_config("[http]\nhosts = Device.local, .example.com, 192.0.2.1:8080\n").http.hosts == (
        "device.local", ".example.com", "192.0.2.1:8080")
    with pytest.raises(ConfigError, match=r"\[http\] hosts"):
        parse_config("[http]\nhosts = http://x/\n")


def test_tls_endpoints_and_ssl_files(tmp_path: Path) -> None:
    """
    Issue 8 item 8: ``tls:PORT`` is a tcp endpoint boatwist puts TLS on;
    an ``ssl:`` endpoint naming the automatic certificate in state_dir/tls
    is accepted before that certificate exists (it is made before the
    listeners), while any other missing file is named in the one line.
    """
    from boatwist.config import is_tls, plain_endpoint

    settings = parse_config("[server]\nchat = tls:8992:interface=127.0.0.1\nhttps = tls:8443\n")
    assert is_tls(settings.server.chat) and plain_endpoint(settings.server.chat) == "tcp:8992:interface=127.0.0.1"
    with pytest.raises(ConfigError, match="expected a Twisted endpoint string"):
        parse_config("[server]\nchat = tls:notaport\n")
    state = tmp_path / "var"
    auto = f"ssl:8992:privateKey={state}/tls/key.pem:certKey={state}/tls/cert.pem"
    assert parse_config(f"[server]\nstate_dir = {state}\nchat = {auto}\n").server.chat == auto
    with pytest.raises(ConfigError, match=r"\[server\] chat = .*: privateKey file '/nowhere/key.pem' does not exist"):
        parse_config("[server]\nchat = ssl:8992:privateKey=/nowhere/key.pem\n")
    with pytest.raises(ConfigError, match="expected privateKey"):
        parse_config("[server]\nchat = ssl:8992\n")


@pytest.mark.parametrize("text, size", [("auto", 0), ("AUTO", 0), ("262144", 262144), ("512K", 512 * 1024),
                                        ("4M", 4 << 20), ("4MiB", 4 << 20), ("1g", 1 << 30)])
def test_store_max_size_takes_bytes_with_a_unit_or_auto(text: str, size: int) -> None:
    """[store] max_size: auto (0), or bytes with an optional K/M/G (KiB, MiB, GiB) suffix."""
    assert parse_config(f"[store]\nmax_size = {text}\n").store.max_size == size


@pytest.mark.parametrize("text", ["-1", "4X", "1.5M", "100K", "", "M"])
def test_store_max_size_refuses_what_is_not_a_size(text: str) -> None:
    """A size that is not one (or below 256 KiB, where SQLite's own pages do not fit) is one line."""
    with pytest.raises(ConfigError, match=r"\[store\] max_size"):
        parse_config(f"[store]\nmax_size = {text}\n", "f.ini")


#: Keys whose default is worked out from another (the table says how).
DERIVED_DEFAULTS = {("auth", "users"): "`state_dir/users.htpasswd`",
                    ("auth", "digest_users"): "`state_dir/users.htdigest`",
                    ("server", "name"): "*(the host name)*",
                    ("mqtt", "client_id"): "`boatwist-<device name>`",
                    ("mqtt", "topic"): "`boatwist/<device name>`"}
#: Keys whose value is a size in bytes (written 1M, 512K; 0 is auto).
SIZE_KEYS = {("store", "max_size"), ("log", "max_size")}


def _readme_default(section: str, key: str, value: object) -> str:
    """How the README's table writes the default C{value} of C{[section] key}."""
    if (section, key) in DERIVED_DEFAULTS:
        return DERIVED_DEFAULTS[(section, key)]
    if (section, key) in SIZE_KEYS and isinstance(value, int):
        if value == 0:
            return "`auto`"
        for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
            if value % size == 0:
                return f"`{value // size}{unit}`"
    if value is None or value == "" or value == ():
        return "*(empty)*"
    if isinstance(value, bool):
        return "`yes`" if value else "`no`"
    if isinstance(value, tuple):
        return "`" + ", ".join(str(getattr(v, "value", v)) for v in value) + "`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, enum.Enum):
        label = getattr(value, "label", None)  # an ordered Role says its name as label
        return f"`{label if isinstance(label, str) else value.value}`"
    return f"`{value}`"


def test_the_readmes_table_has_every_key_with_its_default() -> None:
    """
    Every key the parser accepts has its row in the README's configuration
    table (section, key, default), and the default written there is the
    code's: a limit changed in one place and not the other fails here.
    """
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[1].startswith("`") and cells[1].endswith("`"):
            rows[(cells[0], cells[1].strip("`"))] = cells[2]
    wrong = {}
    for section, key, default in describe_defaults():
        expected = _readme_default(section, key, default)
        if rows.get((section, key)) != expected:
            wrong[f"[{section}] {key}"] = (rows.get((section, key)), expected)
    assert not wrong, wrong


@pytest.mark.parametrize("text, expected", [("", "STATE/access.log"), ("/var/log/embweb-access.log",
                                                                     "/var/log/embweb-access.log"),
                                            ("log", None), ("off", None)])
def test_access_log_is_a_file_in_state_dir_unless_log_or_off(text: str, expected: str | None) -> None:
    """[http] access_log: empty is state_dir/access.log; a path is that file; log and off are no file."""
    settings = parse_config(f"[server]\nstate_dir = /srv/b\n[http]\naccess_log = {text}\n")
    want = None if expected is None else Path(expected.replace("STATE", "/srv/b"))
    assert settings.access_log_file == want
    assert settings.http.access_log == (text if text in ("log", "off") else settings.http.access_log)

"""
What ``pip install`` of boatwist puts on a device, checked on a real wheel
installed (non-editable) into a fresh virtualenv.

The twistd plugin lives in ``twisted/plugins/embweb.py`` outside the
``boatwist`` package, a layout setuptools' automatic discovery gets wrong
(django/daphne shipped wheels without their plugin that way, daphne issue
557).  So this pins, on the installed files themselves: the plugin file is
there and is what twistd finds; no ``__init__.py`` of ours shadows
Twisted's ``twisted`` package or makes ``twisted/plugins`` a plain package
(Twisted's plugin loader skips such folders); the schema and the UI's
static files are package data; the ``embweb-passwd`` script works; the
plugin cache (``dropin.cache``) stays out of git and out of the wheel.

The wheel is built by pip as users build it (an isolated build environment
with pyproject.toml's build requirements) from a copy of the working tree,
so the build never writes into the checkout, and installed with
``--no-deps --no-index`` into a venv made without pip.  To stay quick and
offline after the build, the dependencies (Twisted, bcrypt, ...) are
borrowed from the running environment through a ``.pth`` line added
*after* the install: they come after the installed boatwist on
``sys.path``, and nothing of the source tree is visible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

import twisted
from daemon import Daemon

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: Not part of what gets built: caches, environments, build output, test scratch.
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache", "__pycache__", "*.pyc", "build", "dist",
    "*.egg-info", "_trial_temp", "test_tls", "var", "bench", "node_modules",
)

#: Runs twistd from the installed environment (Twisted's own script is not in it).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


class Install:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.wheel: Path | None = None
        self.site: Path | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env["PYTHONNOUSERSITE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run C{argv} in a scratch directory (never the source tree) with the installed environment."""
        return subprocess.run(list(argv), cwd=self.root / "scratch", env=self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def python_c(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.python), "-c", code, *args)


def _pip(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    out = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert out.returncode == 0, f"pip {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    """A wheel built from a copy of the working tree, installed into a fresh venv."""
    inst = Install(tmp_path_factory.mktemp("packaging"))
    source = inst.root / "src"
    shutil.copytree(ROOT, source, ignore=IGNORED, symlinks=True)
    # A plugin cache in the tree, as every twistd run leaves one: it must not ship.
    cache = source / "twisted" / "plugins" / "dropin.cache"
    if not cache.exists():
        cache.write_bytes(b"a stale plugin cache from a developer's checkout\n")
    (inst.root / "scratch").mkdir()
    dist = inst.root / "dist"
    # Built as users build it: in an isolated build environment with the
    # build requirements pyproject.toml names (from the configured index).
    _pip("wheel", "--no-deps", "--wheel-dir", str(dist), str(source))
    wheels = list(dist.glob("boatwist-*.whl"))
    assert len(wheels) == 1, wheels
    inst.wheel = wheels[0]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(inst.venv)], check=True, timeout=60)
    _pip("--python", str(inst.python), "install", "--no-deps", "--no-index", str(inst.wheel))
    sites = list((inst.venv / "lib").glob("python3*/site-packages"))
    assert len(sites) == 1, sites
    inst.site = sites[0]
    # Only now (so pip never saw them) make the dependencies importable, after our own files.
    dependencies = Path(twisted.__file__).resolve().parent.parent
    (inst.site / "zz-test-dependencies.pth").write_text(f"{dependencies}\n")
    yield inst


# ------------------------------------------------------------------- wheel


def test_wheel_contents(install: Install) -> None:
    """
    The wheel has the one-line plugin at twisted/plugins/embweb.py, the
    schema and the static UI files, the embweb-passwd entry point; and no
    twisted/__init__.py, no twisted/plugins/__init__.py, no dropin.cache,
    no tests.
    """
    assert install.wheel is not None
    with zipfile.ZipFile(install.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "twisted/plugins/embweb.py" in names, sorted(names)
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith("dropin.cache")], sorted(names)
    assert not [n for n in names if n.startswith("tests/")], sorted(names)
    for required in ("boatwist/__init__.py", "boatwist/tap.py", "boatwist/store/schema/v1.sql",
                     "boatwist/web/static/index.html", "boatwist/web/static/app.js",
                     "boatwist/web/static/style.css"):
        assert required in names, (required, sorted(names))
    assert "embweb-passwd = boatwist.auth.passwd_cli:main" in entry_points, entry_points
    assert "embweb-fleet = boatwist.mqtt.fleet:main" in entry_points, entry_points
    # Every module of the package is shipped (a sub-package missing from
    # [tool.setuptools] packages would silently drop out of the wheel).
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "boatwist").rglob("*.py")}
    assert source <= names, sorted(source - names)


# ----------------------------------------------------------- installed tree


def test_installed_files(install: Install) -> None:
    """
    site-packages/twisted/plugins/embweb.py is installed, with no
    __init__.py of ours in twisted/ or twisted/plugins/ (on disk or in the
    RECORD), and the schema and static files are installed with the package.
    """
    site = install.site
    assert site is not None
    assert (site / "twisted" / "plugins" / "embweb.py").is_file()
    assert not (site / "twisted" / "__init__.py").exists()
    assert not (site / "twisted" / "plugins" / "__init__.py").exists()
    assert (site / "boatwist" / "store" / "schema" / "v1.sql").is_file()
    assert (site / "boatwist" / "web" / "static" / "index.html").is_file()
    record = next(site.glob("boatwist-*.dist-info")) / "RECORD"
    recorded = {line.split(",", 1)[0] for line in record.read_text().splitlines()}
    assert "twisted/plugins/embweb.py" in recorded
    assert not {"twisted/__init__.py", "twisted/plugins/__init__.py"} & recorded
    assert not [n for n in recorded if n.endswith("dropin.cache")]


def test_installed_code_is_what_runs(install: Install) -> None:
    """
    In the installed environment boatwist, its static files and the embweb
    plugin module are imported from the venv (not the source tree), and
    Twisted's plugin system finds the embweb service maker there.
    """
    out = install.python_c(
        "import boatwist, twisted.plugins\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "from boatwist.web.static import static_dir\n"
        "makers = [p for p in getPlugins(IServiceMaker) if p.tapname == 'embweb']\n"
        "import sys\n"
        "print(boatwist.__file__)\n"
        "print(sys.modules['twisted.plugins.embweb'].__file__)\n"
        "print(static_dir())\n"
        "print(len(makers), makers[0].module if makers else None)\n"
    )
    assert out.returncode == 0, out.stderr
    boatwist_file, plugin_file, static, makers = out.stdout.splitlines()
    site = str(install.site)
    assert boatwist_file.startswith(site), boatwist_file
    assert plugin_file.startswith(site), plugin_file
    assert static.startswith(site) and Path(static, "index.html").is_file(), static
    assert makers == "1 boatwist.tap", makers


def test_twistd_help_lists_embweb(install: Install) -> None:
    """`twistd --help` of the installed environment lists the embweb plugin; `twistd -n embweb --help` shows --config."""
    out = install.python_c(TWISTD, "--help")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ") and line.split()]
    assert "embweb" in listed, out.stdout
    out = install.python_c(TWISTD, "-n", "embweb", "--help")
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_embweb_passwd_script(install: Install) -> None:
    """The embweb-passwd console script is installed and answers --help."""
    script = install.venv / "bin" / "embweb-passwd"
    assert script.is_file()
    out = install.run(str(script), "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: embweb-passwd")
    for command in ("add", "passwd", "delete", "list"):
        assert command in out.stdout


def test_embweb_fleet_script(install: Install) -> None:
    """The embweb-fleet console script is installed and answers --help (paho comes with the package)."""
    out = install.run(str(install.venv / "bin" / "embweb-fleet"), "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: embweb-fleet") and "--once" in out.stdout


def test_installed_daemon_serves(install: Install, tmp_path: Path) -> None:
    """
    The installed copy starts with twistd -n embweb and serves: /healthz,
    and an authenticated chat round trip, which needs the schema shipped as
    package data.
    """
    d = Daemon(tmp_path / "d")
    d.env = install.env()
    argv = [str(install.python), "-c", TWISTD] + d.argv()[1:]
    try:
        d.spawn(argv)
        d.wait_ready(30)
        assert d.post_json("/api/chat", "alice", {"text": "from the wheel"})[0] == 201
        history = d.get_json("/api/chat", "alice")
        assert [m["text"] for m in history["messages"]] == ["from the wheel"]
    finally:
        d.stop()
    assert "Traceback" not in d.log_text(), d.log_text()


# --------------------------------------------------------------------- git


def test_plugin_cache_is_ignored_by_git() -> None:
    """dropin.cache is listed in .gitignore, ignored by git there, and not tracked."""
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert "dropin.cache" in patterns or "twisted/plugins/dropin.cache" in patterns, patterns
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "twisted/plugins/dropin.cache"],
                             timeout=30)
    assert ignored.returncode == 0
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", "twisted/plugins"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    assert "twisted/plugins/embweb.py" in tracked
    assert not [name for name in tracked if name.endswith("dropin.cache")], tracked

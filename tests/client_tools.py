"""
The HTTP clients operators use, driven as they drive them, for the tests
of what real clients do: curl, wget, httpx, requests, urllib.

A client that is not installed skips the test that needs it -- unless the
environment variable ``CI`` is set (to anything but "", "0", "false",
"no"): CI installs them all (``.ci/run``) and must run these tests, so
there it fails.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

#: Every client mode, by the name the tests use.
CLIENTS = ("curl --digest", "curl --anyauth", "curl --basic", "wget", "httpx digest", "httpx basic",
           "requests digest", "requests basic", "urllib digest", "urllib basic")
#: The modes that speak Basic (which every user can use) and those that speak only Digest.
BASIC_CLIENTS = ("curl --basic", "wget", "httpx basic", "requests basic", "urllib basic")
DIGEST_ONLY_CLIENTS = ("curl --digest", "httpx digest", "requests digest", "urllib digest")


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_program(name: str, package: str) -> str:
    """The path of C{name}, or skip (fail under CI) the test."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian package {package})"
        if ci():
            pytest.fail(f"{message}; CI is set and must run this test (.ci/run installs it)", pytrace=False)
        pytest.skip(message)
    return found


def require_module(name: str) -> Any:
    """The Python module C{name} (in the test extra), or skip (fail under CI) the test."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"the Python package {name} is not installed (pip install -e '.[test]')"
        if ci():
            pytest.fail(f"{message}; CI is set and must run this test", pytrace=False)
        pytest.skip(message)


def fetch(client: str, url: str, user: str, password: str, timeout: float = 20.0) -> int:
    """
    GET C{url} as C{user} with C{client} (one of L{CLIENTS}), as a person
    would call it; the final HTTP status (wget: 200 or 401 from its exit
    status, 6 = authentication failed).
    """
    if client.startswith("curl"):
        curl = require_program("curl", "curl")
        mode = client.split()[1]
        done = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", mode, "-u", f"{user}:{password}",
                               url], capture_output=True, text=True, timeout=timeout)
        return int(done.stdout or 0)
    if client == "wget":
        wget = require_program("wget", "wget")
        done = subprocess.run([wget, "-q", "-O", "/dev/null", "--tries=1", f"--user={user}", f"--password={password}",
                               url], capture_output=True, text=True, timeout=timeout)
        return {0: 200, 6: 401}.get(done.returncode, 1000 + done.returncode)
    if client.startswith("httpx"):
        httpx = require_module("httpx")
        auth = httpx.DigestAuth(user, password) if client.endswith("digest") else httpx.BasicAuth(user, password)
        return int(httpx.get(url, auth=auth, timeout=timeout).status_code)
    if client.startswith("requests"):
        requests = require_module("requests")
        from requests.auth import HTTPBasicAuth, HTTPDigestAuth

        auth = HTTPDigestAuth(user, password) if client.endswith("digest") else HTTPBasicAuth(user, password)
        return int(requests.get(url, auth=auth, timeout=timeout).status_code)
    if client.startswith("urllib"):
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, url, user, password)
        handler = (urllib.request.HTTPDigestAuthHandler if client.endswith("digest")
                   else urllib.request.HTTPBasicAuthHandler)(manager)
        try:
            with urllib.request.build_opener(handler).open(url, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            e.close()
            return int(e.code)
    raise ValueError(f"unknown client {client!r}")

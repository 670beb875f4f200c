"""
The hashes of HTTP Digest (RFC 7616): one table for the password files
(HA1 = H(user:realm:password)), the checkers and the Digest protocol.
"""

from __future__ import annotations

import hashlib

__all__ = ["DIGEST_ALGORITHMS", "digest_hex"]

#: Digest algorithm name -> hashlib name.  SHA-256 in an htdigest file is our extension.
DIGEST_ALGORITHMS = {"MD5": "md5", "SHA-256": "sha256"}


def digest_hex(algorithm: str, data: bytes) -> str:
    """H(data) in lower-case hex for a Digest algorithm name (KeyError for an unknown one)."""
    return hashlib.new(DIGEST_ALGORITHMS[algorithm], data).hexdigest()

"""
Why a login was refused, when the reason is not "wrong password".

Every refusal here is an L{UnauthorizedLogin}, so the HTTP guard answers
401 and the chat port says "login incorrect"; each is its own type so that
the throttle and the login log can tell it from a guess:

* L{StaleNonce}: a right Digest response on a nonce that may not be used
  (any more): the client retries silently with a fresh one (``stale=true``).
* L{NoUsableHash}: the user exists but has no stored hash for what the
  client chose (an ``htdigest`` user answering the SHA-256 challenge, an
  ``htpasswd -B`` user answering any Digest challenge).  Nothing was
  checked, so nothing was guessed; the 401 then offers only what that user
  can use.

A throttle that counts attempts ahead of checking them refunds every
L{NotAGuess}.
"""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin

__all__ = ["NoUsableHash", "NotAGuess", "StaleNonce"]


class NotAGuess(UnauthorizedLogin):
    """A refusal that says nothing about the password: not counted as a failed login."""


class StaleNonce(NotAGuess):
    """
    The Digest response was right but its nonce may not be used (again): its
    count was not above the last one seen, it expired, or it was issued
    before this process started.  Browsers cause it in normal use and
    retry without asking the person (``stale=true``).
    """


class NoUsableHash(NotAGuess):
    """
    C{user} exists but has no stored hash for C{scheme} (``"basic"`` or a
    Digest algorithm, ``"MD5"`` / ``"SHA-256"``), so the response could not
    be checked at all.  C{available} is what the user does have: Digest
    algorithm names, and ``"basic"`` when a Basic password can be checked.
    """

    def __init__(self, user: str, scheme: str, available: tuple[str, ...]) -> None:
        super().__init__(f"user {user!r} has no {scheme} hash")
        self.user = user
        self.scheme = scheme
        self.available = available

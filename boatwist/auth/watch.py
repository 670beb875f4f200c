"""
Ends the sessions of users whose password changed or who were deleted.
"""

from __future__ import annotations

from twisted.logger import Logger

from boatwist.auth.passwords import UserDatabase
from boatwist.presence import Presence
from boatwist.reasons import Reason

__all__ = ["CredentialWatch"]


class CredentialWatch:
    """
    Ends the sessions of users whose password changed or who were deleted.

    HTTP requests are re-authenticated one by one, but a chat connection or
    an event stream is authenticated once, when it opens: without this, a
    user removed with embweb-passwd would keep chatting and keep a seat for
    as long as the connection lasts.  Called from the heartbeat; the users
    files are looked at no more often than the database allows.
    """

    _log = Logger()

    def __init__(self, database: UserDatabase, realm: str, presence: Presence) -> None:
        self._db = database
        self._realm = realm
        self._presence = presence
        self._version = database.version
        self._known = self._fingerprints()

    def _fingerprints(self) -> dict[str, tuple[bytes | None, str | None, str | None]]:
        db = self._db
        return {user: (db.bcrypt_hash(user), db.ha1(user, self._realm, "MD5"), db.ha1(user, self._realm, "SHA-256"))
                for user in db.users()}

    def check(self) -> None:
        self._db.reload_if_changed()
        if self._db.version == self._version:
            return
        self._version = self._db.version
        now = self._fingerprints()
        revoked = [user for user, prints in self._known.items() if now.get(user) != prints]
        self._known = now
        for user in revoked:
            if self._presence.kick(user, Reason.REVOKED):
                self._log.info("{user}'s password changed or account was removed: sessions ended", user=user)

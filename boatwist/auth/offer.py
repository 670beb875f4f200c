"""
What a 401 offers: which schemes and Digest algorithms, to whom.

Measured with the real clients (tests/browser, tests/integration/test_clients.py):

* Chromium, curl, httpx and urllib take the *first* Digest challenge they
  support; requests merges every challenge and takes the *last* Digest
  values; Firefox takes SHA-256 wherever it is offered.  Both browsers
  prefer Digest to Basic in any order; wget prefers Basic.
* A refused Digest answer is retried by httpx and requests at most once, so
  what they are offered first must be something the user has.  Browsers,
  curl and urllib read the next 401 again; a browser given ``stale=true``
  retries without asking the person.

A user made with Apache's ``htdigest`` has only an MD5 HA1; one made with
``htpasswd -B`` has no HA1 at all; ``embweb-passwd`` writes bcrypt, MD5 and
SHA-256.  Hence the offer, recomputed whenever the files change:

1. **Digest algorithms every Digest user has**: the configured ones
   (``[auth] digest_algorithms``) that each user with any HA1 in the realm
   has.  One ``htdigest`` user turns SHA-256 off for everyone -- then every
   client, Firefox and requests included, answers MD5, which that user has.
   The log says so at start and whenever it changes, naming the users, and
   how to fix it (set their password again with ``embweb-passwd``).  When
   no user has an HA1 at all, no Digest is offered (Basic only).
2. **Basic** for everyone (``[auth] schemes``): it is checked against the
   bcrypt hash, or else against an HA1 (L{boatwist.auth.checkers}).
3. **A second round for the user who cannot use what the client chose**
   (L{NoUsableHash}: a bcrypt-only user answering Digest; a user without
   the algorithm when the offer changed in between): that 401 offers only
   what this user has -- Basic alone for a bcrypt-only user.  Browsers then
   ask once more (measured: no way to avoid that second dialog: a browser
   that was refused after sending credentials asks again, ``stale=true`` or
   not) and log in with Basic; curl ``--anyauth`` switches silently.

The second round tells whoever names a user that the name exists and what
kind of hash it has; the first offer never depends on the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from twisted.logger import Logger

from boatwist.auth.digest import DigestAuthority
from boatwist.auth.passwords import UserDatabase
from boatwist.auth.refusals import NoUsableHash

if TYPE_CHECKING:
    from twisted.web.iweb import IRequest

__all__ = ["ChallengeOffer", "OfferState"]

#: One WWW-Authenticate challenge: (scheme, parameters) -- the guard formats and quotes it.
Challenge = tuple[bytes, dict[str, bytes]]


@dataclass(frozen=True)
class OfferState:
    """What the first 401 offers now, and which users limit it."""

    #: Digest algorithms offered, in the configured order (possibly none).
    digest: tuple[str, ...]
    basic: bool
    #: Configured Digest algorithms not offered -> the users who have no HA1 for them.
    limited_by: tuple[tuple[str, tuple[str, ...]], ...]
    #: Users with no HA1 at all (htpasswd -B only) while Digest is offered: a second round gives them Basic.
    digest_less: tuple[str, ...]

    def describe(self) -> str:
        """One log line: what is offered, who limits it, how to fix it."""
        offered = [f"Digest {a}" for a in self.digest] + (["Basic"] if self.basic else [])
        parts = ["HTTP authentication offers " + (", ".join(offered) or "nothing")]
        for algorithm, users in self.limited_by:
            if users:
                parts.append(f"Digest {algorithm} is not offered because {_names(users)} "
                             f"{'has' if len(users) == 1 else 'have'} no {algorithm} HA1 "
                             f"(written by Apache's htdigest?); set {_their(users)} password again with "
                             f"embweb-passwd passwd USER to offer it")
            else:
                parts.append(f"Digest {algorithm} is not offered because no user has an HA1")
        if self.digest_less:
            parts.append(f"{_names(self.digest_less)} {'has' if len(self.digest_less) == 1 else 'have'} no HA1 "
                         f"at all (htpasswd -B): Digest clients cannot log in as "
                         f"{'them' if len(self.digest_less) > 1 else 'that user'}, browsers ask a second "
                         f"time and use Basic; embweb-passwd passwd USER adds the HA1 lines")
        return "; ".join(parts)


def _names(users: Sequence[str]) -> str:
    shown = ", ".join(repr(u) for u in users[:10])
    return shown + (f" and {len(users) - 10} more" if len(users) > 10 else "")


def _their(users: Sequence[str]) -> str:
    return "their" if len(users) > 1 else "that user's"


class ChallengeOffer:
    """
    The challenges of every 401 (see the module docstring), for the guard:
    C{challenges(request, refusal)}.

    @param realm: C{[auth] realm}.
    @param algorithms: C{[auth] digest_algorithms}, best first.
    @param digest: the process's Digest authority; None when Digest is off.
    @param basic: whether Basic is on.
    @param order: (request, algorithms) -> the same algorithms in the order
        to offer this client (L{boatwist.auth.portal.digest_order}).
    """

    _log = Logger(namespace="boatwist.auth")

    def __init__(self, database: UserDatabase, realm: str, algorithms: Sequence[str],
                 digest: DigestAuthority | None, basic: bool,
                 order: Callable[[IRequest, tuple[str, ...]], Sequence[str]] | None = None) -> None:
        self._db = database
        self._realm = realm.encode("utf-8")
        self._algorithms = tuple(algorithms)
        self._digest = digest
        self._basic = basic
        self._order = order
        self._version = -1
        self._state: OfferState | None = None

    def state(self) -> OfferState:
        """The offer for the users as they are now (logged when it changes)."""
        if self._state is None or self._version != self._db.version:
            self._version = self._db.version
            state = self._compute()
            if state != self._state:
                self._log.info("{offer}", offer=state.describe())
            self._state = state
        return self._state

    def _compute(self) -> OfferState:
        if self._digest is None:
            return OfferState((), self._basic, (), ())
        users = self._db.users()
        has = {user: self._db.available(user) for user in users}
        with_ha1 = [u for u in users if any(a in has[u] for a in self._algorithms)]
        without = tuple(u for u in users if not any(a in has[u] for a in ("SHA-256", "MD5")))
        if not with_ha1 and users and self._basic:
            # Nobody can use Digest: offering it would cost every browser a second dialog.
            return OfferState((), True, tuple((a, ()) for a in self._algorithms), ())
        offered = tuple(a for a in self._algorithms if all(a in has[u] for u in with_ha1))
        if not offered:
            offered = self._algorithms  # no algorithm everyone has: each user lacking one gets a second round
        limited = tuple((a, tuple(u for u in with_ha1 if a not in has[u])) for a in self._algorithms
                        if a not in offered)
        return OfferState(offered, self._basic, limited, without)

    def challenges(self, request: IRequest, refusal: BaseException | None = None) -> list[Challenge]:
        """
        The challenges answering C{request}: the offer, or -- after
        L{NoUsableHash} -- only what that user can use.
        """
        state = self.state()
        digest, basic = state.digest, state.basic
        if isinstance(refusal, NoUsableHash):
            mine = tuple(a for a in self._algorithms if a in refusal.available) if self._digest else ()
            theirs_basic = self._basic and "basic" in refusal.available
            if mine or theirs_basic:
                digest, basic = mine, theirs_basic
        if self._order is not None:
            digest = tuple(self._order(request, digest))
        out: list[Challenge] = []
        if self._digest is not None:
            out += [(b"digest", self._digest.challenge(request, algorithm)) for algorithm in digest]
        if basic:
            out.append((b"basic", {"realm": self._realm}))
        return out

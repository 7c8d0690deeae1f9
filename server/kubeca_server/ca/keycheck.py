"""Checking, after every (re)connect to the HSM, that its keys are the CAs' keys.

A token can be replaced by one with the same label and PIN but other keys (a restore
from the wrong backup, a swapped device, an attacker). Labels then find keys that sign
nothing the CA certificates verify. So whenever the backend's connection count moves,
every generation's key signs a fresh challenge that its *certificate's* public key must
verify, before anything else is signed. Until that holds, health says NOT_SERVING and
every signing call is UNAVAILABLE with a message saying why; it is logged at error
level once per change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import structlog
from kubeca_client.errors import Unavailable

from kubeca_server.ca.authority import Generation
from kubeca_server.keys import KeyBackend

log = structlog.get_logger("kubeca.hsm")

MISMATCH = "the HSM's keys do not match the CA certificates"


class KeyGuard:
    def __init__(self, backend: KeyBackend) -> None:
        self._backend = backend
        self._generations: Callable[[], Iterable[Generation]] = lambda: ()
        self._lock = threading.Lock()
        # None: nothing checked yet. lifecycle.load compared public objects only,
        # which a swapped token can fake, so the first probe signs.
        self._checked: int | None = None
        self._failure: str | None = None

    def watch(self, generations: Callable[[], Iterable[Generation]]) -> None:
        """What to check: the registry's generations, read at each check."""
        self._generations = generations
        self._checked = None

    def ensure(self) -> None:
        """Return if the keys were checked since the last connect; else check them now.
        Raises Unavailable naming the first key that does not match its certificate."""
        connections = self._backend.connections
        if self._checked == connections:
            return
        with self._lock:
            if self._checked == connections:
                return
            failure = self._mismatch()
            if failure is None:
                if self._failure is not None:
                    log.info("hsm.keys_match")
                self._failure = None
                self._checked = connections
                return
            if failure != self._failure:
                log.error("hsm.keys_mismatch", problem=failure)
            self._failure = failure
        raise Unavailable(failure)

    def _mismatch(self) -> str | None:
        for generation in self._generations():
            public_key = generation.certificate.public_key()
            if not generation.signer.signs_for(public_key):  # type: ignore[arg-type]
                return (
                    f"{MISMATCH}: the key labelled {generation.signer.label or '?'!r} does "
                    f"not sign for {generation.authority} generation {generation.number}; "
                    "the token was replaced or is faulty (service resumes when the right "
                    "token is back)"
                )
        return None

"""A first-come-first-served lock that can say how many requests are ahead of you.

One model serves every session of the app, one forward (or backward) at a
time. A plain lock makes a waiting session freeze and cannot tell it how
long the line is; this one hands out tickets in arrival order, so a waiter
can ask ``ahead(ticket)`` between short waits and show it ("2 requests ahead
of you"). It is reentrant, so code that already holds it (the page waited
for its turn, then the adapter takes the lock again inside ``capture``)
goes on without a second ticket, and it is a drop-in for the adapter's
``threading.RLock`` (``with lock:``, ``acquire``, ``release``).

No Streamlit here; the app's panel shows the count.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional


class TurnLock:
    """A reentrant FIFO lock with visible waiters.

    ``take()`` returns a ticket; ``wait(ticket, timeout)`` is True once the
    ticket's turn has come (the lock is then held), False on timeout (the
    ticket keeps its place). Tickets are served in the order they were
    taken. ``acquire``/``release``/``with`` work as for ``threading.RLock``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0             # the next ticket to hand out
        self._serving = 0          # the ticket whose turn it is (held or about to be)
        self._owner: Optional[int] = None
        self._depth = 0
        self._abandoned: set[int] = set()

    # --- tickets -----------------------------------------------------------------
    def take(self) -> int:
        """A place in the line (or, for the thread holding the lock, a ticket that is served at once)."""
        with self._cond:
            if self._owner == threading.get_ident():
                return -1          # reentrant: no new place
            ticket = self._next
            self._next += 1
            return ticket

    def ahead(self, ticket: int) -> int:
        """How many requests will be served before ``ticket`` (the one running now included)."""
        with self._cond:
            if ticket < 0:
                return 0
            skipped = sum(1 for t in self._abandoned if self._serving <= t < ticket)
            return max(0, ticket - self._serving - skipped)

    def waiting(self) -> int:
        """Requests in the line now, the one running included."""
        with self._cond:
            return self._next - self._serving - len(self._abandoned)

    def wait(self, ticket: int, timeout: Optional[float] = None) -> bool:
        """Block until it is ``ticket``'s turn (then hold the lock) or ``timeout`` passes."""
        me = threading.get_ident()
        with self._cond:
            if ticket < 0 or self._owner == me:
                self._owner, self._depth = me, self._depth + 1
                return True
            ok = self._cond.wait_for(lambda: self._serving == ticket and self._owner is None, timeout)
            if ok:
                self._owner, self._depth = me, 1
            return ok

    def abandon(self, ticket: int) -> None:
        """Give up a ticket that has not been served (the session went away): the line moves on."""
        with self._cond:
            if ticket < 0 or ticket < self._serving:
                return
            if ticket == self._serving and self._owner is None:
                self._advance()
            else:
                self._abandoned.add(ticket)
            self._cond.notify_all()

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1

    # --- the lock protocol ---------------------------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        ticket = self.take()
        if self.wait(ticket, None if (blocking and timeout < 0) else (timeout if blocking else 0)):
            return True
        self.abandon(ticket)
        return False

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a TurnLock held by another thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._advance()
                self._cond.notify_all()

    def __enter__(self) -> "TurnLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @contextmanager
    def turn(self, on_wait: Callable[[int], None], every: float = 0.25) -> Iterator[None]:
        """Hold the lock for the block; while waiting, ``on_wait(ahead)`` is called every ``every`` seconds
        (and once at once when anyone is ahead). An exception in ``on_wait`` (the page was stopped)
        gives the place up."""
        ticket = self.take()
        try:
            if not self.wait(ticket, 0):
                while True:
                    on_wait(self.ahead(ticket))
                    if self.wait(ticket, every):
                        break
        except BaseException:
            self.abandon(ticket)
            raise
        try:
            yield
        finally:
            self.release()

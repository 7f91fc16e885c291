"""A first-come-first-served lock that can say how many requests are ahead of you.

One model serves every session of the app, ``lanes`` forwards (or
backwards) at a time: one for a model whose forward keeps state on shared
modules, more where two threads may run it at once
(``ModelAdapter.concurrent_forwards``), so that on a machine with two cores
two students' work runs side by side instead of leaving a core idle. A
plain lock makes a waiting session freeze and cannot tell it how long the
line is; this one hands out tickets and serves them in order, so a
waiter can ask ``ahead(ticket)`` between short waits and show it ("2
requests ahead of you"). It is reentrant, so code that already holds it (the
page waited for its turn, then the adapter takes the lock again inside
``capture``) goes on without a second ticket, and it is a drop-in for the
adapter's ``threading.RLock`` (``with lock:``, ``acquire``, ``release``).

A *priority* ticket goes ahead of every ordinary one (behind earlier priority
tickets). The app gives it to a session that already has its image's forward
pass and needs the backward for its first map: with plain arrival order, 30
uploads at once would each wait for all 30 forwards before any first map,
holding 30 activation graphs in memory meanwhile.

No Streamlit here; the app's panel shows the count.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional


class TurnLock:
    """A reentrant lock for up to ``lanes`` threads at once that serves waiting tickets in order (priority
    ones first), with visible waiters.

    ``take()`` returns a ticket; ``wait(ticket, timeout)`` is True once the
    ticket's turn has come (the lock is then held), False on timeout (the
    ticket keeps its place). ``acquire``/``release``/``with`` work as for
    ``threading.RLock``.
    """

    def __init__(self, lanes: int = 1) -> None:
        if lanes < 1:
            raise ValueError("a TurnLock needs at least one lane")
        self.lanes = lanes
        self._cond = threading.Condition(threading.Lock())
        self._next = 0                   # the next ticket number
        self._line: list[int] = []       # waiting tickets, in the order they will be served
        self._priority: set[int] = set()  # those of them that are priority tickets
        self._owners: dict[int, int] = {}   # holding thread -> how many times it entered (reentrant)

    # --- tickets -----------------------------------------------------------------
    def take(self, priority: bool = False) -> int:
        """A place in the line (for the thread holding the lock, -1: it goes on at once)."""
        with self._cond:
            if threading.get_ident() in self._owners:
                return -1          # reentrant: no new place
            ticket = self._next
            self._next += 1
            if priority:
                self._line.insert(sum(1 for t in self._line if t in self._priority), ticket)
                self._priority.add(ticket)
            else:
                self._line.append(ticket)
            return ticket

    def ahead(self, ticket: int) -> int:
        """How many requests will be served before ``ticket`` (those running now included)."""
        with self._cond:
            if ticket not in self._line:
                return 0
            return self._line.index(ticket) + len(self._owners)

    def waiting(self) -> int:
        """Requests in the line now, those running included."""
        with self._cond:
            return len(self._line) + len(self._owners)

    def holds(self) -> bool:
        """Whether the calling thread holds a lane."""
        with self._cond:
            return threading.get_ident() in self._owners

    def wait(self, ticket: int, timeout: Optional[float] = None) -> bool:
        """Block until it is ``ticket``'s turn (then hold the lock) or ``timeout`` passes."""
        me = threading.get_ident()
        with self._cond:
            if ticket < 0 or me in self._owners:
                self._owners[me] = self._owners.get(me, 0) + 1
                return True
            ok = self._cond.wait_for(lambda: len(self._owners) < self.lanes and bool(self._line)
                                     and self._line[0] == ticket,
                                     timeout)
            if ok:
                self._line.pop(0)
                self._priority.discard(ticket)
                self._owners[me] = 1
                self._cond.notify_all()      # the next in line may take another free lane
            return ok

    def abandon(self, ticket: int) -> None:
        """Give up a ticket that has not been served (its session went away): the line moves on."""
        with self._cond:
            if ticket in self._line:
                self._line.remove(ticket)
                self._priority.discard(ticket)
                self._cond.notify_all()

    # --- the lock protocol ---------------------------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        ticket = self.take()
        if self.wait(ticket, None if (blocking and timeout < 0) else (timeout if blocking else 0)):
            return True
        self.abandon(ticket)
        return False

    def release(self) -> None:
        with self._cond:
            me = threading.get_ident()
            if me not in self._owners:
                raise RuntimeError("cannot release a TurnLock held by another thread")
            self._owners[me] -= 1
            if self._owners[me] == 0:
                del self._owners[me]
                self._cond.notify_all()

    def __enter__(self) -> "TurnLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @contextmanager
    def turn(self, on_wait: Callable[[int], None], every: float = 0.25, priority: bool = False) -> Iterator[None]:
        """Hold the lock for the block; while waiting, ``on_wait(ahead)`` is called every ``every`` seconds
        (and once at once when anyone is ahead). An exception in ``on_wait`` (the page was stopped)
        gives the place up."""
        ticket = self.take(priority)
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

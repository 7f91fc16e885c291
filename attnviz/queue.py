"""The app's model queue: a first-come-first-served lock that can say how many requests are ahead of you,
and a line that batches requests from different sessions.

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

:class:`Batcher` (issue 23) puts requests from many sessions in one line and runs those that can share
a forward together, up to a batch size and a short wait window, first maps ahead of later requests;
``serve.local`` gives each model that batches one such line in front of its TurnLock.

No Streamlit here; the app's panel shows the count.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Hashable, Iterator, Optional

from .threadlocal import setting


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


# --- cross-session batching -------------------------------------------------------------------

_notice = threading.local()     # the calling page's ``on_wait(ahead)`` while it waits for a batch (see notices)


def notices(on_wait: Optional[Callable[[int], None]]):
    """While the block runs, a :class:`Batcher` that makes this thread wait calls ``on_wait(ahead)``
    every ``Batcher.every`` seconds: the page's "N requests ahead of you" without passing it down through
    every method that may need a backward."""
    return setting(_notice, "fn", on_wait)


class Request:
    """One unit of work waiting for a batch: its payload, its result once run, and what it waited."""

    def __init__(self, payload: Any, key: Hashable, first: bool, seq: int):
        self.payload, self.key, self.first, self.seq = payload, key, first, seq
        self.promoted = False                      # a later request that went ahead of first ones (its share)
        self.arrived = time.monotonic()
        self.started: Optional[float] = None       # when its batch began
        self.batch_size = 0
        self.run_cpu_s = self.after_cpu_s = 0.0    # the lane thread's CPU seconds for its batch and ``after``
        self.done = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None

    @property
    def queue_wait(self) -> float:
        """Seconds between arrival and the start of its batch."""
        return (self.started if self.started is not None else time.monotonic()) - self.arrived


class Share:
    """How much of the model's time later work (a held graph's backward, a forward and backward made again)
    may take ahead of new images that wait: deficit round robin between the two (Shreedhar & Varghese,
    "Efficient fair queuing using deficit round robin", SIGCOMM 1995). Every second the model spends on new
    images while later work has waited its ``age`` earns that work ``share / (1 - share)`` seconds of credit;
    later work may go ahead of waiting new images while its credit is positive, and its run time is charged
    to it (the credit may go below zero: it then waits until new images' work has paid it back). The credit
    is capped at ``cap`` seconds, so a long wait cannot bank a burst of later work. With more students than the
    cores serve, new images then keep ``1 - share`` of the model and later work gets ``share``: neither starves.
    No threads here (the caller holds its own lock)."""

    def __init__(self, share: float, cap: float = 30.0):
        if not 0.0 <= share < 1.0:
            raise ValueError("a Share must be at least 0 and below 1")
        self.share, self.cap, self.credit = float(share), float(cap), 0.0

    def may_go_ahead(self) -> bool:
        """Whether later work may run now ahead of waiting new images."""
        return self.credit > 0                  # credit only grows with a share above 0

    def ran(self, seconds: float, *, ahead: bool = False, contended: bool = False) -> None:
        """Account ``seconds`` of model work: later work that went ahead (``ahead``) pays for it; new images'
        work run while aged later work waited (``contended``) earns it credit."""
        if ahead:
            self.credit -= seconds
        elif contended:
            self.credit = min(self.cap, self.credit + seconds * self.share / (1.0 - self.share))


class Batcher:
    """Requests from many threads run together: ``run(payloads) -> results`` on up to ``max_batch`` at once.

    A worker thread (``lanes`` of them) takes the first request in line and waits until ``max_batch``
    requests with the same ``key`` (what can share one forward: the model input's shape) are in line or
    ``window`` seconds have passed since that request arrived, then runs them as one call. While a worker
    is busy the line grows, so under load batches fill without any wait at all; alone, a request waits
    at most ``window``. ``first`` requests (a session's first map) are served before the others, each
    class in arrival order. ``lock`` (the model's :class:`TurnLock`) is held around each run, so work
    that does not batch (slow methods, checks, other pages) shares the model with the batches in line.

    ``age`` (seconds, None: never) and ``share``: a later request that has waited ``age`` seconds may go
    ahead of waiting first requests for a ``share`` of the model's time (:class:`Share`), so that a steady
    stream of first requests (more students than the cores serve) cannot starve it, nor it them. Before
    (issue 23, session 9) an aged request joined the first requests outright: with 100 students over a
    minute, every backward aged and new images' first maps waited behind them (p95 28 s against 5.3 s now).

    (Lanes kept for new images, ``spare``, were measured in sessions 9 and 11, never helped and were removed:
    the share's one-batch-at-a-time rule keeps a lane for new images where it matters.)

    ``after(values, idle)``, when given, runs once a batch's results are handed out, still holding the
    batch's lane: ``idle`` says whether no new ``first`` request is waiting then (the model's follow-up work
    for that batch, such as the backward its forward prepared, runs only when it delays no one's first map).
    It must not raise; it is told of every batch that produced results.

    ``stats()`` reports the batch sizes and queue waits seen so far; ``on_batch(requests, seconds)`` is
    told of each batch once it has run (``seconds``: the run and its ``after``; each request's
    ``run_cpu_s`` and ``after_cpu_s`` hold the lane thread's CPU seconds of both). No torch here: the tests
    drive it with a fake slow model.
    """

    every = 0.25     # how often a waiting thread's notice is refreshed

    def __init__(self, run: Callable[[list], list], *, max_batch: int = 8, window: float = 0.05, lanes: int = 1,
                 lock: Optional[TurnLock] = None, name: str = "batcher", history: int = 4096,
                 on_batch: Optional[Callable[[list, float], None]] = None,
                 after: Optional[Callable[[list, bool], None]] = None, age: Optional[float] = None,
                 share: float = 0.1):
        if max_batch < 1 or lanes < 1 or window < 0:
            raise ValueError("a Batcher needs max_batch >= 1, lanes >= 1 and window >= 0")
        self._run, self.max_batch, self.window, self.lanes = run, int(max_batch), float(window), int(lanes)
        self.lock, self.name, self.history, self.on_batch, self.after = lock, name, history, on_batch, after
        self.age = age
        self.share = Share(share)                  # later work's part of the model while new images wait
        self._ahead = 0                            # batches running now that went ahead of new images by it
        self._cond = threading.Condition(threading.Lock())
        self._line: list[Request] = []             # waiting, in service order (first requests ahead)
        self._running = 0                          # requests in batches being run now
        self._seq = 0
        self._workers: list[threading.Thread] = []
        self.batch_sizes: list[int] = []           # every batch run (the last ``history``)
        self.queue_waits: list[float] = []         # every request's wait for its batch, seconds

    # --- submitting -----------------------------------------------------------------------
    def submit(self, payload: Any, *, key: Hashable = None, first: bool = False) -> Request:
        """Put ``payload`` in line; the returned request is finished by a worker (see :meth:`wait`)."""
        with self._cond:
            req = Request(payload, key, first, self._seq)
            self._seq += 1
            at = sum(1 for r in self._line if r.first) if first else len(self._line)
            self._line.insert(at, req)
            self._start_workers()
            self._cond.notify_all()
            return req

    def ahead(self, req: Request) -> int:
        """Requests that will be served before ``req``, those running now included (0 once it runs)."""
        with self._cond:
            if req.started is not None:
                return 0
            return (self._line.index(req) if req in self._line else 0) + self._running

    def waiting(self) -> int:
        with self._cond:
            return len(self._line) + self._running

    def in_line(self) -> int:
        """Requests in line now (not those being run)."""
        with self._cond:
            return len(self._line)

    def new_waiting(self) -> int:
        """New first requests in line (promoted ones aside): what a batch's follow-up work would delay."""
        with self._cond:
            return sum(1 for r in self._line if self._new(r))

    def abandon(self, req: Request) -> None:
        """Withdraw a request not yet taken into a batch (its page went away)."""
        with self._cond:
            if req in self._line:
                self._line.remove(req)

    def wait(self, req: Request, on_wait: Optional[Callable[[int], None]] = None, *, withdraw: bool = True) -> Any:
        """``req``'s result (its exception raised here). ``on_wait(ahead)`` (default: the thread's
        :func:`notices`) is called every ``every`` seconds while it waits; an exception from it (the page
        was stopped) withdraws the request (unless ``withdraw`` is False: others need it) and propagates."""
        on_wait = on_wait if on_wait is not None else getattr(_notice, "fn", None)
        try:
            while not req.done.wait(self.every):
                if on_wait is not None:
                    on_wait(self.ahead(req))
        except BaseException:
            if withdraw:
                self.abandon(req)
            raise
        if req.error is not None:
            raise req.error
        return req.value

    def __call__(self, payload: Any, *, key: Hashable = None, first: bool = False) -> Any:
        """Submit and wait: the result of ``payload``, computed in some batch."""
        return self.wait(self.submit(payload, key=key, first=first))

    def stats(self) -> dict[str, Any]:
        """Batches run, their mean and largest size, and the requests' queue waits (p50 / p95 / max, s)."""
        with self._cond:
            sizes, waits = list(self.batch_sizes), sorted(self.queue_waits)
        pick = (lambda q: waits[min(len(waits) - 1, int(q * len(waits)))] if waits else 0.0)
        return {"batches": len(sizes), "requests": sum(sizes),
                "mean_batch": (sum(sizes) / len(sizes)) if sizes else 0.0, "max_batch": max(sizes, default=0),
                "wait_p50_s": pick(0.5), "wait_p95_s": pick(0.95), "wait_max_s": waits[-1] if waits else 0.0}

    # --- the workers ----------------------------------------------------------------------
    def _start_workers(self) -> None:
        while len(self._workers) < self.lanes:
            t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._workers)}", daemon=True)
            self._workers.append(t)
            t.start()

    def _take(self) -> list[Request]:
        """The next batch (called with the condition held; blocks until there is one)."""
        while True:
            while not self._line:
                self._cond.wait()
            batch, left = self._ready()
            if batch:
                for r in batch:
                    self._line.remove(r)
                return batch
            self._cond.wait(left)       # more may come, the head may change (a first request), a lane free up

    @staticmethod
    def _new(r: Request) -> bool:
        """A new first request (not a later one that went ahead by its share)."""
        return r.first and not r.promoted

    def _aged(self) -> Optional[Request]:
        """The oldest later request that has waited ``age`` seconds (called with the condition held)."""
        if self.age is None:
            return None
        now = time.monotonic()
        return next((r for r in self._line if not r.first and now - r.arrived >= self.age), None)

    def _ready(self) -> tuple[list[Request], Optional[float]]:
        """(the batch to run now, or [] and how long to wait for more). A helper, so that a worker
        waiting for work holds no reference to a request another worker has taken (nor its result)."""
        line = self._line
        if not line:
            return [], None
        head = line[0]
        aged = self._aged() if head.first else None
        if aged is not None and self.share.may_go_ahead() and not self._ahead:
            head = aged                            # later work's share of the model: ahead of the new images
            # (one such batch at a time: its credit is charged when it ends, and another lane stays for them)
        same = [r for r in line if r.key == head.key and (head is not aged or not r.first)]   # the aged one first
        left = head.arrived + self.window - time.monotonic()
        if len(same) >= self.max_batch or left <= 0:
            if head is aged:
                for r in same[: self.max_batch]:
                    r.promoted = True
            return same[: self.max_batch], 0.0
        return [], left

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
                other = not all(self._new(r) for r in batch)
                ahead = any(r.promoted for r in batch)      # later work in its share, ahead of new images
                self._ahead += ahead
                contended = not other and self._aged() is not None   # new images' work while later work waits
                now = time.monotonic()
                for r in batch:
                    r.started, r.batch_size = now, len(batch)
                self._running += len(batch)
                self.batch_sizes.append(len(batch))
                self.queue_waits.extend(r.queue_wait for r in batch)
                del self.batch_sizes[:-self.history], self.queue_waits[:-self.history]
            seconds = 0.0
            try:
                seconds = self._serve(batch)
            finally:
                with self._cond:
                    self._ahead -= ahead
                    self.share.ran(seconds, ahead=ahead, contended=contended)
                    self._cond.notify_all()
            # this thread keeps no request (nor its result) alive while it waits for the next batch:
            # a capture's memory is the cache's to bound
            batch = r = None

    def _serve(self, batch: list[Request]) -> float:
        """Run one batch (holding the model's lane), hand each waiter its result or the error, then run
        ``after`` in the same lane. Returns the batch's own run time (``after`` aside), seconds."""
        t0 = time.monotonic()
        ran = 0.0
        values: Optional[list] = None
        held = False
        try:
            if self.lock is not None:
                self.lock.wait(self.lock.take(priority=any(r.first or r.promoted for r in batch)))
                held = True
            t0, c0 = time.monotonic(), time.thread_time()
            values = self._run([r.payload for r in batch])
            ran = time.monotonic() - t0
            if len(values) != len(batch):
                raise RuntimeError(f"{self.name}: {len(values)} results for a batch of {len(batch)}.")
            c1 = time.thread_time()
            for r, v in zip(batch, values):
                r.value, r.run_cpu_s = v, c1 - c0
            self._finish(batch)                   # the waiters go on now, before any follow-up work
            if self.after is not None:
                with self._cond:
                    idle = not any(self._new(r) for r in self._line)
                try:
                    self.after(values, idle)
                except Exception:   # noqa: BLE001  (follow-up work is optional; its waiters fall back)
                    pass
                for r in batch:
                    r.after_cpu_s = time.thread_time() - c1
        except BaseException as exc:      # noqa: BLE001  (every waiter of this batch hears of it)
            for r in batch:
                if not r.done.is_set():
                    r.error = exc
            if values is not None and self.after is not None and len(values) == len(batch):
                try:
                    self.after(values, False)         # whatever it prepared is given up
                except Exception:   # noqa: BLE001
                    pass
        finally:
            if held:
                self.lock.release()
            self._finish(batch)
            if self.on_batch is not None:
                try:
                    self.on_batch(batch, time.monotonic() - t0)
                except Exception:   # noqa: BLE001  (a full disk must not stop the model's line)
                    pass
        return ran

    def _finish(self, batch: list[Request]) -> None:
        """Hand each request of ``batch`` its result (once)."""
        with self._cond:
            todo = [r for r in batch if not r.done.is_set()]
            self._running -= len(todo)
        for r in todo:
            r.done.set()

"""TurnLock: first come, first served, with the line's length visible to each waiter (issue 13)."""
import threading
import time

import pytest

from attnviz.queue import TurnLock


def _wait_until(cond, limit=5.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < limit, "timed out"
        time.sleep(0.005)


def _held_elsewhere(lock):
    """Hold ``lock`` in another thread until the returned event is set."""
    held, done = threading.Event(), threading.Event()

    def running():
        with lock:
            held.set()
            done.wait(10)
    t = threading.Thread(target=running)
    t.start()
    held.wait(5)
    return done, t


def test_waiters_are_served_in_arrival_order_and_see_who_is_ahead():
    lock = TurnLock()
    order, seen = [], {}
    done, runner = _held_elsewhere(lock)             # someone else's forward is running
    threads = []
    for i in range(4):
        ticket = lock.take()                          # arrival order fixed here, not by thread start-up

        def run(i=i, ticket=ticket):
            seen[i] = lock.ahead(ticket)
            assert lock.wait(ticket, 10)
            order.append(i)
            lock.release()
        threads.append(threading.Thread(target=run))
    for t in reversed(threads):                      # started in the opposite order on purpose
        t.start()
    _wait_until(lambda: len(seen) == 4)
    assert seen == {0: 1, 1: 2, 2: 3, 3: 4}          # the running one counts as ahead
    assert lock.waiting() == 5
    done.set()
    for t in [runner, *threads]:
        t.join(5)
    assert order == [0, 1, 2, 3] and lock.waiting() == 0


def test_reentrant_for_the_holder_and_exclusive_for_others():
    lock = TurnLock()
    with lock:
        with lock:                                   # the adapter takes it again inside the page's turn
            assert lock.take() == -1 and lock.ahead(-1) == 0
        got = []
        t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
        t.start()
        t.join()
        assert got == [False]                        # still held after the inner release
    assert lock.acquire(blocking=False)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_an_abandoned_place_does_not_block_the_line():
    lock = TurnLock()
    done, runner = _held_elsewhere(lock)
    a, b = lock.take(), lock.take()
    assert lock.ahead(b) == 2
    lock.abandon(a)                                  # its session went away
    assert lock.ahead(b) == 1 and lock.waiting() == 2
    done.set()
    runner.join(5)
    assert lock.wait(b, 1)
    lock.release()
    assert lock.waiting() == 0


def test_turn_reports_the_count_while_waiting_and_gives_up_its_place_when_stopped():
    lock = TurnLock()
    done, runner = _held_elsewhere(lock)
    reports = []

    class Stop(BaseException):
        pass

    def on_wait(ahead):
        reports.append(ahead)
        if len(reports) == 3:
            raise Stop                               # Streamlit stops a script with a BaseException

    with pytest.raises(Stop):
        with lock.turn(on_wait, every=0.01):
            pass
    assert reports == [1, 1, 1] and lock.waiting() == 1
    done.set()
    runner.join(5)
    ran = []
    with lock.turn(lambda n: ran.append(n)):
        ran.append("in")
    assert ran == ["in"]                             # nobody ahead: no report, straight in


def test_priority_tickets_go_first_in_their_own_arrival_order():
    """A session finishing its first map (priority) is served before new images (ordinary), and the
    ordinary waiters see the line grow."""
    lock = TurnLock()
    done, runner = _held_elsewhere(lock)
    a, b = lock.take(), lock.take()                  # two new images
    p1 = lock.take(priority=True)                    # a first map, then another
    p2 = lock.take(priority=True)
    assert [lock.ahead(t) for t in (p1, p2, a, b)] == [1, 2, 3, 4]
    order = []

    def served(t):
        assert lock.wait(t, 10)
        order.append(t)
        lock.release()
    threads = [threading.Thread(target=served, args=(t,)) for t in (b, a, p2, p1)]
    for t in threads:
        t.start()
    done.set()
    for t in [runner, *threads]:
        t.join(5)
    assert order == [p1, p2, a, b] and lock.waiting() == 0


def test_two_lanes_serve_two_holders_at_once_and_the_third_in_line_order():
    """A model whose forward allows it runs two sessions' work side by side; the next waits for a lane,
    and waiters are still served first come, first served."""
    lock = TurnLock(lanes=2)
    done1, t1 = _held_elsewhere(lock)
    done2, t2 = _held_elsewhere(lock)                # a second holder gets in at once: _held_elsewhere returned
    assert lock.waiting() == 2
    order, seen = [], {}
    threads = []
    for i in range(2):
        ticket = lock.take()

        def run(i=i, ticket=ticket):
            seen[i] = lock.ahead(ticket)
            assert lock.wait(ticket, 10)
            order.append(i)
            time.sleep(0.05)
            lock.release()
        threads.append(threading.Thread(target=run))
    for t in threads:
        t.start()
    _wait_until(lambda: len(seen) == 2)
    time.sleep(0.05)
    assert order == [] and seen == {0: 2, 1: 3}      # both lanes busy: nobody else got in
    done1.set()                                      # one lane frees: the first in line takes it
    _wait_until(lambda: order == [0])
    done2.set()
    for t in [t1, t2, *threads]:
        t.join(5)
    assert order == [0, 1] and lock.waiting() == 0
    with pytest.raises(ValueError):
        TurnLock(lanes=0)

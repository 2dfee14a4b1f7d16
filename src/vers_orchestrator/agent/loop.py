"""A single-threaded event loop on epoll: file descriptors, timers and idle work.

The agent does not use asyncio: it needs an edge-triggered watch on the virtio-serial port
(whose poll reports "hung up" for as long as no host is connected, which level-triggered
polling would spin on), pidfds for child exits without a watcher thread, and nothing else.
One thread also keeps `subprocess` on its vfork fast path safe.
"""

from __future__ import annotations

import heapq
import itertools
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Handler = Callable[[int], None]

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
EDGE = select.EPOLLET
# Reported whether asked for or not; a handler treats them as "read to find out".
HANGUP = select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


class Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        # Called once per iteration while registered; the loop does not sleep meanwhile.
        self._idle: dict[object, Callable[[], None]] = {}
        # Called before every wait: what an iteration produced leaves in one go.
        self._before_wait: list[Callable[[], None]] = []

    def watch(self, fd: int, events: int, handler: Handler) -> None:
        """Call `handler(events)` whenever `fd` is ready; replaces an earlier watch."""
        if fd in self._handlers:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def call_later(self, delay_seconds: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay_seconds, callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
        return timer

    def set_idle(self, owner: object, callback: Callable[[], None] | None) -> None:
        """Run `callback` on every iteration until it is set to None again."""
        if callback is None:
            self._idle.pop(owner, None)
        else:
            self._idle[owner] = callback

    def before_wait(self, callback: Callable[[], None]) -> None:
        self._before_wait.append(callback)

    def run_forever(self) -> None:
        while True:
            self.run_once()

    def run_once(self) -> None:
        for callback in self._before_wait:
            callback()
        timeout = -1.0
        if self._idle:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        try:
            ready = self._epoll.poll(timeout)
        except InterruptedError:
            ready = []
        for fd, events in ready:
            handler = self._handlers.get(fd)
            if handler is not None:
                handler(events)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()
        for callback in list(self._idle.values()):
            callback()

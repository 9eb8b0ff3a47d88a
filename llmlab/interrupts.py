"""Ctrl-C and SIGTERM as one kind of interruption.

SLURM and most schedulers send SIGTERM before they kill or preempt a job; `install()` makes it raise `Terminated`
(a `KeyboardInterrupt`), so every path that records a Ctrl-C as `interrupted` and keeps the finished work also
handles a SIGTERM. SIGUSR2, SLURM's advance warning of a time limit or a preemption (`sbatch --signal=USR2@S`, what
hydra/launcher=slurm asks for), raises `Preempted` the same way (llmlab.slurm then requeues the job). The CLI exits
130 after SIGINT, 143 after SIGTERM and 140 after SIGUSR2.

Code that must not be cut in half (an optimizer step: parameters and optimizer state updated together) runs inside
`deferred()`: a signal that arrives there is raised when the block ends, so the caller can checkpoint a consistent
state. A second signal inside the block is raised at once (a user who presses Ctrl-C twice means it).

A signal can also land inside a library's clean-up code, which may then fail and raise its own exception in place of
the interruption (OmegaConf's `flag_override` does, with an AttributeError). `unmasked()` finds the interruption in
such an exception's context and raises it again, so the run is still recorded `interrupted` and exits 130/143/140.
Worse, torch's import swallows an exception raised inside numpy's and goes on with numpy half imported, so the CLI
imports torch inside `deferred()`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python would raise KeyboardInterrupt for SIGINT."""


class Preempted(KeyboardInterrupt):
    """SIGUSR2: the scheduler's warning that the job is about to be preempted or reach its time limit."""


_depth = 0
_pending: int | None = None


def _raise(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise Preempted() if signum == signal.SIGUSR2 else KeyboardInterrupt()


def _handler(signum: int, frame) -> None:
    global _pending
    if _depth and _pending is None:
        _pending = signum
        return
    _pending = None
    _raise(signum)


def install() -> None:
    """Route SIGINT, SIGTERM and SIGUSR2 through `_handler` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGUSR2, _handler)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number."""
    if isinstance(exc, Terminated):
        return 128 + signal.SIGTERM
    return 128 + (signal.SIGUSR2 if isinstance(exc, Preempted) else signal.SIGINT)


def interruption(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C/SIGTERM/SIGUSR2 that `exc` is, or that it was raised while handling; None if there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def unmasked() -> Iterator[None]:
    """Raise the interruption an exception from this block masks (see the module's docstring) instead of it."""
    try:
        yield
    except Exception as e:
        stop = interruption(e)
        if stop is None:
            raise
        raise stop from e


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (then raise it), unless a second one comes."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        _raise(signum)

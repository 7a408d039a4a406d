"""Ctrl-C outside the work of a command line: one line and exit 130, never a traceback or an abort.

Python turns SIGINT into KeyboardInterrupt wherever the main thread is. During the imports (torch's
take seconds) that is a long traceback, or an abort when it unwinds through torch's C++ start-up;
after the outputs are complete it is "Exception ignored in atexit". Neither window has anything to
clean up (nothing is written before the work starts, and every output is complete or absent after
it), so there a Ctrl-C exits at once. During the work ``cli_main`` restores KeyboardInterrupt, so
atomic outputs remove their temporaries and the run says what it was doing.
"""
import os
import signal

INTERRUPTED_EXIT = 130   # 128 + SIGINT, what shells report for a Ctrl-C


def _exit_now(signum, frame):
    try:
        os.write(2, b"interrupted\n")
    finally:
        os._exit(INTERRUPTED_EXIT)


def exit_quietly_on_ctrl_c():
    """From now on a Ctrl-C prints 'interrupted' and exits 130 at once (scripts call it first)."""
    signal.signal(signal.SIGINT, _exit_now)


def quiet_outside_work():
    """True when the running script asked for exit_quietly_on_ctrl_c (never under pytest)."""
    return signal.getsignal(signal.SIGINT) is _exit_now


def raise_on_ctrl_c():
    signal.signal(signal.SIGINT, signal.default_int_handler)

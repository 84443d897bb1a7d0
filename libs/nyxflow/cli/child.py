"""`python -m nyxflow.cli.child --parent PID [--after HOST:PORT] ... MODULE`: a service run by
`nyxflow up`, which stops itself as `up` would have stopped it once `up` is gone.

`up` killed by SIGKILL (kill -9, the OOM killer, a crashed terminal multiplexer) cannot stop its
services: they lived on, re-parented to init, holding the ports and the SQLite file. Each one
watches its parent here instead; runs waits for the engine to be gone first (`--after`), as
`up` does, so that the engine can still pause its runs through it. Polling getppid works where
prctl(PR_SET_PDEATHSIG) does not (macOS), and sees a parent that died before it looked.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import socket
import sys
import threading
import time

POLL_S = 0.2


def answers(address: str) -> bool:
    """Whether something accepts connections at `address` (host:port, [v6]:port)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def stop_when_orphaned(parent: int, after: str, within_s: float, kill_after_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    deadline = time.monotonic() + within_s
    while after and answers(after) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # the service's own graceful stop
    time.sleep(kill_after_s)
    os.kill(os.getpid(), signal.SIGKILL)  # what `up` does to a service that overstays


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nyxflow.cli.child")
    parser.add_argument("--parent", type=int, required=True, help="`up`'s process id")
    parser.add_argument("--after", default="", help="stop once this address no longer answers")
    parser.add_argument("--within", type=float, default=0.0, help="...or after this many s")
    parser.add_argument("--kill-after", type=float, required=True, help="s from SIGTERM")
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    threading.Thread(
        target=stop_when_orphaned,
        args=(options.parent, options.after, options.within, options.kill_after),
        name="orphan-watch",
        daemon=True,
    ).start()
    sys.argv = [options.module, *options.args]
    runpy.run_module(options.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

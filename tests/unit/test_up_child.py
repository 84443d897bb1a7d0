"""`python -m nyxflow.cli.child`: a service as `nyxflow up` runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def test_the_service_gets_its_own_arguments_and_exit_code() -> None:
    """The watch's options are the wrapper's; what follows the module is the service's."""
    command = [sys.executable, "-m", "nyxflow.cli.child", "--parent", str(os.getpid())]
    done = subprocess.run(
        [*command, "--kill-after", "5", "nyxflow_runs", "bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "usage: python -m nyxflow_runs [serve|migrate], not 'bogus'" in done.stderr


def test_a_service_whose_parent_is_already_gone_stops_at_once() -> None:
    """`up` killed between starting a service and the service looking: a parent id that is not
    its parent's is a parent gone."""
    watch = [sys.executable, "-m", "nyxflow.cli.child", "--parent", "1", "--kill-after", "5"]
    started = time.monotonic()
    done = subprocess.run(
        [*watch, "http.server", "--bind", "127.0.0.1", "0"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    # SIGTERM's default: http.server installs no handler of its own
    assert done.returncode == -15
    assert time.monotonic() - started < 10

"""How the command lines end on a failure: one line, exit status 2, even under torchrun.

A known failure (bad flag, damaged checkpoint, stale scores, full disk) is one line
``PROG: error: FLAG ...: FILE: what is wrong`` on stderr, without a traceback unless
``--debug`` or ``SALT_DEBUG=1`` asks for one. Under torchrun the line also goes into
the error file torchrun reads (``TORCHELASTIC_ERROR_FILE``), so its failure summary
shows it as the root cause, and the other ranks, which only see their peer vanish,
wait for torchrun to stop them instead of printing a traceback after it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

#: What gloo / NCCL / the TCP store say when another rank has exited.
_PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
    "Socket Timeout",
)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """``--debug`` on the command line, or ``SALT_DEBUG`` set to anything but 0."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("SALT_DEBUG", "0") not in ("", "0")


def report_failure(line: str) -> None:
    """Print the one-line error; under torchrun, hand it to the launcher as well."""
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
            os.replace(tmp, path)
        except OSError:
            pass  # the line on stderr is what matters


def peer_failed(err: BaseException) -> bool:
    """A collective failed because another rank exited (which reported why itself)."""
    text = str(err)
    return isinstance(err, RuntimeError) and any(s in text for s in _PEER_GONE)


def exit_after_peer_failure(err: BaseException, prog: str) -> int:
    """This rank's collective broke because another rank exited first.

    Wait a moment: under torchrun the launcher, which saw that rank fail, stops this one
    meanwhile, so the failing rank's line stays the last thing printed. Otherwise (no
    launcher, or it was slow) say in one line what happened here, and exit 1.
    """
    time.sleep(3.0)
    rank = os.environ.get("RANK", "?")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(
        f"{prog}: rank {rank} stopped: another rank exited ({first[:200]}); its error is "
        "above (--debug or SALT_DEBUG=1 for this rank's traceback)",
        file=sys.stderr,
        flush=True,
    )
    return 1

"""`trivmc` as the docs runner puts it on PATH: `python -m trivmc` of the checkout.

In the foreground it simply becomes `python -m trivmc ARGS`. A background command of a
shell block (`trivmc serve ... &`) gets TRIVMC_DOCS_READY (a FIFO's path) from the
runner: then this script runs the command as its child and writes `ready` to the FIFO
once the command is ready, so that the block's next line finds it serving:

- `trivmc serve`: READY=1 on NOTIFY_SOCKET (every listener and the control socket
  serve), or the line `awaiting a handover at` (an --await-handover server);
- `trivmc connect --listen`: its line `listening on`.

If the command ends first, `exit N` is written instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

READY_LINES = (b"awaiting a handover at", b"listening on")


def main() -> int:
    cmd = [sys.executable, "-m", "trivmc", *sys.argv[1:]]
    fifo = os.environ.pop("TRIVMC_DOCS_READY", None)
    if fifo is None:
        os.execv(sys.executable, cmd)
    told = threading.Event()
    lock = threading.Lock()

    def tell(what: str) -> None:
        with lock:
            if told.is_set():
                return
            told.set()
        with open(fifo, "w") as f:  # the block's shell holds the FIFO open: no wait
            f.write(what + "\n")

    tmp = tempfile.mkdtemp(prefix="trivmc-docs-notify-")
    notify_path = os.path.join(tmp, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))

    def watch_notify() -> None:
        while True:
            data = notify.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                tell("ready")

    def forward(src, dst) -> None:  # type: ignore[no-untyped-def]
        for line in iter(src.readline, b""):
            dst.write(line)
            dst.flush()
            if any(r in line for r in READY_LINES):
                tell("ready")

    threading.Thread(target=watch_notify, daemon=True).start()
    pumps = [
        threading.Thread(target=forward, args=(child.stdout, sys.stdout.buffer)),
        threading.Thread(target=forward, args=(child.stderr, sys.stderr.buffer)),
    ]
    for t in pumps:
        t.start()
    code = child.wait()
    for t in pumps:
        t.join()
    tell(f"exit {code}")
    notify.close()
    os.unlink(notify_path)
    os.rmdir(tmp)
    return code


if __name__ == "__main__":
    sys.exit(main())

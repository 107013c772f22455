"""One long-lived worker process per fold tool, so that interleaved rounds exclude imports.

``fold_tools.py --serve TOOL`` imports the tool, answers READY, then reads one job a line
(``{"src": ..., "dst": ...}``) on stdin and answers one ``RESULT {json}`` line per job on its
original stdout (the tool's own chatter goes to stderr, kept in a log). ``ToolWorker`` starts
it, optionally runs one untimed warm-up job (first-call costs such as bnfold's ORT child start
are then excluded, as the imports are), and turns a crash or a timeout into an ``error`` entry,
restarting the worker for the next job. ``fresh=True`` instead starts a new process for every
job and warms nothing: the first call in a new interpreter, imports still excluded.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
FOLD_TOOLS = os.path.join(HERE, "fold_tools.py")


class ToolWorker:
    """A ``fold_tools.py --serve TOOL`` process and the queue of the lines it answers."""

    def __init__(self, tool: str, env: dict[str, str] | None = None, timeout: float = 600.0,
                 warmup: tuple[str, str] | None = None, fresh: bool = False,
                 script: str = FOLD_TOOLS) -> None:
        self.tool, self.env, self.timeout, self.warmup = tool, env, timeout, warmup
        self.fresh, self.script = fresh, script
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log = tempfile.TemporaryFile(mode="w+")

    def _start(self) -> str | None:
        """Start the process and wait for READY; an error text when it does not come."""
        self.lines = queue.Queue()
        self.log.seek(0)
        self.log.truncate()
        self.proc = subprocess.Popen([sys.executable, self.script, "--serve", self.tool],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=self.env)
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        first = self._next_line()
        if first != "READY":
            return self._fail(first)
        if self.warmup and not self.fresh:
            res = self._job(*self.warmup)
            if "error" in res:
                return res["error"]
        return None

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)  # end of file: the worker exited

    def _next_line(self) -> str | None:
        try:
            return self.lines.get(timeout=self.timeout)
        except queue.Empty:
            return "TIMEOUT"

    def _fail(self, line: str | None) -> str:
        """Stop the process; why it failed, from the line it gave or its log's last line."""
        self.close()
        if line == "TIMEOUT":
            return f"timeout after {self.timeout:.0f} s"
        self.log.seek(0)
        tail = (self.log.read().strip().splitlines() or ["no output"])[-1]
        return f"crash: {tail[:160]}"

    def _job(self, src: str, dst: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"src": src, "dst": dst}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            return {"error": self._fail(None)}
        line = self._next_line()
        if line is None or not line.startswith("RESULT "):
            return {"error": self._fail(line)}
        return json.loads(line[len("RESULT "):])

    def run(self, src: str, dst: str) -> dict[str, Any]:
        """One timed job (``time_s``, ``peak_rss_mb``, ``base_rss_mb``) or ``{"error": ...}``."""
        if self.proc is None:
            err = self._start()
            if err:
                return {"error": err}
        res = self._job(src, dst)
        if self.fresh:
            self.close()
        return res

    def close(self) -> None:
        """Stop the process (end of input, then kill if it lingers)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

"""A small progress bar for long work (stderr, only when it is a terminal or asked)."""
import sys
import time


def _duration(s):
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """label [####      ]  45.0%  450/1000  43.2 images/s  eta 0:12

    unit: what is counted; with a unit the count and the rate are shown too.
    log_every: when the bar is not shown (not a terminal: a log file, CI), a
    plain line every that many seconds, so long work is never silent."""

    def __init__(self, label, total, enabled=None, stream=None, unit=None, log_every=None):
        self.label, self.total, self.unit = label, max(1, int(total)), unit
        self.stream = stream or sys.stderr
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = tty if enabled is None else enabled
        self.n, self.t0, self.last = 0, time.time(), 0.0
        self.log_every = None if self.enabled else log_every
        self.logged = self.t0

    def _counts(self, elapsed):
        if not self.unit:
            return ""
        if self.log_every is not None:
            return f", {self.n / elapsed if elapsed > 0 else 0.0:.1f} {self.unit}/s"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        return f"  {self.n}/{self.total}  {rate:.1f} {self.unit}/s"

    def update(self, k=1):
        self.n += k
        now = time.time()
        if self.log_every is not None and now - self.logged >= self.log_every and self.n < self.total:
            self.logged = now
            frac = min(1.0, self.n / self.total)
            elapsed = now - self.t0
            eta = elapsed / frac * (1 - frac) if frac > 0 else 0
            self.stream.write(f"  {self.label}: {self.n}/{self.total} ({frac * 100:.0f}%)"
                              f"{self._counts(elapsed)}, eta {_duration(eta)}\n")
            self.stream.flush()
        if self.enabled and (now - self.last > 0.1 or self.n >= self.total):
            self.last = now
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(frac * 30)
            elapsed = now - self.t0
            eta = elapsed / frac * (1 - frac) if frac > 0 else 0
            self.stream.write(f"\r  {self.label:<22} [{bar:<30}] {frac * 100:5.1f}%"
                              f"{self._counts(elapsed)}  eta {_duration(eta)} ")
            self.stream.flush()

    def close(self):
        if self.log_every is not None and time.time() - self.t0 >= self.log_every:
            self.stream.write(f"  {self.label}: done in {_duration(time.time() - self.t0)}\n")
            self.stream.flush()
        if self.enabled:
            elapsed = time.time() - self.t0
            self.stream.write(f"\r  {self.label:<22} [{'#' * 30}] 100.0%"
                              f"{self._counts(elapsed)}  {_duration(elapsed)}      \n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

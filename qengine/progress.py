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
        rate = f"{self.n / elapsed if elapsed > 0 else 0.0:.1f} {self.unit}/s"
        return f", {rate}" if self.log_every is not None else f"  {self.n}/{self.total}  {rate}"

    def update(self, k=1):
        self.n += k
        now = time.time()
        line = self.log_every is not None and now - self.logged >= self.log_every \
            and self.n < self.total
        bar = self.enabled and (now - self.last > 0.1 or self.n >= self.total)
        if not (line or bar):
            return
        frac = min(1.0, self.n / self.total)
        elapsed = now - self.t0
        eta = _duration(elapsed / frac * (1 - frac) if frac > 0 else 0)
        if line:
            self.logged = now
            self.stream.write(f"  {self.label}: {self.n}/{self.total} ({frac * 100:.0f}%)"
                              f"{self._counts(elapsed)}, eta {eta}\n")
        else:
            self.last = now
            self.stream.write(f"\r  {self.label:<22} [{'#' * int(frac * 30):<30}] "
                              f"{frac * 100:5.1f}%{self._counts(elapsed)}  eta {eta} ")
        self.stream.flush()

    def close(self):
        elapsed = time.time() - self.t0
        if self.log_every is not None and elapsed >= self.log_every:
            self.stream.write(f"  {self.label}: done in {_duration(elapsed)}\n")
        elif self.enabled:
            self.stream.write(f"\r  {self.label:<22} [{'#' * 30}] 100.0%"
                              f"{self._counts(elapsed)}  {_duration(elapsed)}      \n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

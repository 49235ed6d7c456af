"""A small progress bar for long work (stderr, only when it is a terminal or asked)."""
import sys
import time


class Progress:
    def __init__(self, label, total, enabled=None, stream=None):
        self.label, self.total = label, max(1, int(total))
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.n, self.t0, self.last = 0, time.time(), 0.0

    def update(self, k=1):
        self.n += k
        now = time.time()
        if self.enabled and (now - self.last > 0.1 or self.n >= self.total):
            self.last = now
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(frac * 30)
            eta = (now - self.t0) / frac * (1 - frac) if frac > 0 else 0
            self.stream.write(f"\r  {self.label:<22} [{bar:<30}] {frac * 100:5.1f}%  eta {eta:5.1f} s")
            self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write(f"\r  {self.label:<22} [{'#' * 30}] 100.0%  {time.time() - self.t0:6.1f} s\n")
            self.stream.flush()

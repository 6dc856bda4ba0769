"""What `data.corrupt=skip` does with bad samples and shards: count them per shard, log a bounded number of
lines, and give up (bad input, exit 2) once no good sample can come.

Skipping must not turn into an endless loop: with resampled shards, a data set whose every sample is bad
used to be drawn forever, one warning per sample (millions of lines, and a run that never reached its
first batch). `Progress` decides "no progress is possible" from whole shard reads, not from a count of
bad samples: a read that yields no decodable sample is dead, and once every shard has had a dead read
since the last good one, every shard is bad (decoding is deterministic), so no further draw can help.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("distill.data")

DETAIL_LINES = 5  # the first bad samples of a process are logged one by one, with their reason
SUMMARY_SECONDS = 60.0  # afterwards, a summary line at most this often (and at 10, 100, 1000, ... skipped)


class CorruptSampleError(ValueError):
    """A bad sample or shard under data.corrupt=strict, or no usable sample at all: bad input (exit 2)."""


class SkipLog:
    """Counts of skipped samples and shards, per shard URL, logged without flooding."""

    def __init__(self):
        self.skipped: Counter = Counter()  # "samples" / "shards" -> count, in this process
        self.per_shard: Counter = Counter()
        self._next_power, self._last_summary = 10, time.monotonic()

    def record(self, what: str, url: str, key: str, reason: str) -> None:
        self.skipped[what] += 1
        self.per_shard[url] += 1
        total = sum(self.skipped.values())
        if total <= DETAIL_LINES:
            where = f"shard {url}" + (f", sample {key!r}" if key else "")
            more = "; further skips are summarised" if total == DETAIL_LINES else ""
            log.warning("skipped %s (%s); %d skipped so far in this process%s", where, reason, total, more)
        elif total >= self._next_power or time.monotonic() - self._last_summary >= SUMMARY_SECONDS:
            self._next_power = max(self._next_power, 10 ** len(str(total)))
            log.warning("data.corrupt=skip: %s", self.summary())
        else:
            return
        self._last_summary = time.monotonic()

    def summary(self, top: int = 5) -> str:
        worst = ", ".join(f"{url}: {n}" for url, n in self.per_shard.most_common(top))
        others = len(self.per_shard) - top
        return (f"{self.skipped['samples']} samples and {self.skipped['shards']} unreadable shard reads skipped "
                f"in this process (by shard: {worst}{f', and {others} more shards' if others > 0 else ''})")


class Progress:
    """Tracks whole shard reads since the last one that gave a good sample (see the module docstring)."""

    def __init__(self, urls: list[str]):
        self.urls = set(urls)
        self.dead: set[str] = set()

    def shard_done(self, url: str, found_good: bool) -> None:
        if found_good:
            self.dead.clear()
        else:
            self.dead.add(url)

    def stuck(self) -> bool:
        return bool(self.urls) and self.dead >= self.urls

    def error(self, skips: SkipLog) -> CorruptSampleError:
        names = sorted(self.urls)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return CorruptSampleError(
            f"no usable sample in any of the {len(names)} shards ({shown}): every read of every shard gave "
            f"only undecodable, unlabelled or unreadable samples; {skips.summary()}. Check data.path, rewrite "
            "the shards with `distill shards`, or check that the teacher's image_shape and labels fit the data")

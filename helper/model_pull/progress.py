"""Progress bars (tqdm): files and bytes on a TTY; nothing with --json or when piped."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from tqdm import tqdm


class Progress:
    """Aggregates huggingface_hub's per-file byte counts into two bars: files and bytes."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = (
            enabled and sys.stderr.isatty() and not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
        )
        self._lock = threading.Lock()
        self._files: tqdm[Any] | None = None
        self._bytes: tqdm[Any] | None = None
        self._hash: tqdm[Any] | None = None
        self._hash_total = 0

    @classmethod
    def off(cls) -> Progress:
        return cls(False)

    def start(self, files: int, total_bytes: int) -> None:
        self._hash_total = total_bytes
        if not self.enabled:
            return
        if files:
            self._files = tqdm(total=files, desc="files", unit="file", position=0, leave=False)
            self._bytes = tqdm(
                total=total_bytes,
                desc="download",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                position=1,
                leave=False,
            )

    def add_bytes(self, n: int) -> None:
        if self._bytes is not None:
            with self._lock:
                self._bytes.update(n)

    def file_done(self) -> None:
        if self._files is not None:
            with self._lock:
                self._files.update(1)

    def hashed(self, n: int) -> None:
        if not self.enabled:
            return
        if self._hash is None:
            self._hash = tqdm(
                total=self._hash_total,
                desc="verify+hash",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                position=2,
                leave=False,
            )
        self._hash.update(n)

    def close(self) -> None:
        for bar in (self._files, self._bytes, self._hash):
            if bar is not None:
                bar.close()
        self._files = self._bytes = self._hash = None

    def tqdm_class(self) -> type[tqdm[Any]]:
        """A tqdm class for huggingface_hub that draws nothing and feeds our bytes bar."""
        progress = self

        class _Forward(tqdm):  # type: ignore[type-arg]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)
                initial = kwargs.get("initial") or 0
                if initial:
                    progress.add_bytes(int(initial))  # resumed bytes count as done

            def update(self, n: float | None = 1) -> bool | None:
                progress.add_bytes(int(n or 0))
                return None

        return _Forward

"""What the machine running the tests has, for tests whose expectations depend on it."""

from __future__ import annotations

import functools


@functools.cache
def nvidia_driver() -> bool:
    """Whether NVML (the NVIDIA driver's libnvidia-ml.so.1) starts here. The product targets
    machines with one; the build and CI machines have none."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True

"""Where the cache rows a process scans live: ``cache_device`` (a training argument).

* ``"auto"`` (default): the accelerator the queries are on, when this process's rows (and, with amortised
  correction, the corrected view of the same size) fit in its free memory with room to spare; otherwise host memory,
  pinned when an accelerator is used, so the per-chunk copies are asynchronous. On a CPU-only run: the CPU (nothing
  changes).
* ``"cpu"``: host memory (pinned when the queries are on an accelerator).
* a device string (``"cuda"``, ``"cuda:1"``): that device; a cache that does not fit fails there, with the
  allocator's message.

With the rows on the queries' device a training step copies no cache chunk: negative selection reads views of the
device-resident rows (:class:`DeviceRows`), and write-backs and refreshes update that copy in place.

Example:
    >>> resolve_cache_device("auto", torch.device("cpu"), nbytes=10**9)
    device(type='cpu')
"""

from __future__ import annotations

import logging

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

CACHE_DEVICE_CHOICES = ("auto", "cpu")
#: fraction of the device's free memory the cache (and its corrected view) may take under ``"auto"``
AUTO_FRACTION = 0.5


def check_cache_device(spec: str) -> str:
    """Validate a ``cache_device`` value (``"auto"``, ``"cpu"`` or a device string torch understands)."""
    if spec in CACHE_DEVICE_CHOICES:
        return spec
    try:
        torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"cache_device must be 'auto', 'cpu' or a device string such as 'cuda:0', got {spec!r} "
                          f"({err})") from None
    return spec


def resolve_cache_device(spec: str, query_device: torch.device | str, nbytes: int) -> torch.device:
    """The device this process's cache rows go to (see the module docstring). ``nbytes``: the rows (plus the
    corrected view, when one is materialised)."""
    spec = check_cache_device(spec)
    query_device = torch.device(query_device)
    if spec == "cpu" or query_device.type == "cpu":
        return torch.device("cpu") if spec in CACHE_DEVICE_CHOICES else torch.device(spec)
    if spec != "auto":
        return torch.device(spec)
    free = _free_bytes(query_device)
    if free is not None and nbytes <= AUTO_FRACTION * free:
        return query_device
    logger.info("cache_device='auto': %.2f GB of cache rows do not fit in half of %s's free memory (%s); keeping "
                "them in pinned host memory", nbytes / 1e9, query_device,
                "unknown" if free is None else f"{free / 1e9:.2f} GB")
    return torch.device("cpu")


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    return None


class DeviceRows:
    """This process's cache rows mirrored on ``device`` (or pinned on the host), kept in step with the cache.

    ``matrix`` is the mirror (storage dtype); ``update(rows, values)`` writes rows into it; ``pinned`` says whether
    it is page-locked host memory (copies from it to an accelerator can be ``non_blocking``)."""

    def __init__(self, host: torch.Tensor, device: torch.device, pin: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cpu":
            self.matrix = host.pin_memory() if pin else host
        else:
            self.matrix = host.to(self.device)
        self.pinned = bool(pin and self.device.type == "cpu")

    def update(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        if self.matrix.data_ptr() == 0 or rows.numel() == 0:
            return
        self.matrix[rows.to(self.device)] = values.to(self.device, self.matrix.dtype)


__all__ = ["AUTO_FRACTION", "CACHE_DEVICE_CHOICES", "DeviceRows", "check_cache_device", "resolve_cache_device"]

"""A ThreadDataLoader that does not swallow the errors of its producer thread."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from monai.data import ThreadBuffer
from monai.data import ThreadDataLoader as _MonaiThreadDataLoader
from torch.utils.data import DataLoader

__all__ = ["RaisingThreadBuffer", "ThreadDataLoader"]


class RaisingThreadBuffer(ThreadBuffer):
    """
    :py:class:`monai.data.ThreadBuffer` that re-raises, in the consuming thread, an error raised while producing
    values. MONAI 1.6.1's buffer lets the producer thread die with the error (printed as a thread traceback) and
    then ends the iteration as if the data were exhausted: an epoch stops early, silently, and a training with
    a corrupt file or a NaN volume exits with status 0.

    Args:
        src: the source iterable.
        buffer_size: number of items to buffer from the source.
        timeout: time to wait for an item from the buffer, or while the buffer is full, in seconds.
    """

    def __init__(self, src: Any, buffer_size: int = 1, timeout: float = 0.01) -> None:
        super().__init__(src, buffer_size, timeout)
        self.error: BaseException | None = None

    def enqueue_values(self) -> None:
        try:
            super().enqueue_values()
        except BaseException as error:  # handed to the consumer, which raises it
            self.error = error

    def __iter__(self) -> Iterator[Any]:
        self.error = None
        yield from super().__iter__()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class ThreadDataLoader(_MonaiThreadDataLoader):
    """
    :py:class:`monai.data.ThreadDataLoader` whose data errors reach the engine (see :py:class:`RaisingThreadBuffer`):
    the same arguments, the same batches.
    """

    def __iter__(self) -> Iterator[Any]:
        for batch in RaisingThreadBuffer(DataLoader.__iter__(self), self.buffer_size, self.buffer_timeout):
            for _ in range(self.repeats):
                yield batch

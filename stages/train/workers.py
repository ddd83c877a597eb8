"""Background data augmentation in worker processes (nnU-Net's ``MultiThreadedAugmenter``, made fail-fast).

Each worker process draws batches from its copy of the loader, runs the transforms and ships the result through
its own pipe; a reader thread in the training process takes the batches round-robin (so seeded runs are
reproducible), optionally pins them for fast host-to-GPU copies, and hands them to the training loop.

Unlike a queue-based augmenter this one cannot hang when a worker disappears: the training process keeps no
copy of a worker's pipe end, so a worker killed mid-transfer (typically by the out-of-memory killer) shows up as
end-of-file, and worker liveness is checked whenever a batch is late. Either way the next call raises
:class:`AugmentationWorkerDiedError` naming the worker, its pid and exit code. An exception inside a worker is
re-raised in the training process with the worker's traceback attached.

``num_workers=0`` runs loader and transforms in the calling process (tests, debugging).
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
import pickle
import queue
import random
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from stages.errors import NnkubeError, TransientError
from stages.resources import default_workers

logger = logging.getLogger(__name__)

ENV_NUM_WORKERS = "nnUNet_n_proc_DA"
DEFAULT_MAX_WORKERS = 12
_SLOW_WARNING_S = 300.0


class AugmentationWorkerDiedError(TransientError):
    """An augmentation worker process ended without being asked to (killed, crashed in native code)."""


class AugmentationWorkerError(RuntimeError):
    """An augmentation worker raised an exception that is not one of nnkube's own errors."""


def default_num_workers(validation: bool = False) -> int:
    """Augmentation workers: ``nnUNet_n_proc_DA`` if set, else the CPUs this process may use (at most 12).

    Validation uses half as many (at least one, unless augmentation runs in-process).
    """
    n = default_workers(ENV_NUM_WORKERS, cap=DEFAULT_MAX_WORKERS)
    if validation:
        return max(n // 2, 1) if n > 0 else 0
    return n


def seed_augmentation(seed: int | None) -> None:
    """Seed every generator the loaders and batchgenerators' transforms draw from (NumPy's and ``random``'s).

    None seeds from OS entropy, which a forked worker needs: it would otherwise repeat its parent's sequence.
    """
    np.random.seed(seed)
    random.seed(seed)


def _tensor_from_numpy(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(array)


class _WirePickler(pickle.Pickler):
    """Pickles CPU tensors as their NumPy arrays: plain bytes through the pipe, no shared-memory handles."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and type(obj) is torch.Tensor and obj.device.type == "cpu" and not obj.requires_grad:
            try:
                return _tensor_from_numpy, (obj.numpy(),)
            except (TypeError, RuntimeError):  # dtypes NumPy lacks (bfloat16): default pickling
                return NotImplemented
        return NotImplemented


def _encode(obj: Any) -> list:
    """One message as a list of byte buffers: a fixed prefix, the pickle stream, then the array buffers.

    Arrays travel out of band (pickle protocol 5), so they are written to the pipe straight from their memory
    and read straight into their final buffers on the other side, without intermediate copies.
    """
    buffers: list = []
    stream = io.BytesIO()
    _WirePickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
    views = [b.raw() for b in buffers]
    header = stream.getbuffer()
    prefix = struct.pack(f"<QQ{len(views)}Q", header.nbytes, len(views), *(v.nbytes for v in views))
    return [prefix, header, *views]


def _write_message(fd: int, parts: list) -> None:
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            view = view[os.write(fd, view):]


def _read_exact(stream: io.FileIO, n: int, out: Any = None) -> Any:
    """Read exactly ``n`` bytes into ``out`` (a new bytearray if None); EOFError if the writer went away."""
    out = bytearray(n) if out is None else out
    view = memoryview(out).cast("B")
    pos = 0
    while pos < n:
        got = stream.readinto(view[pos:])
        if not got:
            raise EOFError(f"pipe closed after {pos} of {n} bytes")
        pos += got
    return out


def _read_message(stream: io.FileIO, alloc: Any) -> Any:
    header_len, count = struct.unpack("<QQ", _read_exact(stream, 16))
    sizes = struct.unpack(f"<{count}Q", _read_exact(stream, 8 * count)) if count else ()
    header = _read_exact(stream, header_len)
    return pickle.loads(header, buffers=[_read_exact(stream, n, alloc(n)) for n in sizes])


def _enlarge_pipe(fd: int) -> None:
    """Fewer wake-ups per batch: a 1 MiB pipe buffer instead of 64 KiB, where the system allows it."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


def _limit_threads() -> None:
    """One compute thread per worker: the parallelism comes from the processes."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with batchgenerators
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _worker_main(worker_id: int, loader: Any, transform: Any, seed: int | None, conn: Any, stop: Any,
                 num_cached: int, parent_pid: int | None) -> None:
    """Body of a worker process: produce, serialize and send batches until told to stop.

    The worker also stops when its parent (``parent_pid``, None where the parent is a fork server) is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the training process, which stops us
    _limit_threads()
    seed_augmentation(seed)
    if hasattr(loader, "set_thread_id"):
        loader.set_thread_id(worker_id)
    outbox: queue.Queue = queue.Queue(maxsize=max(1, num_cached))

    def send() -> None:
        while True:
            payload = outbox.get()
            if payload is None:
                return
            try:
                _write_message(conn.fileno(), payload)
            except OSError:  # the training process closed its end or died
                stop.set()
                return

    sender = threading.Thread(target=send, name="sender", daemon=True)
    sender.start()

    def alive() -> bool:
        orphaned = parent_pid is not None and os.getppid() != parent_pid
        return not stop.is_set() and not orphaned and sender.is_alive()

    final = False
    while alive() and not final:
        try:
            item = next(loader)
            if transform is not None:
                item = transform(**item)
            payload = _encode(("batch", item))
        except StopIteration:
            payload, final = _encode(("end", None)), True
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the training process
            payload, final = _error_payload(exc), True
        while alive():
            try:
                outbox.put(payload, timeout=0.1)
                break
            except queue.Full:
                continue
    # After an error or the end of the data, stay alive until the training process has read it and stops us:
    # exiting now would look like a crash to a reader that is still waiting on another worker.
    while final and alive():
        stop.wait(0.1)


def _error_payload(exc: BaseException) -> list:
    text = traceback.format_exc()
    try:
        return _encode(("error", (exc, text)))
    except Exception:  # noqa: BLE001 - unpicklable exception: send its text
        return _encode(("error", (None, text)))


def _pin(obj: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: _pin(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_pin(v) for v in obj]
    return obj


def _plain_buffer(n: int) -> np.ndarray:
    return np.empty(n, dtype=np.uint8)


def _pinned_buffer(n: int) -> np.ndarray:
    """Page-locked memory, so that batches are received straight into pinned buffers (no extra copy)."""
    import torch

    return torch.empty(n, dtype=torch.uint8, pin_memory=True).numpy()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown exit code"
    if code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


class Augmenter(Iterator[dict]):
    """Iterate over augmented batches produced by ``num_workers`` background processes.

    Args:
        loader: An (infinite) iterator of batch dicts with ``set_thread_id``, e.g. :class:`~stages.train.data.
            DataLoader3D`. Each worker gets its own copy.
        transform: Called as ``transform(**batch)`` (a batchgenerators ``Compose``) or None.
        num_workers: Worker processes; 0 runs everything in the calling process. None: :func:`default_num_workers`.
        num_cached_per_worker: Finished batches a worker may hold ahead of the training loop.
        seeds: One seed per worker, or a base seed (worker i gets ``seed + i``); None seeds from OS entropy.
        pin_memory: Pin tensors for asynchronous GPU copies; None: when CUDA is available.
        start_method: multiprocessing start method; default ``fork`` where available.
        poll_interval: Seconds between liveness checks while waiting for a batch.
    """

    def __init__(
        self,
        loader: Any,
        transform: Any = None,
        num_workers: int | None = None,
        num_cached_per_worker: int = 2,
        seeds: int | Sequence[int] | None = None,
        pin_memory: bool | None = None,
        start_method: str | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        self.loader = loader
        self.transform = transform
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        n_seeds = max(self.num_workers, 1)
        if seeds is None:
            self.seeds: list[int | None] = [None] * n_seeds
        elif isinstance(seeds, (int, np.integer)):
            self.seeds = [int(seeds) + i for i in range(n_seeds)]
        else:
            if len(seeds) != n_seeds:
                raise ValueError(f"{len(seeds)} seeds given for {n_seeds} worker(s)")
            self.seeds = [int(s) for s in seeds]
        self.num_cached_per_worker = num_cached_per_worker
        self.pin_memory = pin_memory
        self.start_method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.poll_interval = poll_interval
        self._started = False
        self._closed = False
        self._processes: list[Any] = []
        self._conns: list[Any] = []
        self._out: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._reader: threading.Thread | None = None
        self._halt = threading.Event()
        self._stop_workers: Any = None

    # ------------------------------------------------------------------ lifecycle
    def _do_pin(self) -> bool:
        if self.pin_memory is False:
            return False
        torch = sys.modules.get("torch")
        return torch is not None and torch.cuda.is_available()

    def _start(self) -> None:
        self._started = True
        if self.num_workers == 0:
            if self.seeds[0] is not None:
                seed_augmentation(self.seeds[0])
            return
        ctx = mp.get_context(self.start_method)
        self._stop_workers = ctx.Event()
        for i in range(self.num_workers):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker_main, name=f"nnkube-augmentation-{i}", daemon=True,
                args=(i, self.loader, self.transform, self.seeds[i], writer, self._stop_workers,
                      self.num_cached_per_worker, None if self.start_method == "forkserver" else os.getpid()),
            )
            _enlarge_pipe(reader.fileno())
            proc.start()
            writer.close()  # only the worker may hold the write end: its death then reads as end-of-file
            self._processes.append(proc)
            self._conns.append(reader)
        self._out = queue.Queue(maxsize=max(2, self.num_workers * self.num_cached_per_worker // 2))
        device = None
        if self._do_pin():
            import torch

            device = torch.cuda.current_device()
        self._reader = threading.Thread(target=self._read_loop, args=(device,), name="augmentation-reader",
                                        daemon=True)
        self._reader.start()
        logger.debug("started %d augmentation workers (pids %s)", self.num_workers, self.worker_pids)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (empty before the first batch and in-process)."""
        return [p.pid for p in self._processes]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers and the reader thread; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._halt.set()
        if self._stop_workers is not None:
            self._stop_workers.set()
        if self._reader is not None:
            self._reader.join(timeout=max(1.0, 10 * self.poll_interval))
        for conn in self._conns:
            conn.close()  # unblocks workers stuck sending
        deadline = time.monotonic() + timeout
        for proc in self._processes:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self._processes:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=1.0)
            if proc.is_alive():  # pragma: no cover - a worker ignoring SIGTERM
                proc.kill()
                proc.join(timeout=1.0)

    def __enter__(self) -> Augmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close(timeout=1.0)
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

    # ------------------------------------------------------------------ reading
    def _dead_worker(self, active: Sequence[int]) -> AugmentationWorkerDiedError | None:
        for i in active:
            proc = self._processes[i]
            if proc.exitcode is not None or not proc.is_alive():
                proc.join(timeout=1.0)
                return AugmentationWorkerDiedError(
                    f"augmentation worker {i} (pid {proc.pid}) died with {_describe_exit(proc.exitcode)}; "
                    "it was most likely killed by the out-of-memory killer: check /dev/shm size and memory, "
                    f"or use fewer workers ({ENV_NUM_WORKERS})"
                )
        return None

    def _read_loop(self, device: int | None) -> None:
        """Reader thread: take batches round-robin, pin them, queue them; record the first failure."""
        try:
            if device is not None:
                import torch

                torch.cuda.set_device(device)
            alloc = _pinned_buffer if device is not None else _plain_buffer
            streams = [io.FileIO(c.fileno(), "rb", closefd=False) for c in self._conns]
            active = list(range(self.num_workers))
            turn = 0
            waited_since = time.monotonic()
            while active and not self._halt.is_set():
                i = active[turn % len(active)]
                conn = self._conns[i]
                if not conn.poll(self.poll_interval):
                    dead = self._dead_worker(active)
                    if dead is not None:
                        raise dead
                    if time.monotonic() - waited_since > _SLOW_WARNING_S:
                        logger.warning("augmentation worker %d has not delivered a batch for %.0f s", i,
                                       time.monotonic() - waited_since)
                        waited_since = time.monotonic()
                    continue
                try:
                    kind, payload = _read_message(streams[i], alloc)
                except (EOFError, OSError):
                    if self._halt.is_set():
                        return
                    self._processes[i].join(timeout=2.0)
                    raise self._dead_worker([i]) or AugmentationWorkerDiedError(
                        f"augmentation worker {i} (pid {self._processes[i].pid}) closed its pipe unexpectedly"
                    ) from None
                waited_since = time.monotonic()
                if kind == "error":
                    raise self._worker_exception(i, *payload)
                if kind == "end":
                    active.remove(i)
                    continue
                if device is not None:
                    payload = _pin(payload)
                self._put(("batch", payload))
                turn += 1
            if not active:
                self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the training loop
            self._error = exc

    def _put(self, item: tuple) -> None:
        while not self._halt.is_set():
            try:
                self._out.put(item, timeout=self.poll_interval)
                return
            except queue.Full:
                continue

    def _worker_exception(self, i: int, exc: BaseException | None, text: str) -> BaseException:
        where = f"in augmentation worker {i} (pid {self._processes[i].pid}):\n{text}"
        if isinstance(exc, NnkubeError):
            exc.add_note(f"raised {where}")
            return exc
        return AugmentationWorkerError(f"exception {where}")

    def __next__(self) -> dict:
        if self._closed:
            raise RuntimeError("this augmenter was closed")
        if not self._started:
            self._start()
        if self.num_workers == 0:
            item = next(self.loader)
            item = self.transform(**item) if self.transform is not None else item
            return _pin(item) if self._do_pin() else item
        while True:
            try:
                kind, payload = self._out.get(timeout=self.poll_interval)
            except queue.Empty:
                if self._error is not None or (self._reader is not None and not self._reader.is_alive()):
                    error = self._error or AugmentationWorkerError("the augmentation reader thread stopped")
                    self.close(timeout=2.0)
                    raise error from None
                continue
            if kind == "end":
                raise StopIteration
            return payload

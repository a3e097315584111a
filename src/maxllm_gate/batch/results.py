"""Writing a batch's results: one whole JSON line per result, safe against a kill."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Mapping
from typing import Any

import attrs

from maxllm_gate.responses import ChatResponse, EmbeddingResponse

__all__ = ["BatchResult", "ResultsFile"]


@attrs.frozen(slots=True)
class BatchResult:
    """The one outcome of one request: ``response``, or ``error`` (a message and a code).

    `record` is the line written to the output file.
    """

    custom_id: str
    line: int | None
    model: str | None
    response: ChatResponse | EmbeddingResponse | None = None
    error_code: str | None = None
    error: str | None = None
    status_code: int | None = None
    max_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.response is not None

    def record(self) -> dict[str, Any]:
        """The output line: OpenAI's batch output fields, plus usage, key, latency."""
        out: dict[str, Any] = {"custom_id": self.custom_id}
        if self.line is not None:
            out["line"] = self.line
        r = self.response
        if r is None:
            out["response"] = None
            out["error"] = {"code": self.error_code, "message": self.error}
            if self.status_code is not None:
                out["error"]["status_code"] = self.status_code
            return out
        usage = r.usage.as_dict() if r.usage is not None else None
        body: dict[str, Any]
        if isinstance(r, EmbeddingResponse):
            data = [
                {"object": "embedding", "index": index, "embedding": vector}
                for index, vector in enumerate(r.vectors)
            ]
            body = {"object": "list", "data": data, "model": r.model, "usage": usage}
        else:
            message: dict[str, Any] = {"role": "assistant", "content": r.content}
            if r.tool_calls:
                message["tool_calls"] = list(r.tool_calls)
            body = {
                "id": r.request_id,
                "object": "chat.completion",
                "model": r.model,
                "choices": [{"index": 0, "message": message, "finish_reason": r.finish_reason}],
                "usage": usage,
            }
        out["response"] = {"status_code": 200, "request_id": r.request_id, "body": body}
        out["error"] = None
        out["usage"] = usage
        out["key_id"] = r.key_used
        out["latency"] = round(r.latency, 4)
        out["queue_time"] = round(r.queue_time, 4)
        out["attempts"] = r.attempts
        return out


class ResultsFile:
    """An append-only JSONL file of results that a kill at any moment leaves readable.

    `open` reads the ids already there (dropping a last line cut short by a
    crash) and locks the file against a second writer. `append` writes each
    record as one ``write()`` of a whole line on an ``O_APPEND`` descriptor: no
    buffer in this process, so what is written survives a kill.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._end = 0  # the file's size: where a failed write is cut back to
        self.done: dict[str, bool] = {}  # custom_id -> ok, of the lines already there

    def open(self, *, retry_failed: bool = False) -> dict[str, bool]:
        """Open (creating it if needed) and return ``{custom_id: ok}`` of the lines held.

        With ``retry_failed``, the error lines are taken out first (the file is
        rewritten beside and renamed over, so a kill leaves the old or the new
        one), and their ids are not returned: a run does them again.

        Raises:
          OSError: the file cannot be opened or read, or is not a regular file.
          OSError: also when another run is writing to it (``EBUSY``).
        """
        fd = self._open_locked()
        try:
            self.done = self._read_and_trim(fd)
            if retry_failed and not all(self.done.values()):
                fd = self._drop_failed(fd)
                self.done = {custom_id: ok for custom_id, ok in self.done.items() if ok}
            self._end = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise self._named(exc) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self.done

    def _named(self, exc: OSError) -> OSError:
        """``exc`` with the file's name (``ftruncate`` and ``write`` give none)."""
        if exc.filename is not None:
            return exc
        return OSError(exc.errno, exc.strerror or str(exc), self.path)

    def _open_locked(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # Resume reads the file back: a pipe or a terminal would block that read,
            # /dev/zero never end it.
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(
                    errno.EINVAL, "not a regular file (a run reads its results back)", self.path
                )
            _lock(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _drop_failed(self, fd: int) -> int:
        """Rewrite the file without its error lines; return the new file's locked fd."""
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(fd, "rb", closefd=False) as lines, open(temporary, "wb") as kept:
            lines.seek(0)
            for raw in lines:
                try:
                    failed = json.loads(raw).get("error") is not None
                except (ValueError, AttributeError):
                    failed = False  # not ours: keep it
                if not failed:
                    kept.write(raw)
            kept.flush()
            os.fsync(kept.fileno())
        os.replace(temporary, self.path)
        new_fd = self._open_locked()  # the old fd, still locked, is the old file's
        os.close(fd)
        return new_fd

    def _read_and_trim(self, fd: int) -> dict[str, bool]:
        done: dict[str, bool] = {}
        end = 0  # just past the last newline
        with open(fd, "rb", closefd=False) as lines:
            for raw in lines:
                if not raw.endswith(b"\n"):
                    break  # torn by a crash: the request was not recorded
                end += len(raw)
                try:
                    record = json.loads(raw)
                    done[str(record["custom_id"])] = record.get("error") is None
                except (ValueError, KeyError, TypeError):
                    continue  # not ours: keep it, its request (if any) runs again
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
        return done

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line. Blocking, but a small write to the page cache.

        Raises:
          OSError: the write failed (a full disk); the file is cut back to its last
            whole line.
        """
        self.append_all([record])

    def append_all(self, records: list[Mapping[str, Any]]) -> None:
        """Write ``records`` as lines, in one ``write()``, which a regular file takes
        whole: a kill leaves all of them or none (the lines of one packed request,
        `Batch`'s ``split``).

        Raises:
          OSError: as `append`; none of them is kept.
        """
        if self._fd is None:
            raise RuntimeError("ResultsFile.append before open()")
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        size = len(data)
        try:
            while data:  # a regular file takes it whole; loop only for a short write
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)  # no torn line for the next run to find
            raise self._named(exc) from None
        self._end += size

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _lock(fd: int, path: str) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EBUSY, "another run is writing to it", path) from None

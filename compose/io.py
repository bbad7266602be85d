"""Safe file handling: atomic writes, output folders that compose may write into, and a folder lock.

* Atomic writes: a file is written to a temporary sibling and renamed into place, so a reader (or a resumed
  run) never sees a half-written file.
* Output folders: a command writes only into a folder that is new, empty, or marked as its own (a ``.compose``
  marker it left there); anything else needs ``--force``, and no command writes into, over or around its own
  inputs (not even with ``--force``).
* ``FolderLock``: one process at a time works in a run folder; a lock left by a process that is gone is stale
  and taken over.

In a job of several processes (``compose.distributed``) only the main process writes; the others wait at the
write until it is done.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from compose import distributed
from compose.errors import ComposeError

log = logging.getLogger("compose.io")

MARKER = ".compose"  # in a folder compose created: {"command": ..., "created": ...}
LOCK = ".lock"
PNG_SOFTWARE = "compose"


@distributed.main_writes
def atomic_write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; a written file gets the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@distributed.main_writes
def atomic_write_with(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG, atomically, tagged as compose's (see ``png_written_by_compose``)."""
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                           metadata={"Software": PNG_SOFTWARE}))


def png_written_by_compose(path) -> bool:
    """True for a PNG that ``save_figure`` wrote (it carries compose's Software tag)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Software\x00" + PNG_SOFTWARE.encode() in head


def atomic_write_json(path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path, what: str = "file", remedy: str = ""):
    """Parse the JSON file ``path``; a corrupt one is a one-line ``ComposeError`` naming it (and ``remedy``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ComposeError(f"malformed {what} {path}: not JSON ({reason}){'; ' + remedy if remedy else ''}") from None


# --- output folders -----------------------------------------------------------------------------------------

def _overlap(out: Path, given: Path) -> str | None:
    """How ``out`` overlaps the input ``given`` ('is', 'is inside', 'contains'), or None."""
    out, given = out.resolve(), given.resolve()
    if out == given:
        return "is"
    if given in out.parents:
        return "is inside"
    if out in given.parents:
        return "contains"
    return None


def refuse_own_inputs(path, inputs: Iterable, flag: str) -> None:
    """Refuse an output ``path`` that is, lies inside or contains one of the command's ``inputs``."""
    for given in inputs:
        how = _overlap(Path(path), Path(given))
        if how:
            raise ComposeError(f"{flag} '{path}' {how} the input '{given}'; writing there would change the input: "
                               f"choose another {flag}")


def marked_by(folder, command: str) -> bool:
    """True when ``folder`` holds the marker of an earlier ``compose command``."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("command") == command
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(path, flag: str, *, command: str | None = None, force: bool = False, inputs: Iterable = (),
                     owned: Callable[[Path], bool] = lambda p: False) -> Path:
    """Check that a command may write the folder ``path`` (see the module docstring); returns it as a Path.

    An existing non-empty folder is the command's own when it holds ``command``'s marker or ``owned(path)``
    says so (e.g. a run folder written before markers existed).
    """
    path = Path(path)
    refuse_own_inputs(path, inputs, flag)
    if path.exists() and not path.is_dir():
        raise ComposeError(f"{flag} '{path}' is a file, not a folder; choose a folder")
    mine = (command is not None and marked_by(path, command)) or owned(path)
    if path.is_dir() and any(path.iterdir()) and not force and not mine:
        raise ComposeError(f"{flag} '{path}' is not empty and was not written by this command; choose a new or "
                           f"empty folder, or add --force to write into it")
    return path


def claim_output_dir(path, command: str, flag: str, *, force: bool = False, inputs: Iterable = (),
                     owned: Callable[[Path], bool] = lambda p: False) -> Path:
    """``check_output_dir``, then create the folder and mark it as ``command``'s (a later run may write again)."""
    return mark_output_dir(check_output_dir(path, flag, command=command, force=force, inputs=inputs, owned=owned),
                           command)


def mark_output_dir(path, command: str) -> Path:
    """Create the folder ``path`` (if needed) and leave ``command``'s marker in it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not marked_by(path, command):
        atomic_write_json(path / MARKER, {"command": command, "created": _now()})
    return path


def check_output_file(path, flag: str, *, force: bool = False, inputs: Iterable = (),
                      owned: Callable[[Path], bool] = lambda p: False) -> Path:
    """As ``check_output_dir`` for one file: an existing file is replaced only when ``owned`` or with --force."""
    path = Path(path)
    refuse_own_inputs(path, inputs, flag)
    if path.is_dir():
        raise ComposeError(f"{flag} '{path}' is a folder; give a file name")
    if path.exists() and not force and not owned(path):
        raise ComposeError(f"{flag} '{path}' exists and was not written by compose; choose another file or add "
                           f"--force to replace it")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- the folder lock ----------------------------------------------------------------------------------------

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """``FOLDER/.lock`` names the process working in ``FOLDER`` while it holds the lock (a context manager).

    A second process is refused with a message naming the holder. A lock whose process is gone (same host,
    pid not running) or that cannot be read is stale: it is replaced, with a warning.
    """

    def __init__(self, folder, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                return self
            holder = self._holder()
            if holder is not None and self._alive(holder):
                raise ComposeError(
                    f"{self.what} '{self.folder}' is in use by process {holder.get('pid')} on {holder.get('host')} "
                    f"(since {holder.get('started')}); wait for it to finish, or delete {self.path} if that "
                    f"process is gone")
            log.warning(f"taking over the stale lock {self.path}"
                        + (f" of process {holder.get('pid')}, which is not running" if holder else ""))
            self.path.unlink(missing_ok=True)
        raise ComposeError(f"cannot lock {self.what} '{self.folder}': another process keeps taking {self.path}")

    def __exit__(self, *exc) -> None:
        if self._holder() == self.info:
            self.path.unlink(missing_ok=True)

    def _try_create(self) -> bool:
        """Write the lock to a temporary file and link it into place: atomic, and fails if a lock exists."""
        fd, tmp = tempfile.mkstemp(prefix=f"{LOCK}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # another machine's process cannot be checked from here
        return _process_alive(holder["pid"])

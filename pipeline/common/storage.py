"""The one module that knows where outputs live: a local folder or any fsspec URL (s3://, gs://, hf://, ...).

Files appear only whole: locally through a temporary file, fsync and rename (readers see the old file or the
new, never half); on object stores the content is encoded fully, then sent in one request.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .faults import fault_point


class OutputError(OSError):
    """The output folder cannot take a file (disk full, quota, read-only, missing bucket, access denied...)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message alone, without `[Errno N]`


class StorageError(ValueError):
    """A location that names no usable storage: unknown scheme, or its fsspec backend not installed."""


BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}  # other spellings of one scheme (one folder, one lock)
# Credentials in a URL's `user:password@` that the backend takes as options (s3fs does not parse them itself).
URL_CREDENTIALS = {"s3": ("key", "secret")}
# Packages whose exceptions are the storage's (network, HTTP, service errors) wherever they surface.
# (requests' and so huggingface_hub's errors are OSErrors already)
BACKEND_PACKAGES = {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "fsspec", "google", "azure"}
_SECRETS: set[str] = set()  # every credential read from a URL in this process: no text written may show one


@dataclass(frozen=True)
class Location:
    """A storage location in its normal form: what messages, records and locks name, one spelling per folder."""

    url: str  # local path, or scheme://bucket/path: scheme aliases resolved, no `..`, `//` or trailing `/`,
    # no credentials and no query
    target: str  # what fsspec opens (the normal form, or the given text where its backend parses more)
    options: dict = field(default_factory=dict, repr=False)  # credentials taken from the URL

    @classmethod
    def parse(cls, location: str | os.PathLike) -> Location:
        text = str(location)
        if "::" in text:  # fsspec would chain filesystems and write elsewhere than the name says
            raise StorageError(f"{_without_userinfo(text)}: '::' chains filesystems in fsspec URLs, so this "
                               "location is ambiguous; name a folder without '::'")  # fmt: skip
        if text.startswith("file://"):
            text = text.removeprefix("file://")
        if "://" not in text:
            return cls(text, text)
        scheme, rest = text.split("://", 1)
        scheme = ALIASES.get(scheme.lower(), scheme.lower())
        netloc, _, path = rest.partition("/")
        userinfo, _, host = netloc.rpartition("@")
        path, query = (path.split("?", 1) + [""])[:2]
        url = f"{scheme}://{host}{'/' + _normal_path(path, text) if path else ''}".rstrip("/")
        options = _credentials(scheme, userinfo)
        if userinfo and not options:
            return cls(url, text)  # a backend that parses its own (ftp, sftp, ...)
        return cls(url, f"{url}?{query}" if query else url, options)


def _normal_path(path: str, text: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                raise StorageError(f"{_without_userinfo(text)}: '..' leaves the bucket; name a folder inside it")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def _credentials(scheme: str, userinfo: str) -> dict:
    """The backend options that a URL's `user:password@` gives (none for backends that parse their own)."""
    from urllib.parse import unquote

    user, _, password = _remember(userinfo).partition(":")
    names = URL_CREDENTIALS.get(scheme) if userinfo else None
    return {names[0]: unquote(user), names[1]: unquote(password)} if names else {}


def _remember(userinfo: str) -> str:
    """Keep a URL's password for `scrub`, and its user name when that is an access key id (8+ characters:
    replacing a short name such as `user` everywhere would garble messages and hide nothing)."""
    from urllib.parse import unquote

    user, _, password = userinfo.partition(":")
    if password:
        users = {user, unquote(user)} if len(user) >= 8 else set()
        _SECRETS.update(s for s in {userinfo, password, unquote(password), *users} if len(s) > 1)
    return userinfo


def _without_userinfo(text: str) -> str:
    if "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rsplit('@', 1)[-1]}{slash}{path.split('?', 1)[0]}"


def locate(location: str | os.PathLike):
    """(fsspec filesystem, path) of a local path or URL; credentials come from each backend's usual
    environment and configuration (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN, ...) or the URL's
    `key:secret@` (s3). Retries are the backend's: botocore's (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE) and s3fs's."""
    import fsspec

    where = Location.parse(location)
    try:
        return fsspec.core.url_to_fs(where.target, **where.options)
    except ImportError:
        scheme = where.url.split("://", 1)[0]
        package = BACKENDS.get(scheme, f"the fsspec backend for {scheme}://")
        raise StorageError(f"{where.url}: {scheme}:// needs {package}; install it (pip install {package})") from None
    except ValueError as exc:
        message = f"{where.url}: not a storage location fsspec knows ({exc})"
        raise StorageError(scrub(message, str(location))) from None


def scrub(text: str, location: str = "") -> str:
    """`text` without the credentials that `location`, or any URL this process has read, carries."""
    if "://" in location:
        _remember(location.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0])
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def display(location: str | os.PathLike) -> str:
    """A location as messages and records show it: its normal form (no credentials, no query)."""
    try:
        return Location.parse(location).url
    except StorageError:
        return _without_userinfo(str(location))


def storage_failure(exc: BaseException, shown: str) -> OutputError | None:
    """The one-line error (exit 6) that an exception raised while using the storage `shown` (a location as
    `display` gives it) amounts to, naming the path and what to do; None for an exception that is not the
    storage's (a bug stays a bug). Every command maps its storage errors here."""
    if isinstance(exc, OutputError):
        return OutputError(exc.errno, scrub(" ".join(str(exc).split())))
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else exc.filename
        return OutputError(code, scrub(f"cannot use {where}: {exc.strerror}; {_hint(code)}"))
    if not isinstance(exc, OSError) and not _from_backend(exc):
        return None
    detail = " ".join(str(getattr(exc, "strerror", None) or exc).split()) or "no detail"
    return OutputError(code, scrub(f"storage error at {shown}: {type(exc).__name__}: {detail}; {_hint(code)}"))


def _from_backend(exc: BaseException) -> bool:
    return any(kind.__module__.split(".", 1)[0] in BACKEND_PACKAGES for kind in type(exc).__mro__)


def _hint(code: int | None) -> str:
    if code in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return "a file is where a folder must be (or the reverse): move it away or choose another --out"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied: fix its permissions (or the storage's credentials) or choose another folder"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "no space left: free some, then rerun (finished images are kept)"
    return "check the storage (endpoint, network, credentials), then rerun: finished images are kept"


def _file_mode() -> int:
    """What `open()` would create: 0666 less the umask (mkstemp alone makes every file 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


class Storage:
    """An output folder: paths inside it are relative, with `/` separators, on every filesystem."""

    def __init__(self, location: str | os.PathLike):
        from fsspec.implementations.local import LocalFileSystem

        self.location = Location.parse(location).url  # the normal form: one spelling per folder
        self.fs, self.root = locate(location)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __str__(self) -> str:
        return self.location

    def path(self, relative: str = "") -> str:
        return f"{self.root.rstrip('/')}/{relative}" if relative else self.root

    def local(self, relative: str = "") -> Path:
        """The local path (local folders only: locks, appended logs)."""
        assert self.is_local, "only local output folders have local paths"
        return Path(self.path(relative))

    def shown(self, relative: str) -> str:
        """How messages name a file: the local path, or the URL (without credentials)."""
        if self.is_local:
            return self.path(relative)
        return f"{self.location}/{relative}".rstrip("/")

    def exists(self, relative: str) -> bool:
        with self._denied(relative):
            return self.fs.exists(self.path(relative))

    def read_bytes(self, relative: str) -> bytes:
        with self._denied(relative):
            return self.fs.cat_file(self.path(relative))

    @contextmanager
    def _denied(self, relative: str):
        """Refused credentials while reading are the output folder's error (exit 6), not a crash."""
        try:
            yield
        except PermissionError as exc:
            raise self._access_denied(relative, "read", exc) from None

    def _access_denied(self, relative: str, doing: str, exc: PermissionError) -> OutputError:
        message = f"cannot {doing} {self.shown(relative)}: access denied; check the storage's credentials"
        return OutputError(exc.errno, message)

    def makedirs(self, relative: str = "") -> None:
        if self.is_local:
            self.local(relative).mkdir(parents=True, exist_ok=True)

    def write(self, relative: str, data: bytes, moment: str | None = None, durable: bool = True) -> None:
        """Atomically; `moment`: the fault point reached once the content is complete but not yet in place;
        `durable=False`: no fsync of its own (many small files, made durable together by `sync`)."""
        if self.is_local:
            path = self.local(relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            return write_atomic(path, data, moment, durable)
        if moment:
            fault_point(moment)
        with self._remote_errors(relative):
            self.fs.pipe_file(self.path(relative), data)

    @contextmanager
    def _remote_errors(self, relative: str, doing: str = "write"):
        try:
            yield
        except FileNotFoundError as exc:
            message = f"cannot {doing} {self.shown(relative)}: {exc} (does the bucket exist?)"
            raise OutputError(exc.errno, message) from exc
        except PermissionError as exc:
            raise self._access_denied(relative, doing, exc) from exc
        except OSError as exc:
            detail = f"{exc.strerror or exc}; {_hint(exc.errno)}"
            raise OutputError(exc.errno, f"cannot {doing} {self.shown(relative)}: {detail}") from exc

    @contextmanager
    def open_atomic(self, relative: str, moment: str | None = None):
        """A binary file handle whose content appears at `relative` only when the block ends without error.

        On object stores it is spooled on local disk (TMPDIR: a shard may be gigabytes), then sent in one go.
        """
        if self.is_local:
            path = self.local(relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open_atomic(path, moment) as handle:
                yield handle
            return
        with tempfile.NamedTemporaryFile(prefix="layerdiffuse-", suffix=".part") as spool:
            yield spool
            spool.flush()
            if moment:
                fault_point(moment)
            with self._remote_errors(relative):
                self.fs.put_file(spool.name, self.path(relative))

    def sync(self) -> None:
        """Make what was written with `durable=False` durable (object stores have nothing to flush)."""
        if self.is_local:
            os.sync()

    def remove(self, relative: str) -> None:
        with self._remote_errors(relative, "remove"), suppress(FileNotFoundError):  # gone already: nothing to do
            self.fs.rm_file(self.path(relative))

    def size(self, relative: str) -> int | None:
        """A local file's size from one stat (no file is opened); None when it is missing."""
        try:
            return os.stat(self.local(relative)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def sizes(self, folder: str) -> dict[str, int]:
        """{file name: size} of one folder, from one listing (no file is opened)."""
        if self.is_local:
            try:
                with os.scandir(self.local(folder)) as entries:
                    return {e.name: e.stat().st_size for e in entries if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                return {}
        self.fs.invalidate_cache(self.path(folder))  # another process may have written since
        try:
            with self._denied(folder):
                listing = self.fs.ls(self.path(folder), detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["size"] for e in listing if e["type"] == "file"}


def write_atomic(path: Path, data: bytes, moment: str | None = None, durable: bool = True) -> None:
    """Temporary file in the same folder, fsync, rename: readers see the old file or the new, never half.

    `moment`: the fault point reached once the temporary file is complete (see faults.py).
    """
    with open_atomic(path, moment, size=len(data), durable=durable) as handle:
        handle.write(data)


@contextmanager
def open_atomic(path: Path, moment: str | None = None, size: int | None = None, durable: bool = True):
    """The streaming form of `write_atomic`: the file appears, whole, when the block ends."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot create a file in {path.parent}: {exc.strerror}") from exc
    handle = os.fdopen(fd, "wb")
    try:
        with handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if moment:
            fault_point(moment)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        written = _written(handle)
        total = f" of {size}" if size is not None else ""
        message = f"cannot write {path}: {exc.strerror or exc} ({written}{total} bytes written); {_hint(exc.errno)}"
        raise OutputError(exc.errno, message) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _written(handle) -> int:
    try:
        return handle.tell()
    except (OSError, ValueError):
        return 0


def remove_stale_temporaries(folder: Path, max_age_elsewhere: float = 3600, depth: int = 2) -> int:
    """Delete temporary files that killed writers left behind (in `folder` and `depth - 1` levels below it).

    Temporary names carry the writer's host and pid: on this host a file is stale when its process is
    gone; a file from another host (shared folders) when it is older than `max_age_elsewhere` seconds.
    """
    removed = 0
    here = _owner_tag().split("@")[0]
    for path in (p for level in range(depth) for p in folder.glob("*/" * level + ".*.tmp")):
        host, pid = _owner(path.name)
        try:
            if host == here:
                stale = pid is not None and pid != os.getpid() and not _alive(pid)
            else:
                stale = time.time() - path.stat().st_mtime > max_age_elsewhere
            if stale:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
    return removed


def _owner_tag() -> str:
    """`<host>@<pid>` of this process, with the host's dots replaced (file names split on them)."""
    return f"{socket.gethostname().replace('.', '_')}@{os.getpid()}"


def _owner(name: str) -> tuple[str | None, int | None]:
    """(host tag, pid) from `.<file>.<host>@<pid>.<random>.tmp`."""
    match = re.search(r"\.([^.@]+)@(\d+)\.[^.]+\.tmp$", name)
    return (match.group(1), int(match.group(2))) if match else (None, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True

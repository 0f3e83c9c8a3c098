"""Run directories and input files on object storage (any fsspec URL: ``s3://``, ``gs://``).

A run directory on a URL is *staged*: vlit works in a local copy (SQLite, the journal's format,
cannot live on object storage), `StagedRunDir.pull` fetches what the URL already holds (so a
rerun on any machine resumes from its journal and shards) and `StagedRunDir.push` uploads what
changed since the last sync. The local copy lives under `staging_root`
(``$VLIT_STAGING_DIR``, default ``~/.cache/vlit/staging``), one folder per URL. An input file
on a URL is fetched once into the same area by `fetch_input` and read from there.

Example:
    >>> with open_run_dir("s3://bucket/runs/r1") as run:   # doctest: +SKIP
    ...     run.write_records(records)                       # pushed when the block ends
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vlit.errors import ConfigError, InputFileError, VlitError
from vlit.fileio import write_text_atomic
from vlit.images import is_url
from vlit.rundir import MANIFEST_NAME, RunDir
from vlit.runlock import LOCK_NAME

#: The environment variable naming the folder of staged runs and fetched inputs.
STAGING_ENV = "VLIT_STAGING_DIR"

#: The pip extra that brings the fsspec backend of each well-known URL scheme.
_EXTRAS = {"s3": "vlit[s3]", "s3a": "vlit[s3]", "gs": "vlit[gcs]", "gcs": "vlit[gcs]"}

#: Keys of fsspec's `info()` that change when an object is rewritten, by backend.
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "created")


def staging_root() -> Path:
    """The folder of staged runs and fetched inputs: ``$VLIT_STAGING_DIR`` or the user cache."""
    configured = os.environ.get(STAGING_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return Path.home() / ".cache" / "vlit" / "staging"


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it; `ConfigError` if none is usable."""
    scheme = url.partition("://")[0]
    extra = _EXTRAS.get(scheme, f"the fsspec backend of '{scheme}://'")
    try:
        from fsspec.core import url_to_fs

        storage, path = url_to_fs(url)
    except ImportError as error:
        raise ConfigError(
            f"cannot open {scheme}:// URLs ({error})",
            file=url,
            fix=f"pip install {extra}",
        ) from error
    except ValueError as error:  # fsspec's answer to an unknown scheme
        raise ConfigError(
            f"no file system handles {scheme}:// ({error})",
            file=url,
            fix="use a local path or an fsspec URL such as s3://bucket/folder",
        ) from error
    return storage, path


def arrow_filesystem(location: str) -> tuple[Any, str]:
    """The `pyarrow.fs` file system of ``location`` and the path inside it: an fsspec URL's
    file system wrapped for pyarrow (so Ray's Parquet writer and pyarrow's reader use the same
    backend and credentials as the staged run's sync), or the local one with an absolute path.
    """
    from pyarrow import fs

    if not is_url(location):
        return fs.LocalFileSystem(), str(Path(location).absolute())
    storage, path = filesystem(location)
    return fs.PyFileSystem(fs.FSSpecHandler(storage)), path


def _version(info: dict[str, Any]) -> str:
    """What identifies one version of an object: its size and the backend's tag or time."""
    tag = next((info[key] for key in _VERSION_KEYS if info.get(key) is not None), "")
    return f"{info.get('size')}:{tag}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def fetch_input(url: str) -> Path:
    """A local copy of the input file at ``url``, fetched once per version of the object.

    The copy sits under ``staging_root()/inputs``, keyed by the URL and the object's size and
    ETag (or modification time), so a changed object is fetched again. A missing object raises
    `InputFileError` naming the URL.
    """
    storage, path = filesystem(url)
    try:
        info = storage.info(path)
    except FileNotFoundError as error:
        raise InputFileError(
            "input file not found on object storage",
            file=url,
            fix="check the URL (bucket, folder, file name) and that your credentials can read it",
        ) from error
    except Exception as error:  # noqa: BLE001 - credential and client errors of any backend
        raise InputFileError(
            f"cannot read the input file ({type(error).__name__}: {error})",
            file=url,
            fix="check the URL, the endpoint and your credentials",
        ) from error
    if info.get("type") == "directory":
        raise InputFileError(
            "expected an input file but the URL is a folder",
            file=url,
            fix="give the URL of the file inside it",
        )
    local = staging_root() / "inputs" / _digest(f"{url}\n{_version(info)}") / Path(path).name
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".part")
        _transfer(storage.get_file, path, str(partial), url=url, action="read the input file")
        partial.replace(local)
    return local


def find_objects(url: str, *, what: str) -> dict[str, dict[str, Any]]:
    """Every object under the URL (freshly listed): path relative to it -> fsspec's info about
    it; empty when nothing is there. ``what`` names the folder in the error."""
    storage, root = filesystem(url)
    storage.invalidate_cache(root)
    try:
        found = storage.find(root, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as error:  # noqa: BLE001 - credential and client errors of any backend
        raise InputFileError(
            f"cannot list {what} ({type(error).__name__}: {error})",
            file=url,
            fix="check the URL, the endpoint, that the bucket exists and your credentials",
        ) from error
    prefix = root.rstrip("/") + "/"
    return {
        name[len(prefix) :]: info
        for name, info in found.items()
        if name.startswith(prefix) and info.get("type") != "directory"
    }


def file_names(location: str) -> list[str]:
    """The names of the files in the folder ``location`` (a path, or a URL listed afresh)."""
    if not is_url(location):
        return [path.name for path in Path(location).iterdir() if path.is_file()]
    return [name for name in find_objects(location, what="the folder") if "/" not in name]


def _transfer(call: Any, *args: str, url: str, action: str) -> None:
    """One fsspec call whose every failure becomes an `InputFileError` naming ``url``."""
    try:
        call(*args)
    except Exception as error:  # noqa: BLE001 - credential and client errors of any backend
        raise InputFileError(
            f"cannot {action} ({type(error).__name__}: {error})",
            file=url,
            fix="check the URL, the endpoint, that the bucket exists and your credentials",
        ) from error


class StagedRunDir(RunDir):
    """A run directory whose home is a URL; vlit reads and writes its local staged copy.

    ``root`` is the staged copy (``staging_root()/runs/<hash of the URL>/run``); beside it,
    ``sync.json`` remembers each file's local size and mtime and its remote version at the last
    sync, so `push` uploads only what changed and `pull` downloads only what changed remotely.
    Two runs must not write the same URL at once: the last push wins, file by file.
    """

    def __init__(self, url: str, *, staging: str | os.PathLike[str] | None = None) -> None:
        self.url = url.rstrip("/")  # the same staging folder with or without a final "/"
        default = staging_root() / "runs" / _digest(self.url)
        folder = Path(staging) if staging is not None else default
        super().__init__(folder / "run")
        self._manifest_path = folder / "sync.json"
        self._storage, self._remote_root = filesystem(self.url)

    @property
    def location(self) -> str:
        return self.url

    def location_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    @property
    def images_location(self) -> str:
        return self.location_of("images")

    def pull(self) -> int:
        """Download the objects that changed remotely since the last sync; their count.

        A local file changed since the last sync (work a crashed run did not push) is kept
        unless the remote object changed too, in which case the remote wins.
        """
        manifest = self._load_manifest()
        remote = self._list_remote()
        fetched = 0
        for relative, version in remote.items():
            known = manifest.get(relative)
            if known is not None and known["remote"] == version and (self.root / relative).exists():
                continue
            self._download(relative, version, manifest)
            fetched += 1
        for relative in [name for name in manifest if name not in remote]:
            local = self.root / relative
            if local.exists() and _local_state(local) == manifest[relative]["local"]:
                local.unlink()  # deleted remotely (a later run rewrote the stage) since our sync
            del manifest[relative]
        self._save_manifest(manifest)
        return fetched

    def fetch(self, names: Sequence[str]) -> None:
        """Download the files ``names`` (relative to the run) that another host wrote to the URL
        (Ray workers write a stage's shards there) into the staged copy, as synced: the next
        `push` does not upload them again."""
        if not names:
            return
        manifest = self._load_manifest()
        remote = self._list_remote()
        for relative in names:
            if relative not in remote:
                raise InputFileError(
                    "a file a Ray worker wrote is not in the run directory's bucket",
                    file=f"{self.url}/{relative}",
                    fix="check that the workers and this machine use the same endpoint and "
                    "bucket, then rerun the command",
                )
            self._download(relative, remote[relative], manifest)
        self._save_manifest(manifest)

    def _download(self, relative: str, version: str, manifest: dict[str, dict[str, Any]]) -> None:
        """Fetch the remote ``relative`` into the staged copy and record it in ``manifest``."""
        local = self.root / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".part")
        _transfer(
            self._storage.get_file,
            f"{self._remote_root}/{relative}",
            str(partial),
            url=f"{self.url}/{relative}",
            action="pull the run directory",
        )
        partial.replace(local)
        manifest[relative] = {"local": _local_state(local), "remote": version}

    def push(self) -> int:
        """Upload the files that changed locally since the last sync and delete, remotely, the
        ones deleted locally; the number of files uploaded."""
        manifest = self._load_manifest()
        local_files = {
            path.relative_to(self.root).as_posix(): path
            for path in sorted(self.root.rglob("*"), key=_manifests_last)
            if path.is_file()
            and not path.name.endswith((".tmp", ".part"))
            and not path.name.startswith(LOCK_NAME)
        }
        uploaded: list[str] = []
        for relative, path in local_files.items():
            known = manifest.get(relative)
            if known is not None and known["local"] == _local_state(path):
                continue
            _transfer(
                self._storage.put_file,
                str(path),
                f"{self._remote_root}/{relative}",
                url=f"{self.url}/{relative}",
                action="push the run directory",
            )
            uploaded.append(relative)
        for relative in [name for name in manifest if name not in local_files]:
            _transfer(
                self._storage.rm_file,
                f"{self._remote_root}/{relative}",
                url=f"{self.url}/{relative}",
                action="delete a stale file of the run directory",
            )
            del manifest[relative]
        if uploaded:
            remote = self._list_remote()
            for relative in uploaded:
                manifest[relative] = {
                    "local": _local_state(local_files[relative]),
                    "remote": remote.get(relative, ""),
                }
        self._save_manifest(manifest)
        return len(uploaded)

    def _list_remote(self) -> dict[str, str]:
        """Every object under the URL: path relative to it -> version."""
        found = find_objects(self.url, what="the run directory")
        return {relative: _version(info) for relative, info in found.items()}

    def _load_manifest(self) -> dict[str, dict[str, Any]]:
        if not self._manifest_path.exists():
            return {}
        files: dict[str, dict[str, Any]] = json.loads(
            self._manifest_path.read_text(encoding="utf-8")
        )["files"]
        return files

    def _save_manifest(self, manifest: dict[str, dict[str, Any]]) -> None:
        text = json.dumps({"url": self.url, "files": manifest}, indent=1, sort_keys=True)
        write_text_atomic(self._manifest_path, text)


def _manifests_last(path: Path) -> tuple[bool, str]:
    """Upload order: a stage's manifest after its shards, so a reader of the bucket never sees
    a manifest that lists shards not there yet."""
    return path.name == MANIFEST_NAME, path.as_posix()


def _local_state(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


@contextlib.contextmanager
def open_run_dir(
    location: str | os.PathLike[str],
    *,
    writer: str | None = None,
    must_exist: bool = False,
    staging: str | os.PathLike[str] | None = None,
) -> Iterator[RunDir]:
    """The run directory at ``location``: a local `RunDir`, or a pulled `StagedRunDir` for a URL.

    ``writer`` names the command when it writes the run: it holds the run's lock
    (`vlit.runlock`) for the whole block, so a second writer fails at once. A staged run is
    pushed when the block ends, also when it ends with an error (so the journal and the
    shards written so far are not lost); a failed push then adds a note to that error.
    ``must_exist``: a local folder that is not there is an error (commands that read a run).
    """
    with contextlib.ExitStack() as stack:
        if not is_url(os.fspath(location)):
            run = RunDir(location)
            if must_exist and not run.root.is_dir():
                raise InputFileError(
                    "run directory not found",
                    file=str(run.root),
                    fix="pass a directory made by `vlit collect`, `vlit import` or `vlit run`",
                )
            if writer is not None:
                stack.enter_context(run.lock(writer))
            yield run
            return
        staged = StagedRunDir(os.fspath(location), staging=staging)
        if writer is not None:
            stack.enter_context(staged.lock(writer))
        staged.pull()
        try:
            yield staged
        except BaseException as error:
            try:
                staged.push()
            except VlitError as failed:
                error.add_note(f"the work done was not pushed to {staged.url}: {failed}")
            raise
        staged.push()

"""Run directories and atomic writes: a file is either complete at its path or absent."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from raybench.errors import UserError


def check_writable(directory: str | Path, what: str = "save_dir") -> Path:
    """Create `directory` if needed and prove a file can be written there (root ignores mode
    bits, so os.access would say yes to a read-only mount)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise UserError(f"{what} {directory} is not writable: "
                        f"{exc.strerror or exc}") from None
    return directory


# URI schemes pyarrow's filesystems (and so Ray Train's storage) understand.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file", "memory")


def check_storage(storage: str) -> None:
    """io.storage_path before Ray starts: a known URI scheme, or a local directory that can be
    written (checked again by Ray later, but by then workers have started)."""
    if "://" in storage:
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            raise UserError(f"storage_path {storage!r}: unknown URI scheme {scheme!r} (known: "
                            f"{', '.join(STORAGE_SCHEMES)})")
        return
    check_writable(storage, "storage_path")


def make_run_dir(save_dir: str | Path, run_name: str | None) -> Path:
    """`<save_dir>/<run_name>` or `<save_dir>/run_YYYYMMDD_HHMMSS` (suffixed if taken)."""
    save_dir = check_writable(save_dir)
    base = run_name or time.strftime("run_%Y%m%d_%H%M%S")
    for i in range(1000):
        path = save_dir / (base if i == 0 else f"{base}_{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if run_name:
                raise UserError(f"run directory {path} already exists; pick another "
                                "io.run_name") from None
    raise UserError(f"too many runs named {base} in {save_dir}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _MODE)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy/torch scalars and arrays become numbers and lists, NaN null."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist) and getattr(obj, "ndim", 0) > 0:
        return jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    return write_bytes(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode())


def write_yaml(path: str | Path, obj: Any) -> Path:
    return write_bytes(path, yaml.safe_dump(jsonable(obj), sort_keys=False).encode())


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(jsonable(rows))
    return write_bytes(path, buf.getvalue().encode())


def save_state_dict(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return write_bytes(path, buf.getvalue())


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _filesystem(uri: str):
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{uri}: {exc}") from None


def uri_has(uri: str, name: str) -> bool:
    """Whether `<uri>/<name>` exists (local paths and any URI pyarrow understands)."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return (Path(uri) / name).exists()
    fs, root = _filesystem(uri)
    return fs.get_file_info(f"{root.rstrip('/')}/{name}").type != pafs.FileType.NotFound


class Output:
    """Where a command writes its results: a local directory, or a URI (s3://, gs://,
    file://) the files are staged for and uploaded to at the end."""

    def __init__(self, where: str) -> None:
        self.where = where.rstrip("/")
        self.uri = is_uri(where)
        self.local = (Path(tempfile.mkdtemp(prefix="raybench-out-")) if self.uri
                      else Path(where))

    @property
    def root(self) -> str:
        """The output itself as Ray's storage_path: the URI, or the absolute local path."""
        return self.where if self.uri else str(self.local.resolve())

    def storage(self, name: str) -> str:
        """A path or URI for a subdirectory Ray writes itself (Ray Train / Tune storage)."""
        return f"{self.where}/{name}" if self.uri else str((self.local / name).resolve())

    def has(self, name: str) -> bool:
        return uri_has(self.where, name)

    def publish(self) -> str:
        """Upload the staged files to the URI; the local path or the URI, for printing."""
        if not self.uri:
            return str(self.local.resolve())
        parent, _, name = self.where.rpartition("/")
        return upload_dir(self.local, parent, name)


def upload_dir(local: str | Path, destination: str, name: str) -> str:
    """Copy a directory to `<destination>/<name>`: a local/NFS path or any URI pyarrow's
    filesystem layer understands (s3://, gs://, hdfs://)."""
    import pyarrow.fs as pafs

    if is_uri(destination):
        fs, root = _filesystem(destination)
    else:
        fs, root = pafs.LocalFileSystem(), str(Path(destination).resolve())
    target = f"{root.rstrip('/')}/{name}"
    fs.create_dir(target, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), target, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    return destination.rstrip("/") + "/" + name

"""Where ``deploykit predict`` reads and writes, for both engines: a file, a folder or a URL.

Everything goes through one fsspec filesystem per location (fsspec comes with the base install):
local paths through fsspec's own, URLs (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``)
through pyarrow's native filesystems (the ones Ray Data uses), wrapped for fsspec
(``ArrowFSWrapper``), so no s3fs is needed and the driver and every Ray worker open the same
storage the same way. ``file:///shared/path`` is a local path that the user says every node of a
cluster sees. Object-store settings come from the standard environment (the AWS SDK's
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``) or
``--storage-options``, a JSON object of the keyword arguments of the URL scheme's pyarrow
filesystem (``{"endpoint_override": "http://127.0.0.1:9000", "region": "us-east-1"}``).

The output contract (docs/scale-out.md): a folder of Parquet parts and, written last, the
completion marker ``_deploykit.json`` (row count, part files, artifact name, variant, sha256 of the
manifest). Object stores have no atomic rename, so a reader tells a complete run from a partial
one by the marker alone. A folder that holds anything is refused unless ``--overwrite``, which
deletes its contents first.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlparse

from deploykit.errors import BadInputError

log = logging.getLogger(__name__)

FORMATS = (".csv", ".json", ".jsonl", ".parquet")
MARKER = "_deploykit.json"
PART_SUFFIX = ".parquet"
# pyarrow's filesystem class per URL scheme, for --storage-options.
_FILESYSTEMS = {"s3": "S3FileSystem", "gs": "GcsFileSystem", "gcs": "GcsFileSystem",
                "hdfs": "HadoopFileSystem", "abfs": "AzureFileSystem", "abfss": "AzureFileSystem"}


def is_url(text: str) -> bool:
    """Whether ``text`` names storage by a URL scheme (a one-letter scheme is a Windows drive)."""
    return len(urlparse(text).scheme) > 1


def parse_options(text: str | None, option: str = "--storage-options") -> dict[str, Any]:
    """``--storage-options``: a JSON object of filesystem keyword arguments.

    Raises:
        BadInputError: Not a JSON object.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"{option} is not valid JSON ({exc}); give an object such as "
                            "'{\"endpoint_override\": \"http://127.0.0.1:9000\"}'") from None
    if not isinstance(value, dict):
        raise BadInputError(f"{option} must be a JSON object of filesystem options, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Location:
    """A file or folder on some storage.

    Attributes:
        fs: The fsspec filesystem (picklable: Ray ships it to the workers).
        path: The path inside ``fs``.
        uri: What the user gave.
        local: Whether it is a plain path on this machine (no URL scheme).
    """

    fs: Any
    path: str
    uri: str
    local: bool

    def join(self, name: str) -> str:
        """The path of ``name`` inside this folder."""
        return str(PurePosixPath(self.path) / name)

    def kind(self, path: str | None = None) -> str | None:
        """``file``, ``directory`` or None (nothing there) for this location or ``path`` on its
        filesystem.

        Raises:
            BadInputError: The storage cannot be reached (credentials, endpoint, permissions).
        """
        try:
            return self.fs.info(path or self.path)["type"]
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BadInputError(f"cannot reach {self.uri} ({exc}); check the URL, the credentials "
                                "(AWS_ACCESS_KEY_ID, ...), AWS_ENDPOINT_URL or --storage-options") from None

    def arrow(self) -> Any:
        """The same filesystem for pyarrow (and Ray's writers): the wrapped pyarrow one, or fsspec's
        through pyarrow's handler."""
        import pyarrow.fs as pafs

        inner = getattr(self.fs, "fs", None)
        if isinstance(inner, pafs.FileSystem):
            return inner
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))


def _s3_environment(options: dict[str, Any]) -> dict[str, Any]:
    """The AWS SDK's endpoint and region variables as S3FileSystem options, unless the options
    set them (pyarrow reads the credentials from the environment itself, but not every release
    reads the endpoint)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_override" not in options:
        options = {**options, "endpoint_override": endpoint}
        if endpoint.startswith("http://"):
            options.setdefault("scheme", "http")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and "region" not in options:
        options["region"] = region
    return options


def locate(uri: str, storage_options: dict[str, Any] | None = None, option: str = "--data") -> Location:
    """The storage behind a path or URL.

    Args:
        uri: A local path, or a URL of a pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``,
            ``abfs://``) or ``file://``.
        storage_options: Keyword arguments of the scheme's pyarrow filesystem.
        option: The flag that named it, for messages.

    Returns:
        The location.

    Raises:
        BadInputError: An unknown scheme, options pyarrow refuses, or a URL without pyarrow.
    """
    import fsspec

    options = dict(storage_options or {})
    if not is_url(uri) or urlparse(uri).scheme.lower() == "file":
        if options:
            log.warning("%s %s is a local path: --storage-options do not apply to it", option, uri)
        local = not is_url(uri)
        path = str(Path(uri).expanduser().resolve()) if local else urlparse(uri).path
        return Location(fsspec.filesystem("file"), path, uri, local)
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    name = _FILESYSTEMS.get(scheme)
    if name is None:
        raise BadInputError(f"{option} {uri}: unknown storage scheme {scheme!r}; use a local path, file://, "
                            f"or one of {', '.join(f'{s}://' for s in sorted(_FILESYSTEMS))}")
    try:
        import pyarrow.fs as pafs
        from fsspec.implementations.arrow import ArrowFSWrapper
    except ImportError:
        raise BadInputError(f"{option} {uri} needs pyarrow; install it with: pip install 'deploykit[ray]' "
                            "(from a checkout: pip install -e '.[ray]')") from None
    if scheme == "s3":
        options = _s3_environment(options)
    try:
        fs = getattr(pafs, name)(**options)
    except (ValueError, TypeError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BadInputError(f"{option} {uri}: pyarrow cannot open this storage with options {options} ({exc}); "
                            "fix --storage-options") from None
    return Location(ArrowFSWrapper(fs), (parsed.netloc + parsed.path).rstrip("/"), uri, False)


def input_files(loc: Location, option: str = "--data") -> list[tuple[str, str]]:
    """The data files of a file or a folder, each as ``(name relative to the location, path)``.

    A folder's files are its CSV/JSON/JSONL/Parquet files at any depth, sorted by name; names
    starting with ``.`` or ``_`` (hidden files, ``_SUCCESS``, markers) are skipped, as Spark and
    Ray do. A single file's name is its base name.

    Raises:
        BadInputError: Nothing there, an unknown format, or a folder without data files.
    """
    kind = loc.kind()
    if kind is None:
        raise BadInputError(f"{option} {loc.uri} does not exist; pass an existing file, folder or URL")
    if kind == "file":
        if PurePosixPath(loc.path).suffix.lower() not in FORMATS:
            raise BadInputError(f"cannot read {loc.uri}: use one of {', '.join(FORMATS)}")
        return [(PurePosixPath(loc.path).name, loc.path)]
    found = []
    root = PurePosixPath(loc.fs._strip_protocol(loc.path))
    for path in loc.fs.find(loc.path):
        rel = PurePosixPath(loc.fs._strip_protocol(path)).relative_to(root)
        if any(p.startswith((".", "_")) for p in rel.parts) or rel.suffix.lower() not in FORMATS:
            continue
        found.append((str(rel), path))
    if not found:
        raise BadInputError(f"{option} {loc.uri} is a folder without {', '.join(FORMATS)} files; pass a folder "
                            "of data files (or one file)")
    return sorted(found)


def open_binary(fs: Any, path: str) -> BinaryIO:
    """A buffered binary reader of a file on ``fs`` (iterable line by line)."""
    return fs.open(path, "rb", block_size=1 << 20)


# --- the output folder ----------------------------------------------------------------------

def _held(loc: Location) -> list[str]:
    return [p for p in loc.fs.find(loc.path)] if loc.kind() == "directory" else []


def prepare_output(loc: Location, overwrite: bool) -> None:
    """Make ``loc`` an empty folder: refuse one that holds anything unless ``overwrite``, which
    deletes its contents (an earlier run's parts and marker) first.

    Raises:
        BadInputError: It is a file, or holds files and ``overwrite`` is off.
    """
    if loc.kind() == "file":
        raise BadInputError(f"--out {loc.uri} is a file; the Parquet output is a folder of parts (or name a "
                            ".jsonl file for one JSON line per row with the local engine)")
    held = _held(loc)
    if held and not overwrite:
        complete = any(PurePosixPath(h).name == MARKER for h in held)
        raise BadInputError(f"--out {loc.uri} already holds {len(held)} file(s) ("
                            f"{'a complete run' if complete else 'no completion marker: a partial run'}); "
                            "pass --overwrite to delete them first, or choose another --out")
    if held:
        log.info("--overwrite: deleting the %d file(s) in %s", len(held), loc.uri)
        clear(loc)
    loc.fs.makedirs(loc.path, exist_ok=True)


def clear(loc: Location) -> None:
    """Delete every file in the folder (what a failed run wrote, or an old run on --overwrite)."""
    for path in _held(loc):
        try:
            loc.fs.rm_file(path)
        except FileNotFoundError:
            pass


def parts(loc: Location) -> list[tuple[str, int]]:
    """The Parquet parts in the folder, ``(name relative to it, rows)``, sorted by name; rows from
    each part's footer."""
    import pyarrow.parquet as pq

    root = PurePosixPath(loc.fs._strip_protocol(loc.path))
    found = []
    for path in _held(loc):
        if path.endswith(PART_SUFFIX):
            with loc.fs.open(path, "rb") as fh:
                found.append((str(PurePosixPath(loc.fs._strip_protocol(path)).relative_to(root)),
                              pq.ParquetFile(fh).metadata.num_rows))
    return sorted(found)


def write_marker(loc: Location, record: dict[str, Any]) -> str:
    """Write ``_deploykit.json`` last: a temporary name renamed into place on a local filesystem,
    one PUT (atomic per object) on an object store.

    Returns:
        The marker's path.
    """
    data = (json.dumps(record, indent=2) + "\n").encode()
    target = loc.join(MARKER)
    if loc.local or loc.uri.startswith("file:"):
        tmp = loc.join(f".{MARKER}.tmp")
        loc.fs.pipe_file(tmp, data)
        loc.fs.mv(tmp, target)
    else:
        loc.fs.pipe_file(target, data)
    return target


def read_marker(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The completion marker of an output folder, or None when the run is not complete.

    Args:
        uri: The output folder (path or URL).
        storage_options: As for ``locate``.

    Returns:
        The marker's record (``rows``, ``parts``, ``artifact``, ``variant``, ``manifest_sha256``, ...).
    """
    loc = locate(uri, storage_options, "--out")
    if loc.kind(loc.join(MARKER)) != "file":
        return None
    return json.loads(loc.fs.cat_file(loc.join(MARKER)).decode())

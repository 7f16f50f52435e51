"""Where files live: local paths and object-store URIs (s3://, gs://, ...) behind one API.

Everything goes through pyarrow's filesystems, which take their endpoint and credentials from the
standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Owns copying folders in and out,
small JSON/bytes objects, and the local, content-keyed copies that model loaders read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid

import pyarrow.fs as pafs

#: Written into every export: "<sha256>  <relative path>" per file. A reader keys its local copy
#: by this file's hash and checks each file against it.
CONTENT_FILE = "content.sha256"


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it); local paths become absolute."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    """os.path.join for local paths, '/'-joined for URIs."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_bytes(path: str, content: bytes) -> None:
    """Whole-object write. Local: to a temp name, then rename (readers never see half a file);
    object stores: one PUT, which becomes visible only complete."""
    fs, inner = filesystem(path)
    if not is_uri(path):
        os.makedirs(os.path.dirname(inner), exist_ok=True)
        tmp = f"{inner}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, inner)
        return
    with fs.open_output_stream(inner) as f:
        f.write(content)


def read_json(path: str) -> dict:
    return json.loads(read_bytes(path))


def write_json(path: str, value) -> None:
    write_bytes(path, json.dumps(value, indent=2).encode())


def list_files(path: str) -> list[str]:
    """Relative paths of every file under a folder, sorted."""
    fs, inner = filesystem(path)
    inner = inner.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return sorted(i.path[len(inner) + 1:] for i in infos if i.type == pafs.FileType.File)


def upload_dir(local: str, dest: str) -> None:
    """Copy a local folder's files to `dest` (local or URI), replacing what is there."""
    fs, inner = filesystem(dest)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)
    fs.create_dir(inner)
    pafs.copy_files(local, inner, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def delete_dir(path: str) -> None:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


def move_dir(src: str, dest: str) -> None:
    """A rename on local disk; a copy then delete on object stores, which have no rename."""
    if not is_uri(src):
        os.rename(src, dest)
        return
    fs, inner = filesystem(src)
    _, dest_inner = filesystem(dest)
    pafs.copy_files(inner, dest_inner, source_filesystem=fs, destination_filesystem=fs)
    fs.delete_dir(inner)


def content_listing(folder: str) -> str:
    """The CONTENT_FILE text for a local folder: sha256 and relative path per file."""
    lines = []
    for rel in list_files(folder):
        if rel == CONTENT_FILE:
            continue
        digest = hashlib.sha256()
        with open(os.path.join(folder, rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        lines.append(f"{digest.hexdigest()}  {rel}")
    return "\n".join(lines) + "\n"


def export_digest(folder: str) -> str:
    """sha256 of a local folder's CONTENT_FILE text as computed now: every file, by content."""
    return hashlib.sha256(content_listing(folder).encode()).hexdigest()


def publish_dir(local: str, dest: str) -> None:
    """Replace the folder `dest` with a copy of `local` without a reader ever loading a mix.

    Local: the copy goes beside, as `<dest>.<digest>`, and `dest` becomes a symlink to it,
    swapped by one rename (readers resolve the link once: artifacts.load_export); the previous
    version stays (a scorer may still be reading it), older ones are removed. Object stores have no
    rename: the files go over the old ones, CONTENT_FILE last, then files it does not list are
    deleted; readers check every file against CONTENT_FILE (local_copy) and refuse a mix.
    """
    if is_uri(dest):
        fs, inner = filesystem(dest)
        inner = inner.rstrip("/")
        old = set(list_files(dest)) if exists(dest) else set()
        new = list_files(local)
        for rel in sorted(new, key=lambda r: r == CONTENT_FILE):  # the listing last
            fs.create_dir(os.path.dirname(f"{inner}/{rel}"))
            pafs.copy_files(os.path.join(local, rel), f"{inner}/{rel}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        for rel in sorted(old - set(new)):
            fs.delete_file(f"{inner}/{rel}")
        return
    dest = os.path.abspath(dest).rstrip("/")
    version = f"{dest}.{export_digest(local)[:16]}"
    if not os.path.isdir(version):
        tmp = tempfile.mkdtemp(prefix=f"{os.path.basename(dest)}.tmp-", dir=os.path.dirname(dest))
        shutil.copytree(local, tmp, dirs_exist_ok=True)
        os.rename(tmp, version)
    previous = os.path.realpath(dest) if os.path.islink(dest) else None
    if os.path.isdir(dest) and not os.path.islink(dest):  # an export from before versioning
        previous = f"{dest}.legacy-{uuid.uuid4().hex[:8]}"
        os.rename(dest, previous)
    link = f"{dest}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.basename(version), link)
    os.replace(link, dest)  # atomic: readers see the old version or the new one
    keep = {version, previous}
    parent, base = os.path.dirname(dest), os.path.basename(dest)
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if name.startswith(f"{base}.") and os.path.isdir(path) and not os.path.islink(path) \
                and path not in keep and ".tmp-" not in name:
            shutil.rmtree(path, ignore_errors=True)


def cache_root() -> str:
    return os.environ.get("MLC_DIST_CACHE", os.path.join(tempfile.gettempdir(), "mlc-dist-cache"))


def local_copy(path: str) -> str:
    """A local folder with the contents of `path`: the path itself when local; for a URI, an
    immutable copy under the cache, keyed by the export's content hash and checked against it,
    made once per machine and never changed in place (a new export gets a new key)."""
    if not is_uri(path):
        return path
    listing_path = join(path, CONTENT_FILE)
    if is_file(listing_path):
        listing = read_bytes(listing_path)
        key = hashlib.sha256(listing).hexdigest()[:32]
    else:  # not written by our export: key by the listing of names and sizes
        fs, inner = filesystem(path)
        infos = fs.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=True))
        listing = None
        key = hashlib.sha256(repr(sorted((i.path, i.size) for i in infos)).encode()).hexdigest()[:32]
    target = os.path.join(cache_root(), key)
    if os.path.isdir(target):
        return target
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root())
    fs, inner = filesystem(path)
    pafs.copy_files(inner, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    if listing is not None and content_listing(tmp).encode() != listing:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{path}: files differ from its {CONTENT_FILE}; the export was changed or "
                      "is being replaced")
    try:
        os.rename(tmp, target)  # atomic; another process may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

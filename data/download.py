"""Fetch, verify and unpack the public neurite-OASIS release (Hoopes et al., HyperMorph, 2021).

::

    python -m data.download --dim 2 --out datasets/neurite-oasis-2d     # 24 MB
    python -m data.download --dim 3 --out datasets/neurite-oasis-3d     # 6.6 GB download

Steps: download (resumable over HTTP, with a progress bar) -> verify (MD5 of the release as
reported by its users, archive integrity, no unsafe paths, ``subjects.txt`` and an image for every
listed subject) -> unpack the files the loaders use (``--all-files`` for everything; in 3D this
saves about 5 GB of scanner-space volumes) -> check the unpacked layout -> print the
``data_config`` to use. ``--archive`` takes an already downloaded file; ``--url`` another
location (``file://`` works). Every failure is one line naming the file or URL and what to do.

OASIS data use: the release is OASIS-1 (Marcus et al., 2007), open access under the OASIS data
use agreement; cite OASIS and HyperMorph when you publish with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from data.labels import default_scheme
from data.oasis import SUBJECT_LIST, image_file, label_file, read_subject_list
from data.pairs import PUBLISHED_SPLITS, default_splits
from utils.errors import DataError, UserError

_BASE_URL = "https://surfer.nmr.mgh.harvard.edu/ftp/data/neurite/data/"
# The host answers the default urllib/curl user agent with a small HTML 403 page.
_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) FNOReg-data-download"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Release:
    """One archive of the neurite-OASIS v1.0 release."""
    filename: str
    md5: str          # as reported by users of the release (the host publishes no checksum)
    approx_size: str
    schemes: tuple[str, ...]

    @property
    def url(self) -> str:
        return _BASE_URL + self.filename


RELEASES = {
    2: Release("neurite-oasis.2d.v1.0.tar", "c9ae5864f250c7e4b8d83a104e51ae8e", "24 MB",
               ("seg24", "seg4")),
    3: Release("neurite-oasis.v1.0.tar", "081392a8150ff99ab7a64a9ded377835", "6.6 GB",
               ("seg35", "seg4")),
}


def _needed_names(dim: int) -> set[str]:
    """File names inside a subject folder that the loaders read."""
    return {image_file(dim)} | {label_file(dim, s) for s in RELEASES[dim].schemes}


def download(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` when the server allows it.

    Returns
    -------
    pathlib.Path
        ``dest``, complete.
    """
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if have and url.startswith(("http://", "https://")):
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # the partial file is already complete
            part.rename(dest)
            return dest
        raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}; check the URL "
                        f"or download it by hand and pass --archive") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"download of {url} failed ({reason}); check the network or download "
                        f"it by hand and pass --archive") from None
    with response:
        resumed = getattr(response, "status", 200) == 206
        mode = "ab" if resumed else "wb"
        length = response.headers.get("Content-Length")
        total = int(length) + (have if resumed else 0) if length else None
        with open(part, mode) as out, tqdm(total=total, initial=have if resumed else 0,
                                           unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise DataError(f"download of {url} stopped at {part.stat().st_size} of {total} bytes; "
                        f"run the same command again to resume")
    part.rename(dest)
    return dest


def file_digests(path: Path) -> tuple[str, str]:
    """MD5 and SHA-256 hex digests of a file, read once."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc="checksum", leave=False) as bar:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            bar.update(len(chunk))
    return md5.hexdigest(), sha.hexdigest()


def verify_checksum(path: Path, expected_md5: str | None) -> str:
    """Check the archive's MD5 (when one is expected); return its SHA-256 for the record."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip().startswith(b"<"):
        raise DataError(f"{path} is an HTML page, not an archive (the server refused the "
                        f"download); delete it and retry, or download by hand and pass --archive")
    md5, sha = file_digests(path)
    if expected_md5 and md5 != expected_md5.lower():
        raise DataError(f"{path} has MD5 {md5}, expected {expected_md5}: it is damaged, "
                        f"incomplete or another file; delete it and retry (--no-checksum skips "
                        f"this check)")
    return sha


def _safe_relative(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{archive} contains the unsafe path {name!r}; refusing to unpack it")
    return path


def inspect_archive(archive: Path, dim: int) -> tuple[list[str], dict]:
    """Check an archive's integrity and layout without unpacking it.

    Returns
    -------
    subjects : list of str
        The subject list.
    files : dict of PurePosixPath to tarfile.TarInfo
        Regular files under the folder holding ``subjects.txt``, by path relative to it (links
        and special files are left out: they are never unpacked).
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads every header: a truncated archive fails here
            lists = [m for m in members if m.isfile()
                     and _safe_relative(m.name, archive).name == SUBJECT_LIST]
            if not lists:
                raise DataError(f"{archive} has no {SUBJECT_LIST}; it is not a neurite-OASIS "
                                f"archive")
            top = min(lists, key=lambda m: len(PurePosixPath(m.name).parts))
            raw = tar.extractfile(top).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive} is not a readable tar archive ({err}); delete it and "
                        f"download again") from None
    prefix = PurePosixPath(top.name).parent
    subjects = [line.strip() for line in raw.decode("utf-8", "replace").splitlines()
                if line.strip()]
    files = {}
    for m in members:
        rel = _safe_relative(m.name, archive)
        if m.isfile() and (prefix == PurePosixPath(".") or prefix in rel.parents):
            files[rel.relative_to(prefix)] = m
    for subject in subjects:
        expected = PurePosixPath(subject) / image_file(dim)
        if expected not in files:
            raise DataError(f"{archive} lists {subject} in {SUBJECT_LIST} but has no "
                            f"{expected}; is this the {dim}D archive (--dim)?")
    return subjects, files


def unpack(archive: Path, out: Path, dim: int, all_files: bool = False) -> None:
    """Unpack the verified ``archive`` into ``out`` so that ``out/subjects.txt`` exists."""
    _, files = inspect_archive(archive, dim)
    needed = _needed_names(dim)
    with tarfile.open(archive, "r:*") as tar:
        for rel, m in tqdm(files.items(), desc="unpacking", unit="file", leave=False):
            # Top-level files (subjects.txt, the label colour tables) and the loaders' files.
            if not (all_files or len(rel.parts) == 1 or rel.name in needed):
                continue
            target = out.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            with tar.extractfile(m) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            tmp.replace(target)


def check_layout(root: Path, dim: int) -> dict:
    """Check an unpacked folder; return counts of subjects, images and label files per scheme."""
    subjects = read_subject_list(root)
    for s in subjects:
        if not (root / s / image_file(dim)).is_file():
            raise DataError(f"{root / s / image_file(dim)} is missing: {root} is incomplete or "
                            f"holds {5 - dim}D data; delete it and run the download again")
    counts = {scheme: sum((root / s / label_file(dim, scheme)).is_file() for s in subjects)
              for scheme in RELEASES[dim].schemes}
    return {"subjects": len(subjects), "labels": counts}


def suggested_config(root: Path, dim: int, n_subjects: int) -> dict:
    """The ``data_config`` for an unpacked folder (published splits when all 414 are there)."""
    cfg = {"dataset": "oasis", "root": str(root.resolve()), "label_scheme": default_scheme(dim)}
    if n_subjects < PUBLISHED_SPLITS[dim]["test"][1] + 1 and n_subjects >= 6:
        cfg["splits"] = default_splits(n_subjects)
    return cfg


def fetch(dim: int, out, url: str | None = None, archive=None, md5: str | None = None,
          check_md5: bool = True, all_files: bool = False, keep_archive: bool = False) -> dict:
    """Download (or take ``archive``), verify, unpack into ``out``; return the data_config.

    Parameters
    ----------
    dim : int
        2 or 3: which release archive.
    out : path-like
        Dataset folder to create; ``subjects.txt`` ends up directly in it.
    url : str, optional
        Where to download from (default: the public release).
    archive : path-like, optional
        An archive already on disk (no download).
    md5 : str, optional
        Expected MD5 (default: the release's, when downloading the default URL or with
        ``archive``; none for another URL).
    check_md5 : bool
        False skips the MD5 comparison (integrity and layout are still checked).
    all_files : bool
        Unpack every file, not only those the loaders read.
    keep_archive : bool
        Keep the downloaded archive in ``out/.download`` after unpacking.

    Returns
    -------
    dict
        ``data_config`` values for the unpacked dataset.
    """
    release = RELEASES[dim]
    out = Path(out).expanduser()
    if archive is not None and not Path(archive).expanduser().is_file():
        raise DataError(f"archive {Path(archive).expanduser()} does not exist")
    if (out / SUBJECT_LIST).is_file():
        counts = check_layout(out, dim)
        print(f"{out} already holds {counts['subjects']} subjects; nothing to download")
        return suggested_config(out, dim, counts["subjects"])
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)

    if md5 is None and (archive is not None or url is None):
        md5 = release.md5
    if archive is not None:
        path = Path(archive).expanduser()
    else:
        url = url or release.url
        staging = out / ".download"
        staging.mkdir(exist_ok=True)
        path = staging / (PurePosixPath(url.split("?")[0]).name or release.filename)
        if not path.is_file():
            size = f" ({release.approx_size})" if url == release.url else ""
            print(f"downloading {url}{size}")
            download(url, path)
    sha = verify_checksum(path, md5 if check_md5 else None)
    print(f"verified {path.name} (sha256 {sha})")
    unpack(path, out, dim, all_files)
    counts = check_layout(out, dim)
    if archive is None and not keep_archive:
        shutil.rmtree(out / ".download")
    labels = ", ".join(f"{n} {scheme}" for scheme, n in counts["labels"].items())
    print(f"unpacked {counts['subjects']} subjects into {out} (label maps: {labels})")
    return suggested_config(out, dim, counts["subjects"])


def main(argv=None) -> int:
    """CLI entry point; prints the data_config to put in a run config."""
    parser = argparse.ArgumentParser(
        description="Download and unpack the public neurite-OASIS release (2D 24 MB, 3D 6.6 GB).")
    parser.add_argument("--dim", type=int, choices=(2, 3), required=True)
    parser.add_argument("--out", required=True, help="dataset folder to create")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="download from this URL instead of the public release")
    source.add_argument("--archive", help="use this already downloaded archive")
    parser.add_argument("--md5", help="expected MD5 of the archive (default: the release's)")
    parser.add_argument("--no-checksum", action="store_true", help="skip the MD5 comparison")
    parser.add_argument("--all-files", action="store_true",
                        help="unpack every file (default: only those the loaders read)")
    parser.add_argument("--keep-archive", action="store_true",
                        help="keep the downloaded archive in OUT/.download")
    args = parser.parse_args(argv)
    try:
        cfg = fetch(args.dim, args.out, args.url, args.archive, args.md5, not args.no_checksum,
                    args.all_files, args.keep_archive)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("use in your run config:")
    print(f'"data_config": {json.dumps(cfg)}')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

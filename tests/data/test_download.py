"""The downloader, offline: archives the tests build themselves, fetched by file:// or path."""

import hashlib
import io
import tarfile

import pytest

from data import download
from data.dataset import load_split
from data.download import RELEASES, fetch, main
from utils.errors import DataError


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path, make_dataset):
    """A tar in the release's form: a top folder with subjects.txt and subject folders."""
    src = make_dataset(tmp_path / "src" / "neurite-oasis-2d", 2, 6)
    (src / "seg24_labels.txt").write_text("0 Unknown 0 0 0 0\n")
    (src / "SUBJ_000" / "slice_orig.nii.gz").write_bytes(b"raw image the loaders never read")
    path = tmp_path / "neurite-oasis.2d.v1.0.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(src, arcname="neurite-oasis-2d")
    return path


def _error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_release_urls_are_the_public_ones():
    assert RELEASES[2].url == ("https://surfer.nmr.mgh.harvard.edu/ftp/data/neurite/data/"
                               "neurite-oasis.2d.v1.0.tar")
    assert RELEASES[3].url.endswith("/neurite/data/neurite-oasis.v1.0.tar")
    assert all(len(r.md5) == 32 for r in RELEASES.values())


def test_fetch_by_url_unpacks_verifies_and_loads(tmp_path, archive, capsys):
    out = tmp_path / "oasis2d"
    cfg = fetch(2, out, url=archive.as_uri(), md5=_md5(archive))
    assert (out / "subjects.txt").is_file() and (out / "seg24_labels.txt").is_file()
    assert (out / "SUBJ_005" / "slice_seg4.nii.gz").is_file()
    assert not (out / "SUBJ_000" / "slice_orig.nii.gz").exists()  # not needed by the loaders
    assert not (out / ".download").exists()                        # archive removed
    assert cfg["dataset"] == "oasis" and cfg["root"] == str(out.resolve())
    assert cfg["label_scheme"] == "seg24" and cfg["splits"]["test"] == [4, 5]
    assert "unpacked 6 subjects" in capsys.readouterr().out
    split = load_split(cfg, 2, "train")
    assert split.images.shape == (2, 1, 16, 20) and bool(split.has_labels.all())
    # Running again finds the data and downloads nothing.
    assert fetch(2, out, url="file:///nonexistent.tar") == cfg


def test_fetch_local_archive_gz_and_all_files(tmp_path, archive):
    gz = tmp_path / "release.tar.gz"
    with tarfile.open(gz, "w:gz") as tar, tarfile.open(archive) as src:
        for member in src.getmembers():
            tar.addfile(member, src.extractfile(member) if member.isfile() else None)
    out = tmp_path / "all"
    fetch(2, out, archive=gz, check_md5=False, all_files=True)
    assert (out / "SUBJ_000" / "slice_orig.nii.gz").is_file()
    assert gz.is_file()  # a user's own archive is never deleted


def test_checksum_mismatch(tmp_path, archive):
    msg = _error(fetch, 2, tmp_path / "o", url=archive.as_uri(), md5="0" * 32)
    assert "MD5" in msg and _md5(archive) in msg and "0" * 32 in msg
    # The default for a local archive is the public release's checksum.
    msg = _error(fetch, 2, tmp_path / "o2", archive=archive)
    assert RELEASES[2].md5 in msg and "--no-checksum" in msg


def test_html_error_page(tmp_path):
    page = tmp_path / "neurite-oasis.2d.v1.0.tar"
    page.write_bytes(b"<!DOCTYPE HTML><html><title>403 Forbidden</title></html>")
    msg = _error(fetch, 2, tmp_path / "o", archive=page, check_md5=False)
    assert "HTML page" in msg and str(page) in msg


def _tar_with(path, files: dict):
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_bad_archives(tmp_path, archive):
    no_list = _tar_with(tmp_path / "a.tar", {"x/readme.txt": b"hi"})
    assert "has no subjects.txt" in _error(fetch, 2, tmp_path / "o1", archive=no_list,
                                           check_md5=False)
    unsafe = _tar_with(tmp_path / "b.tar", {"subjects.txt": b"A\n", "../evil.txt": b"x"})
    assert "unsafe path '../evil.txt'" in _error(fetch, 2, tmp_path / "o2", archive=unsafe,
                                                 check_md5=False)
    no_image = _tar_with(tmp_path / "c.tar", {"d/subjects.txt": b"A\nB\n",
                                              "d/A/slice_norm.nii.gz": b"x"})
    msg = _error(fetch, 2, tmp_path / "o3", archive=no_image, check_md5=False)
    assert "B/slice_norm.nii.gz" in msg and "--dim" in msg
    truncated = tmp_path / "d.tar"
    truncated.write_bytes(archive.read_bytes()[:5000])
    assert "not a readable tar archive" in _error(fetch, 2, tmp_path / "o4",
                                                  archive=truncated, check_md5=False)
    # The 2D archive given as 3D: the layout check says which file is missing.
    msg = _error(fetch, 3, tmp_path / "o5", archive=archive, check_md5=False)
    assert "aligned_norm.nii.gz" in msg


def test_failed_download(tmp_path):
    msg = _error(fetch, 2, tmp_path / "o", url=(tmp_path / "missing.tar").as_uri())
    assert "download of file://" in msg and "--archive" in msg


def test_cli(tmp_path, archive, capsys):
    out = tmp_path / "cli"
    assert main(["--dim", "2", "--out", str(out), "--archive", str(archive), "--md5",
                 _md5(archive)]) == 0
    printed = capsys.readouterr().out
    assert '"data_config": {"dataset": "oasis"' in printed and str(out.resolve()) in printed
    assert main(["--dim", "2", "--out", str(tmp_path / "x"), "--archive",
                 str(tmp_path / "none.tar")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: archive") and err.count("\n") == 1


def test_resume_of_partial_download(tmp_path, archive):
    # A .part file from an interrupted run is replaced when the server cannot resume
    # (file:// has no ranges), and the result is still verified.
    staging = tmp_path / "o" / ".download"
    staging.mkdir(parents=True)
    (staging / (archive.name + ".part")).write_bytes(b"partial")
    download.download(archive.as_uri(), staging / archive.name)
    assert _md5(staging / archive.name) == _md5(archive)

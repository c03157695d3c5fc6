"""Downloading datasets and checkpoints: resumable, verified, atomic.

One mechanism, `download_file`, and a few recipes built on it:

    fashioniq    Fashion-IQ annotations (GitHub) and product images (Amazon URL lists)
    cirr         CIRR annotations (GitHub); the NLVR2 images need a request form
    blip         the BLIP ViT-B checkpoint `model_base.pth` the model starts from
    checkpoints  the authors' released checkpoints (a 7.6 GiB zip on OneDrive)

How a download goes: bytes are written to `DEST.part`; if the connection drops, the download
is retried and continues from where it stopped with an HTTP Range request (the same happens when
a later run finds the `.part` file). When all bytes are there, the size and checksums are
verified and only then is `DEST.part` renamed to `DEST` (`os.replace`, one atomic step), so a
file under its final name is always complete. Bytes that fail verification are moved to
`DEST.corrupt` (kept for inspection, never under the final name) and `ChecksumError` is raised.

Only the standard library (`urllib`) talks to the network; `tqdm` draws progress bars.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from tqdm import tqdm

from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_open, atomic_write_json

# -----------------------------------------------------------------------------
# where things come from

FASHIONIQ_BASE_URL = "https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master"
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS = ("train", "val", "test")

CIRR_BASE_URL = "https://raw.githubusercontent.com/Cuberick-Orion/CIRR/cirr_dataset"
CIRR_SPLITS = ("train", "val", "test1")
CIRR_README = "https://github.com/Cuberick-Orion/CIRR"
NLVR2_PAGE = "https://github.com/lil-lab/nlvr/tree/master/nlvr2"

BLIP_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base.pth"

CHECKPOINTS_NAME = "candidate_rerank_ckpts.zip"  # 7.637 GiB
CHECKPOINTS_SHA1 = "a5e29b35ceae4fcb3782b8fd9228121090ddef64"
CHECKPOINTS_PAGE = "https://github.com/Cuberick-Orion/Candidate-Reranking-CIR/blob/main/DOWNLOAD.md"

DEFAULT_FASHIONIQ_ROOT = "data/fashionIQ_dataset"
DEFAULT_CIRR_ROOT = "data/cirr_dataset"
DEFAULT_MODELS_DIR = "models"

CHUNK = 1 << 20  # bytes per read/write
RETRY_WAIT = 1.0  # seconds; retry k waits k * RETRY_WAIT
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}  # statuses worth retrying
NETWORK_ERRORS = (ConnectionError, TimeoutError, URLError, http.client.HTTPException)
USER_AGENT = "cirtutor-download/0.1 (Python urllib)"


class DownloadError(CirtutorError):
    """A download failed; the message says what happened and what to do about it."""


class ChecksumError(DownloadError):
    """Downloaded bytes do not have the expected size or digest."""


class DownloadInputError(CirtutorError, ValueError):
    """A download asked for with bad input (a malformed URL, a file where a folder goes)."""


URL_SCHEMES = ("http", "https", "ftp", "file")


def check_url(url: str) -> str:
    """`url` if it names a scheme urllib can fetch and (for network schemes) a host; DownloadInputError otherwise."""
    parts = urlparse(url)
    if parts.scheme not in URL_SCHEMES or (parts.scheme != "file" and not parts.netloc):
        raise DownloadInputError(f"{url!r} is not a download URL: expected http(s)://host/path")
    return url


def check_folder(path: str | os.PathLike, option: str) -> Path:
    """`path` if it is a folder or does not exist yet; DownloadInputError if it is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DownloadInputError(f"{option} {path} is a file, not a folder: choose a folder")
    return path


# -----------------------------------------------------------------------------
# one file


def download_file(url: str, dest: str | os.PathLike, *, sha1: str | None = None,
                  sha256: str | None = None, md5: str | None = None, size: int | None = None,
                  resume: bool = True, retries: int = 3, timeout: float = 60,
                  progress: bool = True, announce: bool = True) -> Path:
    """Download `url` to `dest` and return `dest`; verify it against any checksum/size given.

    Without a checksum the length must be known (the server's Content-Length, or `size`): bytes
    of unknown completeness never take the final name. `announce`: print the file's sha256 after
    a download (`download_many` does not, for its thousands of images).

    An existing `dest` that verifies is kept ("already present"); one that does not is moved to
    `dest.corrupt` and downloaded again. `resume=False` discards an old `dest.part` first.
    A dropped connection is retried `retries` times, each retry resuming with a Range request.
    """
    dest = Path(dest)
    check_url(url)
    check_folder(dest.parent, "the destination's folder")
    expect = dict(sha1=sha1, sha256=sha256, md5=md5, size=size)
    if dest.exists():
        problem = _mismatch(dest, progress=progress, **expect)
        if problem is None:
            print(f"{dest}: already present")
            return dest
        print(f"{dest}: existing file does not verify ({problem}); moved to "
              f"{_quarantine(dest, dest)}, downloading again")
    part = _sibling(dest, ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        part.unlink(missing_ok=True)
    total = _fetch_with_retries(url, part, retries, timeout=timeout, progress=progress, label=dest.name)
    if total is None and size is None and not (sha1 or sha256 or md5):
        raise DownloadError(f"{url}: the server stated no length (no Content-Length) and no checksum was given, so "
                            f"a cut-off download cannot be told from a whole one; the {part.stat().st_size:,} bytes "
                            f"are kept in {part}. Pass the expected --sha256 (or size) to accept them")
    problem, digest = _verify(part, expect, progress)
    if problem is not None:
        corrupt = _quarantine(part, dest)
        raise ChecksumError(
            f"{dest} (from {url}) does not verify: {problem}. The bytes were moved to {corrupt}; "
            f"delete it and re-run to download again, and if it fails again check the URL "
            f"(the file on the server may have changed)")
    os.replace(part, dest)
    if announce:
        pin = "" if sha256 else "  (not pinned: pass --sha256 with this digest to verify later downloads)"
        print(f"sha256 {digest}  {dest}{pin}")
    return dest


def _fetch_with_retries(url: str, part: Path, retries: int, **fetch) -> int | None:
    """`_fetch` into `part`, retried `retries` times on a dropped connection (each retry resumes with a Range
    request); the server's stated length, or None."""
    for attempt in range(retries + 1):
        try:
            return _fetch(url, part, **fetch)
        except NETWORK_ERRORS as e:
            if attempt == retries:
                raise DownloadError(f"{url}: download failed after {retries + 1} attempt(s) "
                                    f"({e}); {_progress_note(part)}") from e
            time.sleep(RETRY_WAIT * (attempt + 1))
    return None


def _verify(path: Path, expect: dict, progress: bool) -> tuple[str | None, str]:
    """(how `path` differs from the expected size and digests, or None; its sha256), in one pass."""
    if expect.get("size") is not None and path.stat().st_size != expect["size"]:
        return f"expected {expect['size']:,} bytes, got {path.stat().st_size:,}", ""
    wanted = {name: expect[name].lower() for name in ("sha1", "sha256", "md5") if expect.get(name)}
    actual = _digests(path, sorted(set(wanted) | {"sha256"}), progress=progress)
    bad = next((name for name in wanted if actual[name] != wanted[name]), None)
    return (None if bad is None else f"expected {bad} {wanted[bad]}, got {actual[bad]}"), actual["sha256"]


def _progress_note(part: Path) -> str:
    """What a failed download leaves behind, for the error message."""
    have = part.stat().st_size if part.exists() else 0
    if not have:
        return "no bytes arrived; check the URL and your connection"
    return f"{have:,} bytes arrived and are kept in {part}; re-run the same command to resume"


def _fetch(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> int | None:
    """Write the rest of `url` into `part`, resuming with a Range request when `part` has bytes;
    return the file's whole length when the server stated it (None otherwise).

    Raises ConnectionError when the body ends early or the status is transient (caller retries),
    DownloadError for any other HTTP error.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        with e:
            if e.code == 416 and have:  # asked for bytes past the end
                if _total_size(e.headers.get("Content-Range")) == have:
                    return have  # `part` already holds the whole file
                part.unlink()  # `part` is larger than the file: stale, start over
                return _fetch(url, part, timeout=timeout, progress=progress, label=label)
            if e.code in TRANSIENT_HTTP:
                raise ConnectionError(f"HTTP {e.code} {e.reason}") from e
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    with resp:
        start = _resume_offset(resp, have, part)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as f, _bar(
                progress, total=total, initial=start, unit="B", unit_scale=True,
                unit_divisor=1024, desc=label) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed after {got:,} of {total:,} bytes")
    return total


def _resume_offset(resp, have: int, part: Path) -> int:
    """Where the response body starts: `have` on a 206 answer, 0 if the server ignored Range."""
    if resp.status != 206:
        return 0
    content_range = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes (\d+)-", content_range)
    if m is None or int(m[1]) != have:
        raise DownloadError(f"server answered 'Range: bytes={have}-' with Content-Range "
                            f"{content_range!r}; delete {part} and re-run")
    return have


def _total_size(content_range: str | None) -> int | None:
    """The total from a Content-Range header ('bytes */N' or 'bytes a-b/N'), if stated."""
    m = re.search(r"/(\d+)\s*$", content_range or "")
    return int(m[1]) if m else None


def _mismatch(path: Path, *, sha1=None, sha256=None, md5=None, size=None,
              progress: bool = True) -> str | None:
    """How `path` differs from the expected size/digests (None = not checked), or None if it matches."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"expected {size:,} bytes, got {actual_size:,}"
    expected = {name: hexdigest.lower() for name, hexdigest in
                (("sha1", sha1), ("sha256", sha256), ("md5", md5)) if hexdigest}
    if not expected:
        return None
    actual = _digests(path, list(expected), progress=progress)
    for name, want in expected.items():
        if actual[name] != want:
            return f"expected {name} {want}, got {actual[name]}"
    return None


def _digests(path: Path, algorithms: list[str], progress: bool = False) -> dict[str, str]:
    """Hex digests of `path` for each algorithm, computed in one pass over the file."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f, _bar(progress, total=path.stat().st_size, unit="B",
                                     unit_scale=True, unit_divisor=1024,
                                     desc=f"verify {path.name}") as bar:
        while chunk := f.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
            bar.update(len(chunk))
    return {name: h.hexdigest() for name, h in hashes.items()}


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, e.g. file_digest("models/model_base.pth", "sha256")."""
    return _digests(Path(path), [algorithm])[algorithm]


def _sibling(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


def _quarantine(path: Path, dest: Path) -> Path:
    """Move bad bytes at `path` to `dest.corrupt` so no bad file sits under the final name."""
    corrupt = _sibling(dest, ".corrupt")
    os.replace(path, corrupt)
    return corrupt


def _bar(progress: bool, **kwargs) -> tqdm:
    """A tqdm bar; off with progress=False, and (tqdm's disable=None) when stderr is no TTY."""
    return tqdm(disable=None if progress else True, **kwargs)


# -----------------------------------------------------------------------------
# many small files


def download_many(items, *, workers: int = 8, retries: int = 2, timeout: float = 30,
                  progress: bool = True, report: str | os.PathLike | None = None) -> dict:
    """Download (url, dest) pairs concurrently, continuing past failures.

    Files already at their dest are skipped. Returns (and, given `report`, also writes as JSON)
    {"total", "present", "downloaded", "failed": [{"url", "dest", "error"}, ...]}.
    """
    jobs = {Path(dest): url for url, dest in items}  # one job per destination
    todo = [(url, dest) for dest, url in jobs.items() if not dest.exists()]
    failed = []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(download_file, url, dest, retries=retries, timeout=timeout,
                               progress=False, announce=False): (url, dest) for url, dest in todo}
        with _bar(progress, total=len(todo), unit="file", desc="downloading") as bar:
            for future in as_completed(futures):
                url, dest = futures[future]
                try:
                    future.result()
                except (DownloadError, ValueError) as e:  # ValueError: malformed URL
                    failed.append({"url": url, "dest": str(dest), "error": str(e)})
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C, don't start queued jobs
    result = {"total": len(jobs), "present": len(jobs) - len(todo),
              "downloaded": len(todo) - len(failed),
              "failed": sorted(failed, key=lambda f: f["dest"])}
    if report is not None:
        atomic_write_json(report, result, indent=2)
    return result


# -----------------------------------------------------------------------------
# recipes


def download_fashioniq(root: str | os.PathLike = DEFAULT_FASHIONIQ_ROOT, *,
                       categories=FASHIONIQ_CATEGORIES, base_url: str = FASHIONIQ_BASE_URL,
                       images: bool = True, workers: int = 8, progress: bool = True) -> dict | None:
    """Fashion-IQ annotations and (with images=True) product images into `root`.

    Layout: ROOT/captions/cap.{cat}.{split}.json, ROOT/image_splits/split.{cat}.{split}.json,
    ROOT/image_url/asin2url.{cat}.txt and ROOT/images/<ASIN>.jpg. Many image URLs are dead
    Amazon links; they are listed in ROOT/images_report.json, which is returned (None when
    images=False). Re-running skips what is already there.
    """
    root, base = Path(root), base_url.rstrip("/")
    for cat in categories:
        for split in FASHIONIQ_SPLITS:
            for folder, name in (("captions", f"cap.{cat}.{split}.json"),
                                 ("image_splits", f"split.{cat}.{split}.json")):
                download_file(f"{base}/{folder}/{name}", root / folder / name, progress=progress)
        name = f"asin2url.{cat}.txt"
        download_file(f"{base}/image_url/{name}", root / "image_url" / name, progress=progress)
    if not images:
        return None
    items = [(url, root / "images" / f"{asin}.jpg") for cat in categories
             for asin, url in read_asin2url(root / "image_url" / f"asin2url.{cat}.txt")]
    report_path = root / "images_report.json"
    report = download_many(items, workers=workers, progress=progress, report=report_path)
    print(f"Fashion-IQ images: {report['total']:,} listed, {report['downloaded']:,} downloaded, "
          f"{report['present']:,} already present, {len(report['failed']):,} broken links "
          f"(normal: many Amazon URLs are dead); details in {report_path}")
    return report


def read_asin2url(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(ASIN, URL) pairs from a Fashion-IQ asin2url list: lines of whitespace-separated 'ASIN URL'.

    Lines without two fields, or whose ASIN is not a plain file name, are skipped.
    """
    pairs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2 and re.fullmatch(r"[\w-]+", fields[0]):
            pairs.append((fields[0], fields[1]))
    return pairs


def download_cirr(root: str | os.PathLike = DEFAULT_CIRR_ROOT, *, base_url: str = CIRR_BASE_URL,
                  progress: bool = True) -> int:
    """CIRR annotations into ROOT/cirr/captions/ and ROOT/cirr/image_splits/.

    The images (from NLVR2) cannot be downloaded automatically; this prints where to get them
    and where they go, and returns how many images the split files list that are still missing.
    """
    root, base = Path(root), base_url.rstrip("/")
    for split in CIRR_SPLITS:
        for folder, name in (("captions", f"cap.rc2.{split}.json"),
                             ("image_splits", f"split.rc2.{split}.json")):
            download_file(f"{base}/{folder}/{name}", root / "cirr" / folder / name,
                          progress=progress)
    listed = [p for split in CIRR_SPLITS for p in json.loads(
        (root / "cirr" / "image_splits" / f"split.rc2.{split}.json").read_text()).values()]
    missing = sum(not (root / p).exists() for p in listed)
    if missing:
        print(f"CIRR annotations are in {root / 'cirr'}. {missing:,} of {len(listed):,} images are "
              f"missing. CIRR uses NLVR2 images, which cannot be downloaded automatically: request "
              f"them with the NLVR2 form ({NLVR2_PAGE}; the CIRR README {CIRR_README} explains), "
              f"then place them so the paths in the split files resolve relative to {root}:\n"
              f"  {root}/train/<n>/train-*.png   (train, in NLVR2's numbered folders)\n"
              f"  {root}/dev/dev-*.png           (val)\n"
              f"  {root}/test1/test1-*.png       (test1)")
    else:
        print(f"CIRR: annotations and all {len(listed):,} images are in {root}")
    return missing


def download_blip(out: str | os.PathLike = DEFAULT_MODELS_DIR, *, url: str = BLIP_URL,
                  sha256: str | None = None, progress: bool = True) -> Path:
    """BLIP's `model_base.pth` into `out`; prints its sha256 (no checksum is published)."""
    return download_file(url, Path(out) / "model_base.pth", sha256=sha256, progress=progress)


def download_checkpoints(url: str | None = None, out: str | os.PathLike = DEFAULT_MODELS_DIR, *,
                         archive: str | os.PathLike | None = None, sha1: str = CHECKPOINTS_SHA1,
                         keep_archive: bool = True, progress: bool = True) -> list[Path]:
    """The authors' checkpoint zip: download it from `url` (or take a local `archive`), verify
    its sha1 and extract it into `out`. Returns the extracted files.

    The OneDrive link is in the authors' DOWNLOAD.md (CHECKPOINTS_PAGE); if it only opens a web
    page, download the zip in a browser and pass it as `archive`.
    """
    if (url is None) == (archive is None):
        raise ValueError("give exactly one of url and archive")
    out = Path(out)
    if archive is None:
        archive = download_file(url, out / CHECKPOINTS_NAME, sha1=sha1, progress=progress)
    else:
        archive = Path(archive)
        problem = _mismatch(archive, sha1=sha1, progress=progress)
        if problem is not None:
            raise ChecksumError(f"{archive} does not verify: {problem}. It is incomplete or a "
                                f"different file; download it again ({CHECKPOINTS_PAGE})")
    files = extract_zip(archive, out, progress=progress)
    print(f"extracted {len(files)} files from {archive.name} into {out}")
    if not keep_archive:
        archive.unlink()
    return files


def extract_zip(archive: str | os.PathLike, out: str | os.PathLike, *,
                progress: bool = True) -> list[Path]:
    """Extract `archive` into `out` and return the extracted files.

    The whole archive is refused (DownloadError, nothing written) if any member would land
    outside `out` (zip-slip: absolute names, '..'). Each file is written atomically; files
    already present with the member's size are skipped, so an interrupted extraction resumes.
    """
    out = Path(out).resolve()
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        targets = [_member_target(out, m.filename, archive) for m in members]
        with _bar(progress, total=sum(m.file_size for m in members), unit="B", unit_scale=True,
                  unit_divisor=1024, desc=f"extract {Path(archive).name}") as bar:
            for member, target in zip(members, targets):
                if not (target.exists() and target.stat().st_size == member.file_size):
                    with zf.open(member) as src, atomic_open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                bar.update(member.file_size)
    return targets


def _member_target(out: Path, name: str, archive) -> Path:
    """Where zip member `name` goes under `out`; DownloadError if that is outside `out`."""
    target = (out / name).resolve()
    if target == out or not target.is_relative_to(out):
        raise DownloadError(f"refusing to extract {archive}: member {name!r} would be written "
                            f"outside {out} (zip-slip); the archive is not the expected one")
    return target


# -----------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    parser = argparse.ArgumentParser(
        prog="cirtutor download",
        description="Download datasets and checkpoints: resumable (re-run to continue), "
                    "checksum-verified, and atomic (a final file name only ever holds a complete file).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fashioniq", parents=[common], help="Fashion-IQ annotations and images")
    p.add_argument("--root", default=DEFAULT_FASHIONIQ_ROOT, help="dataset folder (%(default)s)")
    p.add_argument("--categories", nargs="+", choices=FASHIONIQ_CATEGORIES,
                   default=list(FASHIONIQ_CATEGORIES))
    p.add_argument("--base-url", default=FASHIONIQ_BASE_URL, help="annotation base URL")
    p.add_argument("--no-images", dest="images", action="store_false",
                   help="annotations only, skip the images")
    p.add_argument("--workers", type=int, default=8, help="parallel image downloads")
    p.set_defaults(run=lambda a: download_fashioniq(
        a.root, categories=a.categories, base_url=a.base_url, images=a.images,
        workers=a.workers, progress=a.progress))

    p = sub.add_parser("cirr", parents=[common],
                       help="CIRR annotations (+ how to get the NLVR2 images)")
    p.add_argument("--root", default=DEFAULT_CIRR_ROOT, help="dataset folder (%(default)s)")
    p.add_argument("--base-url", default=CIRR_BASE_URL, help="annotation base URL")
    p.set_defaults(run=lambda a: download_cirr(a.root, base_url=a.base_url, progress=a.progress))

    p = sub.add_parser("blip", parents=[common], help="BLIP model_base.pth (ViT-B)")
    p.add_argument("--out", default=DEFAULT_MODELS_DIR, help="folder (%(default)s)")
    p.add_argument("--url", default=BLIP_URL)
    p.add_argument("--sha256", help="expected sha256 (none is published; printed after download)")
    p.set_defaults(run=lambda a: download_blip(a.out, url=a.url, sha256=a.sha256,
                                               progress=a.progress))

    p = sub.add_parser("checkpoints", parents=[common],
                       help=f"the authors' {CHECKPOINTS_NAME}, verified and extracted")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help=f"direct-download link to {CHECKPOINTS_NAME} "
                                      f"(OneDrive link in {CHECKPOINTS_PAGE})")
    source.add_argument("--archive", help="a zip you already downloaded (e.g. in a browser)")
    p.add_argument("--out", default=DEFAULT_MODELS_DIR, help="extract here (%(default)s)")
    p.add_argument("--sha1", default=CHECKPOINTS_SHA1, help="expected sha1 (%(default)s)")
    p.add_argument("--remove-archive", dest="keep_archive", action="store_false",
                   help="delete the zip after extracting")
    p.set_defaults(run=lambda a: download_checkpoints(
        a.url, a.out, archive=a.archive, sha1=a.sha1, keep_archive=a.keep_archive,
        progress=a.progress))
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    """`cirtutor download COMMAND ...`; returns the exit code (usage errors exit 2 via argparse)."""
    args = build_parser().parse_args(argv)
    try:
        for option in ("root", "out"):
            if getattr(args, option, None):
                check_folder(getattr(args, option), f"--{option}")
        for option in ("url", "base_url"):
            if getattr(args, option, None):
                check_url(getattr(args, option))
        args.run(args)
    except DownloadInputError as e:
        print(f"cirtutor download: error: {e}", file=sys.stderr)
        return 2
    except (DownloadError, zipfile.BadZipFile, OSError) as e:  # OSError: disk full, permissions
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: partial downloads are kept as *.part files; "
              "re-run the same command to resume", file=sys.stderr)
        return 130
    return 0

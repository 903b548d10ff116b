"""`sml data download`: the 12 Reasoning Teachers datasets, their splits and few-shot prompts, fetched
from their public sources into a folder laid out like the shared data folder (splits/, prompts/,
reasoning/<key>/), so a user away from that folder can run every built-in dataset.

Every file is listed in `resources/data_manifest.json` with its size, sha256 and source: a URL pinned
to a commit of the repository its authors publish it in (Kojima et al.'s zero_shot_cot, GSM8K's,
AQuA's, Reasoning Teachers' own), a `source_note` where that copy is not the first release. With
`base_url`, every file is fetched from base_url + its path instead (a mirror in the same layout).

Safe by default:
- A file under its final name is always complete and verified. Bytes go to `<file>.part`; only after
  its size and sha256 match the manifest is it renamed into place (same folder: atomic).
- Interrupted downloads resume: an existing `.part` is continued with an HTTP Range request. A server
  that ignores the Range (answers 200) is read from the start again.
- A file already present with the right checksum is not fetched again.
- A checksum mismatch is an error that names the file; a copy already under the final name stays as
  it was (it is only ever replaced by a verified one).

Only the standard library (urllib) is used.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import UserError, is_out_of_space

log = logging.getLogger("selfmotivated.data")

MANIFEST_RESOURCE = "data_manifest.json"
CHUNK = 1 << 20


class DownloadError(UserError):
    """A file could not be fetched or did not match the manifest."""


@dataclass
class DownloadConfig:
    """What `sml data download` fetches and where it puts it."""

    names: tuple[str, ...] = field(
        default=("all",), metadata={"help": "dataset keys to fetch, or 'all'", "cli": False}
    )
    to: str | None = field(
        default=None,
        metadata={"help": "folder to download into (default: the default data folder, "
                          "$SML_CACHE_DIR/data or ~/.cache/selfmotivated/data, which the loaders read "
                          "when neither --data-dir nor SML_DATA_DIR is given)"},
    )
    base_url: str | None = field(
        default=None,
        metadata={"help": "fetch every file from BASE_URL/<path in the layout> (a mirror of the data folder) "
                          "instead of its source repository"},
    )
    timeout: float = field(default=60.0, metadata={"help": "seconds to wait on a silent connection"})

    def __post_init__(self):
        if isinstance(self.names, str):
            self.names = (self.names,)
        self.names = tuple(self.names) or ("all",)
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


def load_manifest() -> dict:
    """The shipped manifest: {"files": [{"path", "size", "sha256", "url", "datasets", ...}], ...}."""
    return json.loads(resources.files("selfmotivated.resources").joinpath(MANIFEST_RESOURCE).read_text())


def default_download_dir() -> Path:
    """Where `sml data download` puts the data unless told otherwise, and where the loaders look when
    neither --data-dir nor SML_DATA_DIR is given: `<cache>/data` beside the models."""
    from ..models import cache_dir

    return cache_dir() / "data"


def dataset_names(manifest: dict | None = None) -> list[str]:
    manifest = manifest or load_manifest()
    return list(dict.fromkeys(key for f in manifest["files"] for key in f["datasets"]))


def select_files(names, manifest: dict | None = None) -> list[dict]:
    """The manifest entries the dataset keys need (their files, split and the few-shot prompts), in
    manifest order; "all" (or no name) selects every file."""
    manifest = manifest or load_manifest()
    known = dataset_names(manifest)
    names = list(names or ["all"])
    if "all" in names:
        return list(manifest["files"])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown dataset(s) {', '.join(map(repr, unknown))} to download; "
                        f"known: {', '.join(known)} (or all)")
    return [f for f in manifest["files"] if set(f["datasets"]) & set(names)]


def file_urls(entry: dict, base_url: str | None = None) -> list[str]:
    """The URLs to try for one file, in order: base_url + path for a mirror, else its source URL(s)."""
    if base_url:
        return [base_url.rstrip("/") + "/" + entry["path"]]
    return [entry["url"], *entry.get("alt_urls", [])]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, entry: dict) -> bool:
    return path.is_file() and path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} KB"


def _fetch(url: str, part: Path, entry: dict, timeout: float) -> str:
    """Fetch `url` into `part`, continuing the bytes already there when the server honours a Range
    request. Returns "resumed" or "downloaded". Never reads more than the manifest's size plus one
    byte (a larger file is a mismatch, found by the caller)."""
    have = part.stat().st_size if part.is_file() else 0
    if have > entry["size"]:  # not a prefix of the file we want
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": "selfmotivated-data-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after `have`: the .part may already be whole; the caller checks
            return "resumed"
        raise
    with response:
        code = response.getcode() or 200  # file:// URLs have no status
        content_range = response.headers.get("Content-Range", "") or ""
        resumed = bool(have) and code == 206 and content_range.startswith(f"bytes {have}-")
        if have and not resumed:
            log.info("%s: the server sent the whole file (no Range support); reading it from the start",
                     entry["path"])
            have = 0
        limit = entry["size"] + 1 - have
        with open(part, "ab" if resumed else "wb") as sink:
            while limit > 0:
                block = response.read(min(CHUNK, limit))
                if not block:
                    break
                sink.write(block)
                limit -= len(block)
            sink.flush()
            os.fsync(sink.fileno())
    return "resumed" if resumed else "downloaded"


def download_file(entry: dict, root: Path, base_url: str | None = None, timeout: float = 60.0) -> str:
    """Make `root/entry["path"]` the verified file: "present" (already right), "downloaded" or "resumed".
    Raises DownloadError naming the file when no URL gives the right bytes; the file already under its
    final name (if any) is left untouched then."""
    dest = root / entry["path"]
    if _verified(dest, entry):
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    problems = []
    for url in file_urls(entry, base_url):
        for attempt in (1, 2):
            before = part.stat().st_size if part.is_file() else 0
            try:
                how = _fetch(url, part, entry, timeout)
            except urllib.error.HTTPError as err:
                problems.append(f"HTTP {err.code} {err.reason} from {url}")
                break
            except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
                if is_out_of_space(err):
                    raise  # no network problem: the CLI says so; the bytes so far stay in .part
                problems.append(f"{url}: {getattr(err, 'reason', None) or err!r}")
                # Bytes that arrived stay in .part: a second try (or a later run) continues from them.
                if attempt == 1 and part.is_file() and part.stat().st_size > before:
                    continue
                break
            size = part.stat().st_size if part.is_file() else 0
            if size == entry["size"] and sha256_file(part) == entry["sha256"]:
                os.replace(part, dest)  # same folder: the verified file appears whole or not at all
                return how
            part.unlink(missing_ok=True)  # wrong bytes are no prefix to resume from
            if how == "resumed" and attempt == 1:
                continue  # the old .part may have been the bad part: once more from the start
            kept = f"; the copy already at {dest} is kept as it was" if dest.exists() else ""
            raise DownloadError(
                f"checksum mismatch for {entry['path']} from {url}: got {size} bytes, expected {entry['size']} "
                f"bytes with sha256 {entry['sha256'][:16]}...{kept}. The source changed or the mirror is "
                "corrupt; nothing was replaced."
            )
    raise DownloadError(f"could not fetch {entry['path']}: {'; '.join(problems)}. Rerun to continue "
                        "(a partial download is kept as .part and resumed)")


def download(config: DownloadConfig, echo: Callable[[str], None] | None = None) -> dict:
    """Fetch the files of `config.names` into `config.to` (default: `default_download_dir()`); returns
    {"folder", "datasets", "files": [{"path", "size", "status"}], "n_fetched", "n_present", "size"}.
    Every file is tried; one DownloadError at the end lists those that failed."""
    manifest = load_manifest()
    entries = select_files(config.names, manifest)
    root = Path(config.to).expanduser() if config.to else default_download_dir()
    root.mkdir(parents=True, exist_ok=True)
    echo = echo or log.info
    rows, failures = [], []
    for entry in entries:
        try:
            status = download_file(entry, root, config.base_url, config.timeout)
        except DownloadError as err:
            failures.append(str(err))
            echo(f"  {entry['path']:<52} FAILED")
            continue
        rows.append({"path": entry["path"], "size": entry["size"], "status": status})
        echo(f"  {entry['path']:<52} {_mb(entry['size']):>8}  {status}")
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise DownloadError(f"{len(failures)} of {len(entries)} files failed, into {root}: {failures[0]}{more}")
    return {
        "folder": str(root.resolve()),
        "datasets": dataset_names(manifest) if "all" in config.names else list(dict.fromkeys(config.names)),
        "files": rows,
        "n_fetched": sum(r["status"] != "present" for r in rows),
        "n_present": sum(r["status"] == "present" for r in rows),
        "size": sum(r["size"] for r in rows),
    }


def where_to_point(folder: str | Path) -> str:
    """How the loaders find `folder`: by default when it is the default folder, else by flag or variable."""
    from .builtin import DATA_DIR_ENV

    folder = Path(folder).resolve()
    env = os.environ.get(DATA_DIR_ENV)
    lines = []
    if folder == default_download_dir().resolve():
        lines.append("This is the default data folder: the loaders read it when neither --data-dir nor "
                     f"{DATA_DIR_ENV} is given.")
    else:
        lines.append(f"Point the loaders at it: --data-dir {folder}, or export {DATA_DIR_ENV}={folder}")
    if env and Path(env).expanduser().resolve() != folder:
        lines.append(f"Note: {DATA_DIR_ENV}={env} is set and is read first; unset it or export "
                     f"{DATA_DIR_ENV}={folder}")
    return "\n".join(lines)


def format_download(result: dict) -> str:
    return (f"{len(result['datasets'])} dataset(s), {len(result['files'])} files ({_mb(result['size'])}) in "
            f"{result['folder']}: {result['n_fetched']} fetched, {result['n_present']} already there.\n"
            + where_to_point(result["folder"]))

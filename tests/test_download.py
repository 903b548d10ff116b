"""`sml data download` against a local mirror: an HTTP server on 127.0.0.1 (a thread, a random port)
serving a copy of a few files of the shared data folder in its layout. No test touches the internet."""

import errno
import functools
import hashlib
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from selfmotivated.cli import main
from selfmotivated.data import DataConfig, load_examples
from selfmotivated.data.builtin import resolve_data_dir
from selfmotivated.data.common import DataError
from selfmotivated.data.download import (
    DownloadConfig,
    DownloadError,
    default_download_dir,
    download,
    load_manifest,
    select_files,
)
from selfmotivated.errors import UserError

from .conftest import SHARED_DATA

COIN_FLIP_FILES = ["reasoning/coin_flip/coin_flip.json", "splits/coin_flip.json", "prompts/few_shot_cot_prompts.json"]
BIG = "reasoning/coin_flip/coin_flip.json"  # 137 KB


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files of `directory`, honouring "Range: bytes=N-" unless the server says not to."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range") if self.server.range_support else None
        if wanted:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def mirror(tmp_path, data_dir):
    """(base URL, server, served folder): a temp copy of coin_flip's files, served over HTTP."""
    served = tmp_path / "mirror"
    for rel in COIN_FLIP_FILES:
        (served / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / rel, served / rel)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    server.requests, server.range_support = [], True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", server, served
    server.shutdown()
    server.server_close()


def _config(url, to, names=("coin_flip",)):
    return DownloadConfig(names=names, to=str(to), base_url=url, timeout=10)


def test_download_then_a_second_run_skips(mirror, tmp_path, data_dir):
    url, server, _ = mirror
    dest = tmp_path / "data"
    result = download(_config(url, dest))
    assert [r["path"] for r in result["files"]] == COIN_FLIP_FILES
    assert {r["status"] for r in result["files"]} == {"downloaded"} and result["n_fetched"] == 3
    for rel in COIN_FLIP_FILES:
        assert (dest / rel).read_bytes() == (data_dir / rel).read_bytes()
    assert not list(dest.rglob("*.part"))
    n_requests = len(server.requests)
    again = download(_config(url, dest))
    assert {r["status"] for r in again["files"]} == {"present"} and again["n_present"] == 3
    assert len(server.requests) == n_requests  # nothing was fetched again


def test_partial_download_resumes_with_a_range_request(mirror, tmp_path, data_dir):
    url, server, _ = mirror
    dest = tmp_path / "data"
    full = (data_dir / BIG).read_bytes()
    part = dest / (BIG + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:50_000])  # an earlier run stopped here
    result = download(_config(url, dest))
    status = {r["path"]: r["status"] for r in result["files"]}
    assert status[BIG] == "resumed"
    assert ("/" + BIG, "bytes=50000-") in server.requests
    assert (dest / BIG).read_bytes() == full and not part.exists()


def test_server_without_range_support_sends_it_all_again(mirror, tmp_path, data_dir):
    url, server, _ = mirror
    server.range_support = False
    dest = tmp_path / "data"
    full = (data_dir / BIG).read_bytes()
    (dest / BIG).parent.mkdir(parents=True)
    (dest / (BIG + ".part")).write_bytes(full[:50_000])
    result = download(_config(url, dest))
    assert {r["path"]: r["status"] for r in result["files"]}[BIG] == "downloaded"
    assert (dest / BIG).read_bytes() == full  # not the first 50,000 bytes twice


def test_a_bad_partial_file_is_fetched_again_from_the_start(mirror, tmp_path, data_dir):
    url, _, _ = mirror
    dest = tmp_path / "data"
    (dest / BIG).parent.mkdir(parents=True)
    (dest / (BIG + ".part")).write_bytes(b"x" * 50_000)  # no prefix of the real file
    download(_config(url, dest))
    assert (dest / BIG).read_bytes() == (data_dir / BIG).read_bytes()


def test_checksum_mismatch_names_the_file_and_keeps_the_old_copy(mirror, tmp_path, capsys):
    url, _, served = mirror
    dest = tmp_path / "data"
    (dest / BIG).parent.mkdir(parents=True)
    (dest / BIG).write_text('{"examples": []}')  # an old copy (not the manifest's bytes)
    corrupt = bytearray((served / BIG).read_bytes())
    corrupt[1000] ^= 1  # one bit flipped on the mirror: same size, other sha256
    (served / BIG).write_bytes(bytes(corrupt))

    with pytest.raises(DownloadError, match=f"checksum mismatch for {re.escape(BIG)}"):
        download(_config(url, dest))
    assert (dest / BIG).read_text() == '{"examples": []}'  # untouched
    assert not (dest / (BIG + ".part")).exists()  # wrong bytes are not kept to resume from
    assert (dest / "splits/coin_flip.json").is_file()  # the other files still came

    code = main(["data", "download", "coin_flip", "--base-url", url, "--to", str(dest)])
    err = capsys.readouterr().err
    assert code == 2 and f"checksum mismatch for {BIG}" in err and "kept" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (dest / BIG).read_text() == '{"examples": []}'


def test_missing_file_on_the_mirror_is_an_error_naming_it(mirror, tmp_path):
    url, _, served = mirror
    (served / BIG).unlink()
    with pytest.raises(DownloadError, match=f"could not fetch {re.escape(BIG)}: HTTP 404"):
        download(_config(url, tmp_path / "data"))


def test_no_server_is_a_quick_clear_error(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["data", "download", "coin_flip", "--base-url", f"http://127.0.0.1:{port}", "--to", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "could not fetch" in err and "refused" in err.lower()


def test_disk_full_keeps_the_bytes_and_a_rerun_finishes(mirror, tmp_path, data_dir, monkeypatch, capsys):
    url, server, _ = mirror
    dest = tmp_path / "data"
    import selfmotivated.data.download as dl

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl.os, "fsync", full_disk)
    code = main(["data", "download", "coin_flip", "--base-url", url, "--to", str(dest)])
    err = capsys.readouterr().err
    assert code == 2 and "out of disk space" in err and "Traceback" not in err
    assert not (dest / BIG).exists() and (dest / (BIG + ".part")).is_file()
    monkeypatch.undo()
    assert main(["data", "download", "coin_flip", "--base-url", url, "--to", str(dest)]) == 0
    assert (dest / BIG).read_bytes() == (data_dir / BIG).read_bytes()


def test_cli_says_where_and_how_to_point_the_loaders_there(mirror, tmp_path, capsys, monkeypatch):
    url, _, _ = mirror
    monkeypatch.delenv("SML_DATA_DIR", raising=False)
    dest = tmp_path / "elsewhere"
    assert main(["data", "download", "coin_flip", "--base-url", url, "--to", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"--data-dir {dest.resolve()}" in out and f"SML_DATA_DIR={dest.resolve()}" in out
    assert "3 fetched" in out


def test_default_folder_is_where_loaders_look(mirror, tmp_path, monkeypatch, capsys):
    url, _, _ = mirror
    monkeypatch.setenv("SML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SML_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="sml data download"):
        resolve_data_dir(None)
    assert main(["data", "download", "coin_flip", "--base-url", url]) == 0
    assert "default data folder" in capsys.readouterr().out
    assert resolve_data_dir(None) == default_download_dir() == tmp_path / "cache" / "data"
    test = load_examples(DataConfig(dataset="coin_flip", split="test"))
    assert len(test) == 150 and test[0].answer_type == "yes_no"
    # A dataset not fetched yet says which command fetches it.
    with pytest.raises(DataError, match="sml data download gsm8k"):
        load_examples(DataConfig(dataset="gsm8k", split="test"))


def test_names_select_their_files_and_unknown_names_are_listed():
    paths = [f["path"] for f in select_files(["gsm8k"])]
    assert paths == ["reasoning/gsm8k/train.jsonl", "reasoning/gsm8k/test.jsonl", "splits/gsm8k.json",
                     "prompts/few_shot_cot_prompts.json"]
    assert len(select_files(["all"])) == len(load_manifest()["files"]) == 28
    with pytest.raises(UserError, match="unknown dataset.*'gsm9k'.*known: .*commonsense_qa"):
        select_files(["gsm9k"])


def test_shipped_manifest_matches_the_shared_data():
    if not (SHARED_DATA / "manifest.json").is_file():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set SML_DATA_DIR): cannot check the "
                    "shipped manifest's sizes and sha256 against it")
    manifest = load_manifest()
    shared = json.loads((SHARED_DATA / "manifest.json").read_text())
    entries = {f["path"]: f for f in manifest["files"]}
    expected = {shared["prompts"]["path"]}
    for key, ds in shared["datasets"].items():
        expected |= {f["path"] for f in ds["files"] + ds.get("extra_files", [])} | {ds["split"]}
        for f in ds["files"] + ds.get("extra_files", []):
            assert entries[f["path"]]["sha256"] == f["sha256"] and entries[f["path"]]["size"] == f["bytes"]
    assert set(entries) == expected  # every file of the layout, nothing else
    for path, entry in entries.items():
        data = (SHARED_DATA / path).read_bytes()
        assert len(data) == entry["size"], path
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], path
        # Pinned to a commit of the source repository the shared manifest names.
        commit = shared["sources"][entry["source"]]["commit"] if entry["source"] in shared["sources"] else None
        assert commit and entry["commit"] == commit, path
        for u in [entry["url"], *entry.get("alt_urls", [])]:
            assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", u), u
    assert entries["prompts/few_shot_cot_prompts.json"]["sha256"] == shared["prompts"]["sha256"]
    assert manifest["total_size"] == sum(e["size"] for e in entries.values())

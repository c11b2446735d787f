"""``download`` against a hostile web: servers that lie, stall, never end or send the wrong thing.

Every case has a canary: the destination (a good file already there, where the case has one) is
fingerprinted before and compared after, and only the paths the case names may appear. The fake
web (tests/support/download_server.py, 127.0.0.1 only) misbehaves per path through ``Hostile``. Most cases
call the CLI's ``main`` in this process (a thread with a time limit, so a hang fails the case);
the ones about hangs run ``python -m kosmosg_core download`` as a subprocess with a timeout.
Timeouts are set to 1-2 s through ``KOSMOSG_DOWNLOAD_TIMEOUT``; no test's outcome depends on timing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support.download_server import ENDLESS_MAX, Hostile, serve_models
from support.hostile_harness import Canary, Outcome, assert_clear_error, run_cli

from kosmosg_core.cli import main

CKPT = "kosmos_g/checkpoint_final.pt"
SPM = "kosmos_g/sentencepiece.bpe.model"
DICT = "kosmos_g/dict.txt"
ARGS = "gill/gill_opt/model_args.json"
PRETRAINED = "gill/gill_opt/pretrained_ckpt.pth.tar"
SD15 = "checkpoints/v1-5-pruned-emaonly.safetensors"
SD15_LISTING = "/huggingface.co/api/models/stable-diffusion-v1-5/stable-diffusion-v1-5/tree/main"
HTML = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in to continue"
        + b" " * 200 + b"</body></html>\n")
FAST = {"KOSMOSG_DOWNLOAD_TIMEOUT": "2", "KOSMOSG_DOWNLOAD_ATTEMPTS": "2", "KOSMOSG_DOWNLOAD_RETRY_PAUSE": "0",
        "no_proxy": "127.0.0.1"}
IN_PROCESS_LIMIT_S = 120  # a hang fails the case instead of the suite


@pytest.fixture
def web():
    with serve_models() as served:
        yield served


@pytest.fixture(autouse=True)
def fast_and_local(monkeypatch):
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)


def download_here(capsys, model: str, dest: Path, web) -> Outcome:
    """``python -m kosmosg_core download MODEL --dest DEST --mirror WEB`` in this process."""
    result: dict[str, int] = {}
    worker = threading.Thread(target=lambda: result.update(code=main(
        ["download", model, "--dest", str(dest), "--mirror", web.url])), daemon=True)
    worker.start()
    worker.join(IN_PROCESS_LIMIT_S)
    out, err = capsys.readouterr()
    return Outcome(result.get("code"), out, err, worker.is_alive())


def download_cli(model: str, dest: Path, web, **env: str) -> Outcome:
    return run_cli(["download", model, "--dest", dest, "--mirror", web.url], env={**FAST, **env}, timeout=150)


def place(dest: Path, label: str, body: bytes) -> Path:
    path = dest / label
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def good(web, label: str) -> bytes:
    return next(files[label] for files in web.models.values() if label in files)


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def assert_ok(outcome: Outcome) -> None:
    assert not outcome.timed_out and outcome.returncode == 0, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()


# --- an existing file is never lost ------------------------------------------------------------


def test_lying_head_then_failing_get_keeps_the_existing_checkpoint(web, tmp_path):
    existing = place(tmp_path, CKPT, good(web, CKPT))
    canary = Canary(tmp_path)
    web.hostile[web.paths[CKPT]] = Hostile(head_headers={"Content-Length": "12"}, status=500)
    line = assert_clear_error(download_cli("kosmos-g", tmp_path, web), r"HTTP 500")
    assert "left as it was" in line and str(existing) in line
    canary.check()


def test_lying_head_then_stalled_get_keeps_the_existing_checkpoint(web, tmp_path, capsys):
    place(tmp_path, CKPT, good(web, CKPT))
    canary = Canary(tmp_path)
    web.hostile[web.paths[CKPT]] = Hostile(head_headers={"Content-MD5": md5_b64(b"other")}, drip=(1000, 30.0))
    assert_clear_error(download_here(capsys, "kosmos-g", tmp_path, web), r"no data for 2 s.*left as it was")
    canary.check()


def test_lying_head_then_html_get_keeps_the_existing_checkpoint(web, tmp_path, capsys):
    place(tmp_path, CKPT, good(web, CKPT))
    canary = Canary(tmp_path)
    web.hostile[web.paths[CKPT]] = Hostile(head_headers={"Content-Length": "1"}, body=HTML,
                                           headers={"Content-Type": "text/html; charset=utf-8"})
    assert_clear_error(download_here(capsys, "kosmos-g", tmp_path, web), r"HTML page.*refused.*left as it was")
    canary.check()


def test_lying_head_then_good_get_leaves_the_same_bytes(web, tmp_path, capsys):
    """A HEAD that lies only costs a download: the GET itself is what is verified."""
    place(tmp_path, CKPT, good(web, CKPT))
    place(tmp_path, SPM, good(web, SPM))
    place(tmp_path, DICT, good(web, DICT))
    canary = Canary(tmp_path)
    web.hostile[web.paths[CKPT]] = Hostile(head_headers={"Content-Length": "7", "Content-MD5": md5_b64(b"x")})
    outcome = download_here(capsys, "kosmos-g", tmp_path, web)
    assert_ok(outcome)
    assert f"downloaded: {CKPT}" in outcome.stdout and "md5 (Content-MD5)" in outcome.stdout
    canary.check()


def test_existing_file_that_verifies_is_not_downloaded_again(web, tmp_path, capsys):
    """Even when the GET would now send a web page: a verified file is left alone, no GET made."""
    place(tmp_path, SD15, good(web, SD15))
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(body=HTML, headers={"Content-Type": "text/html"})
    outcome = download_here(capsys, "sd15", tmp_path, web)
    assert_ok(outcome)
    assert f"already there: {SD15}" in outcome.stdout and not web.requests(web.paths[SD15])
    canary.check()


def test_existing_html_page_is_not_taken_for_the_file(web, tmp_path, capsys):
    """An HTML page saved by an older version under the final name is replaced, not reported."""
    place(tmp_path, CKPT, good(web, CKPT))
    place(tmp_path, DICT, good(web, DICT))
    spm = place(tmp_path, SPM, HTML)
    canary = Canary(tmp_path)
    web.hostile[web.paths[SPM]] = Hostile(head_headers={"Content-Length": None})  # the HEAD states nothing
    outcome = download_here(capsys, "kosmos-g", tmp_path, web)
    assert_ok(outcome)
    assert "HTML page" in outcome.stderr and f"downloaded: {SPM}" in outcome.stdout
    assert spm.read_bytes() == good(web, SPM)
    canary.check(allowed=(spm,))


def test_failed_download_never_deletes_an_unverified_user_file(web, tmp_path, capsys):
    """A file that does not match (the user's own SD 1.5 of the same name) is still only replaced
    by a verified download: a corrupt one leaves it in place."""
    place(tmp_path, SD15, b"\0" * 300_000)
    canary = Canary(tmp_path)
    web.corrupt(web.paths[SD15])
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"expected sha256 .*left as it was")
    canary.check()


def test_existing_path_that_is_a_fifo_is_refused_without_hanging(web, tmp_path, capsys):
    fifo = tmp_path / SD15
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    canary = Canary(tmp_path)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"not a regular file.*Nothing was changed")
    canary.check()


def test_partial_file_that_is_a_link_is_refused_and_its_target_kept(web, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"the user's notes")
    partial = tmp_path / (SD15 + ".partial")
    partial.parent.mkdir(parents=True)
    partial.symlink_to(victim)
    canary = Canary(tmp_path)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"not a regular file.*Nothing was changed")
    canary.check()


# --- web pages and other wrong content ---------------------------------------------------------


def test_html_with_200_for_a_hub_checkpoint_is_refused(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(body=HTML, headers={"Content-Type": "text/html"})
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"HTML page.*refused, nothing was saved")
    canary.check()


def test_html_labelled_binary_for_the_azure_checkpoint_is_refused(web, tmp_path, capsys):
    """The page comes with octet-stream, its own length and the real file's MD5: sniffed."""
    canary = Canary(tmp_path)
    web.hostile[web.paths[CKPT]] = Hostile(body=HTML)
    assert_clear_error(download_here(capsys, "kosmos-g", tmp_path, web), r"sent an HTML page, not the file")
    canary.check()


def test_short_html_without_any_checksum_is_refused(web, tmp_path, capsys):
    place(tmp_path, CKPT, good(web, CKPT))
    canary = Canary(tmp_path)
    web.hostile[web.paths[SPM]] = Hostile(body=b"<html>blocked</html>")
    assert_clear_error(download_here(capsys, "kosmos-g", tmp_path, web), r"HTML page")
    canary.check()


@pytest.mark.parametrize("label, body, why", [
    (PRETRAINED, b"GIF89a" + bytes(range(256)) * 4, "neither a zip nor a pickle"),
    (ARGS, b'{"opt_version": "facebook/opt-6.7b", ', "not valid JSON"),
    (SPM, b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "SentencePiece"),
    (DICT, b"\xff\xfe\x00bad" * 10, "not UTF-8"),
], ids=["pth-tar-not-pickle", "json-truncated", "spm-not-protobuf", "dict-not-utf8"])
def test_wrong_content_without_a_published_hash_is_refused(web, tmp_path, capsys, label, body, why):
    """Plain GitHub URLs publish no hash: the content is sniffed by what the file must be."""
    for before in (CKPT, SPM, ARGS):  # the files ahead of ``label`` in its model, already there
        if before != label and before.split("/")[0] == label.split("/")[0]:
            place(tmp_path, before, good(web, before))
    canary = Canary(tmp_path)
    web.hostile[web.paths[label]] = Hostile(body=body)
    model = "gill" if label.startswith("gill/") else "kosmos-g"
    assert_clear_error(download_here(capsys, model, tmp_path, web), why + r".*deleted")
    canary.check()


def test_safetensors_with_a_broken_header_is_refused(web, tmp_path, capsys):
    """A hub file whose listing the server controls: size and sha256 match the broken bytes."""
    broken = (10**9).to_bytes(8, "little") + b'{"w": 1}' + b"\0" * 1000
    web.add_hub_repo("stable-diffusion-v1-5/stable-diffusion-v1-5", {"v1-5-pruned-emaonly.safetensors": broken})
    canary = Canary(tmp_path)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"not a safetensors file")
    canary.check()


# --- bodies that never end or are longer than stated --------------------------------------------


def test_endless_body_without_length_stops_at_the_manifest_maximum(web, tmp_path):
    canary = Canary(tmp_path)
    web.hostile[web.paths[ARGS]] = Hostile(body=b'{"a": "', endless=b"x" * 65536)
    assert_clear_error(download_cli("gill", tmp_path, web), r"more than the 1048576 bytes such a file can be")
    canary.check()
    assert web.bytes_served(web.paths[ARGS]) < ENDLESS_MAX  # the client hung up; the server did not run dry


def test_endless_body_for_a_listed_file_stops_at_the_listed_size(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(endless=b"\0" * 65536)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"more than the 300000 bytes stated")
    canary.check()


def test_body_longer_than_the_listing_without_length_is_refused(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(body=good(web, SD15) + b"tail", no_length=True)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"more than the 300000 bytes stated")
    canary.check()


def test_content_length_against_the_listing_is_refused_before_reading(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(body=good(web, SD15) + b"tail")
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web),
                       r"expected 300000 bytes \(hub listing\), got 300004 \(Content-Length\)")
    canary.check()


def test_stated_size_past_the_manifest_maximum_is_refused(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[web.paths[ARGS]] = Hostile(headers={"Content-Length": str(50 << 30)})
    assert_clear_error(download_here(capsys, "gill", tmp_path, web), r"more than the 1,048,576 this file can be")
    canary.check()


def test_azure_answer_without_its_md5_is_not_that_source(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[web.paths[CKPT]] = Hostile(headers={"Content-MD5": None})
    assert_clear_error(download_here(capsys, "kosmos-g", tmp_path, web), r"states no md5")
    canary.check()


# --- hashes that do not match -------------------------------------------------------------------


def test_x_linked_etag_against_the_listing_is_refused(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    resolve = next(p for p, (loc, _) in web.redirects.items() if p.endswith("v1-5-pruned-emaonly.safetensors"))
    location, headers = web.redirects[resolve]
    web.redirects[resolve] = (location, {**headers, "X-Linked-Etag": '"' + "ab" * 32 + '"'})
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web),
                       r"sha256 .*\(hub listing\), got abab.*X-Linked-Etag")
    canary.check()


def test_wrong_content_md5_is_deleted_and_the_existing_file_kept(web, tmp_path, capsys):
    place(tmp_path, CKPT, good(web, CKPT)[:-1] + b"!")  # the user's damaged copy: not verified, not deleted
    canary = Canary(tmp_path)
    web.hostile[web.paths[CKPT]] = Hostile(headers={"Content-MD5": md5_b64(b"something else")})
    assert_clear_error(download_here(capsys, "kosmos-g", tmp_path, web), r"expected md5 .*deleted.*left as it was")
    canary.check()


# --- resuming against a server that answers ranges wrongly --------------------------------------


@pytest.mark.parametrize("content_range", ["bytes 0-299999/300000", "bytes -5-299999/300000", "bytes 1000-99/300000",
                                           "bytes 1000-299999/999999", "garbage"],
                         ids=["starts-at-0", "negative", "last-before-first", "other-total", "unparsable"])
def test_wrong_content_range_on_resume_starts_over(web, tmp_path, capsys, content_range):
    """The partial file is dropped and the whole file fetched once, without Range: it verifies."""
    body = good(web, SD15)
    partial = place(tmp_path, SD15 + ".partial", body[:1000])
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(content_range=content_range)
    outcome = download_here(capsys, "sd15", tmp_path, web)
    assert_ok(outcome)
    assert "starting over" in outcome.stderr
    assert (tmp_path / SD15).read_bytes() == body and not partial.exists()
    assert [r.headers.get("range") for r in web.requests(web.paths[SD15])] == ["bytes=1000-", None]
    canary.check(allowed=(tmp_path / SD15, partial))


def test_206_to_a_plain_request_with_a_wrong_range_is_refused(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(always_206=True, content_range="bytes 5-299999/300000")
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"Content-Range that does not fit")
    assert len(web.requests(web.paths[SD15])) == 1
    canary.check()


def test_partial_longer_than_the_listed_size_is_dropped(web, tmp_path, capsys):
    partial = place(tmp_path, SD15 + ".partial", b"\0" * 400_000)
    canary = Canary(tmp_path)
    outcome = download_here(capsys, "sd15", tmp_path, web)
    assert_ok(outcome)
    assert (tmp_path / SD15).read_bytes() == good(web, SD15) and not partial.exists()
    assert web.requests(web.paths[SD15])[0].headers.get("range") is None
    canary.check(allowed=(tmp_path / SD15, partial))


# --- servers that never answer, answer too slowly or loop ---------------------------------------


def test_server_that_never_answers_hits_the_read_timeout(web, tmp_path):
    canary = Canary(tmp_path)
    web.hostile[web.paths[ARGS]] = Hostile(stall_s=60)
    line = assert_clear_error(download_cli("gill", tmp_path, web), r"did not answer within 2 s")
    assert "tried 2 times" in line and len(web.requests(web.paths[ARGS])) == 2  # bounded retries
    canary.check()


def test_body_trickling_below_the_low_speed_limit_is_dropped(web, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KOSMOSG_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setenv("KOSMOSG_DOWNLOAD_ATTEMPTS", "1")
    partial = tmp_path / (ARGS + ".partial")
    canary = Canary(tmp_path)
    web.hostile[web.paths[ARGS]] = Hostile(drip=(4, 0.2))
    assert_clear_error(download_here(capsys, "gill", tmp_path, web), r"under 1024 bytes a second")
    canary.check(allowed=(partial, Path(f"{partial}.etag")))  # a resumable prefix may stay


def test_server_errors_are_retried_a_bounded_number_of_times(web, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KOSMOSG_DOWNLOAD_ATTEMPTS", "3")
    canary = Canary(tmp_path)
    web.hostile[web.paths[SD15]] = Hostile(status=503)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"HTTP 503.*tried 3 times")
    assert len(web.requests(web.paths[SD15])) == 3
    canary.check()


def test_redirect_loop_is_one_clear_line(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    resolve = next(p for p in web.redirects if p.endswith("v1-5-pruned-emaonly.safetensors"))
    web.redirects[resolve] = ("https://huggingface.co" + resolve.removeprefix("/huggingface.co"), {})
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"redirect loop")
    canary.check()


def test_redirect_to_a_local_file_is_refused(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    resolve = next(p for p in web.redirects if p.endswith("v1-5-pruned-emaonly.safetensors"))
    web.redirects[resolve] = ("file:///etc/passwd", {})
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"redirect")
    canary.check()


# --- hub listings that lie ----------------------------------------------------------------------


def listing_of(web, entries: list) -> None:
    web.files[SD15_LISTING].body = json.dumps(entries).encode()


@pytest.mark.parametrize("entry, why", [
    ({"type": "file", "path": "v1-5-pruned-emaonly.safetensors", "size": -5}, "no usable size"),
    ({"type": "file", "path": "v1-5-pruned-emaonly.safetensors", "size": 9,
      "lfs": {"oid": "../../etc", "size": 9}}, "no usable sha256"),
    ({"type": "file", "path": "v1-5-pruned-emaonly.safetensors", "size": 1,
      "lfs": {"oid": "ab" * 32, "size": 10**15}}, "more than the"),
], ids=["negative-size", "bad-sha256", "petabyte"])
def test_damaged_listing_entry_is_refused(web, tmp_path, capsys, entry, why):
    canary = Canary(tmp_path)
    listing_of(web, [entry])
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), why)
    canary.check()


def test_listing_names_that_leave_the_folder_are_never_fetched(web, tmp_path, capsys):
    """A CLIP listing naming ``../../evil.json`` and friends: only safe top-level names are taken."""
    dest = tmp_path / "models"
    path = "/huggingface.co/api/models/openai/clip-vit-large-patch14/tree/main"
    listing = json.loads(web.files[path].body)
    listing += [{"type": "file", "path": name, "size": 2, "oid": "0" * 40}
                for name in ("../../evil.json", "..", "/abs.json", "a\\..\\b.json", ".hidden.json", "x\nevil.json")]
    web.files[path].body = json.dumps(listing).encode()
    canary = Canary(tmp_path)
    outcome = download_here(capsys, "gill", dest, web)
    assert_ok(outcome)
    fetched = {urlsplit(e.path).path.rpartition("/resolve/main/")[2] for e in web.log if "/resolve/main/" in e.path}
    assert fetched and not fetched & {"../../evil.json", "..", "/abs.json", "a\\..\\b.json", ".hidden.json",
                                      "x\nevil.json", "evil.json", "abs.json", "b.json"}
    written = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert written == set(web.models["gill"])
    canary.check(allowed=(dest,))


def test_listing_that_is_a_web_page_is_refused(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.files[SD15_LISTING].body = HTML
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"did not return the hub's JSON file listing")
    canary.check()


def test_endless_listing_is_cut_off(web, tmp_path, capsys):
    canary = Canary(tmp_path)
    web.hostile[SD15_LISTING] = Hostile(body=b"[", endless=b'{"type": "file"},' * 4096)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"more than 33,554,432 bytes for a file listing")
    canary.check()


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_bad_timeout_setting_is_named(web, tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("KOSMOSG_DOWNLOAD_TIMEOUT", value)
    canary = Canary(tmp_path)
    assert_clear_error(download_here(capsys, "sd15", tmp_path, web), r"KOSMOSG_DOWNLOAD_TIMEOUT must be")
    canary.check()

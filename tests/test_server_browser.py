"""The web page in real headless Chromium (Debian's ``chromium``, driven by Playwright): compare
two uploaded clips, enroll from the (fake) microphone, identify that voice, list and remove.

``.ci/run`` installs ``chromium`` with apt-get on a fresh machine, so this never skips in CI."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import expect, sync_playwright

from speakerid.audio.decode import load_audio

from .serverkit import Server, clip_bytes, clips

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
A, B, MIC = clips("so0003"), clips("so0092"), clips("so0113")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("web")
    with Server(work) as s, s.client() as c:
        for name, files in (("alice", A[:2]), ("bob", B[:2])):
            r = c.post(
                f"/v1/speakers/{name}/enrollments", files=[("files", clip_bytes(p)) for p in files]
            )
            assert r.status_code == 201
        yield s, work


@pytest.fixture(scope="module")
def browser(site):
    if not Path(CHROMIUM).exists():  # CI installs it (.ci/run): a missing browser is a failure
        pytest.fail("chromium is missing: apt-get install chromium (.ci/run does it as root)")

    _, work = site
    mic = Path(work) / "clip.wav"  # what the fake microphone plays, in a loop: real speech
    speech = np.concatenate([load_audio(p).samples for p in MIC[:3]])
    buf = io.BytesIO()
    sf.write(buf, speech, 16000, subtype="PCM_16", format="WAV")
    mic.write_bytes(buf.getvalue())
    args = [
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
    ]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture
def page(site, browser):
    srv, _ = site
    context = browser.new_context()
    offsite: list[str] = []
    context.route(
        re.compile(r"^(?!http://127\.0\.0\.1)"),
        lambda route: (offsite.append(route.request.url), route.abort()),
    )
    p = context.new_page()
    p.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(srv.url + "/")
    yield p
    context.close()
    assert not errors and not offsite, (
        errors,
        offsite,
    )  # no script errors, nothing fetched elsewhere


def test_compare_two_uploaded_clips_shows_score_and_decision(site, page):
    srv, _ = site
    page.get_by_test_id("compare-file1").set_input_files(str(A[2]))
    page.get_by_test_id("compare-file2").set_input_files(str(B[2]))
    page.get_by_test_id("compare-run").click()
    score = page.get_by_test_id("compare-score")
    expect(score).to_have_text(re.compile(r"^-?\d\.\d{3}$"))
    shown = float(score.text_content())
    with srv.client() as c:
        api = c.post(
            "/v1/compare", files=[("file1", clip_bytes(A[2])), ("file2", clip_bytes(B[2]))]
        ).json()
    assert -1.0 <= shown <= 1.0 and shown == pytest.approx(api["score"], abs=5e-4)
    decision = page.get_by_test_id("compare-decision").text_content()
    assert decision.startswith("same speaker" if api["accepted"] else "different speakers")
    assert f"threshold {api['threshold']:.3f}" in decision


def record(page, button: str, info: str, seconds: float) -> float:
    page.get_by_test_id(button).click()
    expect(page.locator(f"#{info}")).to_have_text("recording…")
    page.wait_for_timeout(seconds * 1000)
    page.get_by_test_id(button).click()
    expect(page.locator(f"#{info}")).to_have_text(re.compile(r"^recorded \d+\.\d s$"))
    return float(page.locator(f"#{info}").get_attribute("data-seconds"))


def test_record_enroll_from_the_microphone_then_identify_shows_that_name(site, page):
    srv, _ = site
    page.get_by_test_id("enroll-name").fill("Mic Person")
    got = record(page, "enroll-record", "einfo", 4.5)
    assert got >= 3.5
    page.get_by_test_id("enroll-run").click()
    result = page.get_by_test_id("enroll-result")
    expect(result).to_contain_text("enrolled Mic Person: 1 new")
    # the header counts the new speaker without a reload (alice, bob and Mic Person)
    expect(page.get_by_test_id("status")).to_contain_text("3 speaker(s)")
    assert page.get_by_test_id("enroll-error").text_content() == ""
    with srv.client() as c:
        sources = [s["source"] for s in c.get("/v1/speakers/Mic Person").json()["sources"]]
    assert len(sources) == 1 and re.fullmatch(r"recording-\d+\.wav", sources[0])

    record(page, "identify-record", "iinfo", 3.0)
    page.get_by_test_id("identify-run").click()
    expect(page.get_by_test_id("identify-speaker")).to_have_text("Mic Person")
    assert "Mic Person" in page.get_by_test_id("identify-result").text_content()

    # the speakers list shows it, and removing it there removes it from the registry
    page.get_by_test_id("speakers-refresh").click()
    row = page.locator("tr[data-speaker='Mic Person']")
    row.wait_for()
    # at 1280 px every Remove button stays inside the Speakers card
    page.set_viewport_size({"width": 1280, "height": 900})
    card = page.locator("section", has=page.get_by_test_id("speakers-list")).bounding_box()
    for box in (b.bounding_box() for b in page.get_by_test_id("speaker-remove").all()):
        assert card["x"] <= box["x"] and box["x"] + box["width"] <= card["x"] + card["width"]
    page.once("dialog", lambda d: d.accept())
    row.get_by_test_id("speaker-remove").click()
    row.wait_for(state="detached")
    expect(page.get_by_test_id("status")).to_contain_text("2 speaker(s)")
    with srv.client() as c:
        assert [s["name"] for s in c.get("/v1/speakers").json()] == ["alice", "bob"]


def test_errors_show_the_servers_one_line_message(page, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    page.get_by_test_id("identify-file").set_input_files(str(bad))
    page.get_by_test_id("identify-run").click()
    expect(page.get_by_test_id("identify-error")).to_have_text(
        "notes.txt: not a readable audio file (Format not recognised.)"
    )

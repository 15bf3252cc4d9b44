"""The web page's Live tab in real headless Chromium (Debian's ``chromium``, driven by
Playwright) against a real ``speakerid serve``: the fake microphone plays Alice, a pause, then
Bob; the tab streams it through its AudioWorklet and ``GET /v1/stream`` and must show who speaks
while they speak and a timeline with both names in order, under the page's own CSP, offline.
Also the tab's one-line errors: a refused handshake (wrong key), an ``error`` event from the
server, a denied or missing microphone, a page that is not a secure context.

``.ci/run`` installs ``chromium`` with apt-get on a fresh machine, so this never skips in CI.
With ``SPEAKERID_DOCS_IMG=DIR`` the main test also saves the picture of the tab that
docs/live.md shows (``DIR/live.png``)."""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import expect, sync_playwright

from speakerid.audio.vad import speech_segments
from speakerid.service.facade import SpeakerID

from .conftest import CLIPS, TEST_MODEL, needs_asset
from .serverkit import Server

pytestmark = needs_asset
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SR = 16000
#: Two voices the real-voice asset tells apart (enrolled from clips 0 and 1, heard in 2 and 3).
VOICES = {"Alice": "so0092", "Bob": "so0111"}
FLAGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def clip_files(speaker: str) -> list[Path]:
    return sorted((CLIPS / speaker).glob("*.opus"))


def speech(speaker: str, i: int) -> np.ndarray:
    """One clip without its leading and trailing silence."""
    x, rate = sf.read(clip_files(speaker)[i], dtype="float32")
    assert rate == SR
    segs = speech_segments(x)
    return x[segs[0][0] : segs[-1][1]]


@pytest.fixture(scope="module")
def mic(tmp_path_factory) -> tuple[Path, float]:
    """What the fake microphone plays once: 0.5 s of silence, Alice (her clips 2 and 3, one
    stretch of speech), 1 s of silence, Bob (likewise), 2 s of silence; as a 16-bit PCM WAV,
    the format Chromium's fake capture device reads. Returns (path, seconds from Alice's first
    to Bob's last speech)."""
    silence = lambda s: np.zeros(int(s * SR), np.float32)  # noqa: E731
    alice, bob = (np.concatenate([speech(VOICES[n], 2), speech(VOICES[n], 3)]) for n in VOICES)
    x = np.concatenate([silence(0.5), alice, silence(1.0), bob, silence(2.0)])
    path = tmp_path_factory.mktemp("mic") / "alice-then-bob.wav"
    sf.write(path, x, SR, subtype="PCM_16", format="WAV")
    return path, (len(alice) + SR + len(bob)) / SR


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """Alice and Bob enrolled from their clips 0 and 1 with the real-voice asset."""
    db = tmp_path_factory.mktemp("reg") / "registry.db"
    with SpeakerID(db=db, model=TEST_MODEL) as sid:
        for name, speaker in VOICES.items():
            sid.enroll(name, clip_files(speaker)[:2])
    return db


def _server(work: Path, registry: Path, onnx_cache: Path) -> Server:
    shutil.copy(registry, work / registry.name)  # a registry of its own (keys close a server)
    return Server(
        work,
        db=work / registry.name,
        model=str(TEST_MODEL),
        env={"SPEAKERID_CACHE": str(onnx_cache)},
    )


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, registry, onnx_cache):
    """A server whose registry has a read key: (server, key)."""
    work = tmp_path_factory.mktemp("keyed")
    srv = _server(work, registry, onnx_cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEAKERID_HOME", str(work / "home"))
        with SpeakerID(db=srv.db) as sid:
            _, key = sid.api_keys(create=True).create("page", "read")
    with srv:
        yield srv, key


@pytest.fixture(scope="module")
def open_srv(tmp_path_factory, registry, onnx_cache):
    """An open server (loopback, no keys): the page sends no key."""
    with _server(tmp_path_factory.mktemp("open"), registry, onnx_cache) as srv:
        yield srv


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():  # CI installs it (.ci/run): a missing browser is a failure
        pytest.fail("chromium is missing: apt-get install chromium (.ci/run does it as root)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright, mic):
    fake_mic = [
        "--use-fake-ui-for-media-stream",  # microphone permission granted without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic[0]}%noloop",  # played once from each start
    ]
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS + fake_mic)
    yield b
    b.close()


#: Records every value ``live-current`` shows (text, class, final segments shown by then) and
#: every Content-Security-Policy violation.
WATCH = """() => {
  window.__shown = []; window.__csp = [];
  const cur = document.querySelector("[data-testid=live-current]");
  const segs = document.querySelector("[data-testid=live-segments]");
  const seen = () => window.__shown.push([cur.textContent, cur.className, segs.children.length]);
  new MutationObserver(seen)
    .observe(cur, { childList: true, characterData: true, subtree: true, attributes: true });
  document.addEventListener("securitypolicyviolation",
    (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
}"""
SEGMENTS = """() => [...document.querySelectorAll("[data-testid=live-segments] > *")].map((li) => ({
  speaker: li.dataset.speaker, start: +li.dataset.start, end: +li.dataset.end,
  text: li.textContent }))"""


@contextmanager
def live_tab(browser, srv: Server, key: str = "", host: str = "127.0.0.1"):
    """The page on its Live tab (reached by clicking the tab), the key typed in; afterwards: no
    script errors, no CSP violations, nothing fetched from anywhere but the server."""
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    offsite: list[str] = []
    context.route(
        re.compile(rf"^(?!(http|ws)://{re.escape(host)}:)"),
        lambda route: (offsite.append(route.request.url), route.abort()),
    )
    page = context.new_page()
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(srv.url.replace("127.0.0.1", host) + "/")
    page.evaluate(WATCH)
    expect(page.get_by_test_id("live-start")).to_be_hidden()
    page.get_by_test_id("tab-live").click()
    expect(page.get_by_test_id("live-start")).to_be_visible()
    assert page.url.endswith("/#live")
    if key:
        page.get_by_test_id("api-key").fill(key)
    yield page
    csp = page.evaluate("window.__csp")
    context.close()
    assert not errors and not offsite and not csp, (errors, offsite, csp)


def test_live_tab_names_alice_then_bob_while_they_speak(keyed, browser, mic):
    srv, key = keyed
    with live_tab(browser, srv, key) as page:
        status = page.get_by_test_id("live-status")
        current = page.get_by_test_id("live-current")
        expect(current).to_have_text("—")
        page.get_by_test_id("live-start").click()
        # the ready event: the key went through as the subprotocol bearer.KEY
        expect(status).to_have_text(
            re.compile(r"^listening: \d+ Hz to model eres2netv2-m32-so762, threshold \d\.\d{3}$")
        )
        expect(page.get_by_test_id("live-segments")).to_contain_text("Bob")
        if os.environ.get("SPEAKERID_DOCS_IMG"):
            box = page.locator("#live-tab section").bounding_box()
            page.screenshot(
                path=str(Path(os.environ["SPEAKERID_DOCS_IMG"]) / "live.png"),
                clip={"x": 0, "y": 0, "width": 1000, "height": box["y"] + box["height"] + 16},
            )
        page.get_by_test_id("live-stop").click()
        expect(status).to_have_text(
            re.compile(r"^stopped: \d+:\d\d\.\d streamed, \d+ final segment\(s\)$")
        )
        segments = page.evaluate(SEGMENTS)
        stopped = status.text_content()
        shown = page.evaluate("window.__shown")
        expect(current).to_have_text("—")
        expect(page.get_by_test_id("live-start")).to_be_enabled()
        expect(page.get_by_test_id("live-stop")).to_be_disabled()

    assert stopped.endswith(f", {len(segments)} final segment(s)")
    # one element per final segment, each showing its speaker's name; sorted, not overlapping
    for s in segments:
        assert s["speaker"] in s["text"], s
    for a, b in zip(segments, segments[1:], strict=False):
        assert a["end"] <= b["start"], segments
    # both names, Alice's turn before Bob's (part of a turn may stay unnamed or unknown-N,
    # never the other enrolled name)
    named = "".join(s["speaker"][0] for s in segments if s["speaker"] in VOICES)
    assert re.fullmatch(r"A+B+", named), segments
    # times are seconds of the stream: the page sent its AudioContext's true rate
    assert segments[-1]["end"] - segments[0]["start"] == pytest.approx(mic[1], abs=0.3), segments
    # the current name is an enrolled name, "unknown" (a voice not enrolled) or "—" (nobody);
    # it showed Bob while he spoke, before his turn's final segment came
    assert {text for text, *_ in shown} <= {"—", "unknown", *VOICES}, shown
    bob_at = next(i for i, s in enumerate(segments) if s["speaker"] == "Bob")
    live_names = [(text, n) for text, cls, n in shown if "named" in cls and "past" not in cls]
    assert any(text == "Bob" and n <= bob_at for text, n in live_names), shown
    assert any(text == "Alice" for text, _ in live_names), shown


def idle(page) -> None:
    """The tab after a failure: the microphone released, ready to start again, nothing named."""
    expect(page.get_by_test_id("live-start")).to_be_enabled()
    expect(page.get_by_test_id("live-stop")).to_be_disabled()
    expect(page.get_by_test_id("live-current")).to_have_text("—")
    assert page.get_by_test_id("live-segments").locator("> *").count() == 0
    assert page.evaluate("live.mic === null && live.ctx === null && live.ws === null")


def test_a_refused_handshake_shows_the_servers_reason(keyed, browser):
    srv, _ = keyed
    with live_tab(browser, srv, "spk_not-a-key") as page:
        page.get_by_test_id("live-start").click()
        expect(page.get_by_test_id("live-status")).to_have_text(
            "The server refused the live stream: unknown API key (revoked or mistyped)."
        )
        assert "bad" in page.get_by_test_id("live-status").get_attribute("class")
        idle(page)


def test_an_error_event_shows_its_detail(keyed, browser):
    srv, key = keyed
    with live_tab(browser, srv, key) as page:
        page.get_by_test_id("live-threshold").fill("2")
        page.get_by_test_id("live-start").click()
        expect(page.get_by_test_id("live-status")).to_have_text(
            "threshold must be a cosine in [-1, 1], got 2.0"
        )
        idle(page)


def test_an_open_server_streams_without_a_key(open_srv, browser):
    with live_tab(browser, open_srv) as page:
        status = page.get_by_test_id("live-status")
        page.get_by_test_id("live-start").click()
        expect(status).to_contain_text("listening: ")
        page.wait_for_timeout(1500)
        page.get_by_test_id("live-stop").click()
        expect(status).to_have_text(
            re.compile(r"^stopped: 0:0[1-9]\.\d streamed, \d final segment\(s\)$")
        )


@pytest.mark.parametrize(
    "flags, sentence",
    [
        (["--use-fake-device-for-media-stream"], "permission was denied"),  # no fake prompt
        ([], "this device has none"),  # no capture device at all
    ],
    ids=["denied", "missing"],
)
def test_a_microphone_that_cannot_be_used_is_one_line(open_srv, playwright, flags, sentence):
    """Without the fake permission prompt headless Chromium denies the microphone; without
    the fake device it has none."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS + flags)
    try:
        with live_tab(b, open_srv) as page:
            page.get_by_test_id("live-start").click()
            expect(page.get_by_test_id("live-status")).to_have_text(
                f"The microphone is not available: {sentence}."
            )
            idle(page)
    finally:
        b.close()


def test_an_insecure_page_says_it_needs_https(keyed, playwright):
    """Browsers give a page over plain http from another host no microphone (nor worklets)."""
    srv, key = keyed
    rules = "--host-resolver-rules=MAP speakerid.test 127.0.0.1"  # a name that is not loopback
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*FLAGS, rules])
    try:
        with live_tab(b, srv, key, host="speakerid.test") as page:
            assert page.evaluate("window.isSecureContext") is False
            page.get_by_test_id("live-start").click()
            expect(page.get_by_test_id("live-status")).to_have_text(
                "The microphone needs a secure page: open this server as https:// or on localhost."
            )
            idle(page)
    finally:
        b.close()


def test_the_worklet_is_served_from_the_page_origin_under_a_tight_policy(keyed):
    """The page's policy admits the worklet module and the WebSocket of its own origin and
    nothing else: no eval, no other host; the module is public like the page."""
    srv, _ = keyed
    with srv.client() as http:  # no key: the page and its worklet load before one is typed
        page = http.get("/")
        js = http.get("/live-worklet.js")
    policy = dict(
        d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";")
    )
    assert policy["script-src"] == "'self' 'unsafe-inline'" and "eval" not in str(policy)
    assert policy["connect-src"] == "'self'" and policy["default-src"] == "'none'"
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["x-content-type-options"] == "nosniff"
    assert 'registerProcessor("speakerid-pcm"' in js.text
    assert (
        'addModule("live-worklet.js")' in page.text
        and 'new AudioWorkletNode(live.ctx, "speakerid-pcm"' in page.text
    )

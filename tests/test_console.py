"""The browser console, served by `microturn up`'s gateway at `/`, in a real Chromium (Debian's
`chromium`, driven by Playwright; Playwright's own browser download is not reachable here):
a WAV file stands in for the microphone, and the timeline must show the user's speech, the
model's audio and turn events with their causes arriving, a turn taken and an interruption (the
fake microphone loops the file: the sentence comes again while the model speaks). A screenshot
of the console is saved with the test's output."""

import re
import shutil
import signal
import time
import wave

import numpy as np
import pytest

from cluster_helpers import up_process, wait_for_line

from cluster.local_api_key import find_api_key
from cluster.speech import synthesize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def _microphone_wav(path) -> str:
    """What the fake microphone plays, looped: a sentence, then 3 s of silence (a turn end)."""
    rate = 24_000
    voice = synthesize("Hello there, can you hear me? Tell me something about the weather.", sample_rate=rate)
    samples = np.concatenate([np.zeros(rate // 2), voice, np.zeros(3 * rate)])
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2").tobytes())
    return str(path)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium; "
                                             "`make system-packages` installs it as root)")
def test_the_console_streams_the_microphone_and_draws_the_timeline(ray_cluster, redis_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    wav = _microphone_wav(tmp_path / "mic.wav")
    with up_process(ray_cluster, MICROTURN_REDIS_URL=redis_server.url) as proc:
        lines = wait_for_line(proc, "microturn is up", timeout_s=120)
        url = re.search(r"^realtime .*: (http://\S+)$", "\n".join(lines), re.M).group(1)
        key = find_api_key()
        started = time.monotonic()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"])
            try:
                page = browser.new_page()
                page.on("console", lambda m: print("console:", m.text) if m.type == "error" else None)
                page.goto(f"{url}/#key={key}")
                expect(page.locator("h1")).to_contain_text("microturn")
                page.select_option("#turn-detection", "server_vad")
                page.click("#connect")
                expect(page.locator("#status")).to_have_text("connected", timeout=15_000)
                expect(page.locator("#timeline")).to_contain_text("microturn session", timeout=15_000)
                page.click("#mic")
                expect(page.locator("#mic")).to_have_text("Microphone off", timeout=10_000)
                timeline = page.locator("#timeline")
                expect(timeline).to_contain_text("speech started", timeout=30_000)
                expect(timeline).to_contain_text("USER_SPEECH_STARTED — cause vad", timeout=10_000)
                expect(timeline).to_contain_text("speech stopped", timeout=30_000)
                expect(timeline).to_contain_text("model audio arriving", timeout=30_000)
                expect(timeline).to_contain_text("MODEL_SPEECH_STARTED — cause threshold", timeout=10_000)
                expect(page.locator("#latencies tbody tr").first).to_be_visible(timeout=10_000)
                expect(timeline).to_contain_text("INTERRUPTED", timeout=30_000)  # the loop's sentence again
                page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
                assert (tmp_path / "console.png").stat().st_size > 10_000
                counters = page.evaluate("window.microturnConsole.counters")
                assert counters.get("audio sent (100 ms)", 0) >= 10
                assert counters.get("response.output_audio.delta", 0) >= 1
                errors = page.locator("#timeline li.error")
                assert not errors.count(), errors.all_inner_texts()
                print(f"console: model audio {time.monotonic() - started:.1f} s after the page opened; "
                      f"counters {counters}")
                # The eagerness choice reaches the server, whose session.updated echoes it back.
                eager = browser.new_page()
                eager.goto(f"{url}/#key={key}")
                eager.select_option("#turn-detection", "semantic_vad:low")
                eager.click("#connect")
                eager_timeline = eager.locator("#timeline")
                expect(eager_timeline).to_contain_text("turn detection: semantic_vad, eagerness low", timeout=15_000)
                expect(eager_timeline).to_contain_text("policy model", timeout=15_000)
            finally:
                browser.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0

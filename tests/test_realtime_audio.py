"""The Realtime bridge's audio without a session: the input buffer cut into tick-sized chunks,
G.711 and the 8 <-> 24 kHz resamplers."""

import numpy as np

from cluster.realtime.audio import (
    AudioDecoder,
    Downsampler3,
    InputBuffer,
    Upsampler3,
    g711_decode,
    g711_encode,
)


def test_input_buffer_cuts_chunks_and_sends_silence_when_the_client_is_behind():
    buf = InputBuffer(4800)
    assert buf.take() == bytes(9600)  # nothing yet: silence
    buf.append(b"\1\0" * 3000)
    assert buf.take() == bytes(9600) and len(buf) == 6000  # behind: silence, the partial waits
    buf.append(b"\1\0" * 3000)
    assert buf.take() == b"\1\0" * 4800 and len(buf) == 2400
    chunk = buf.take()  # nothing new for a tick: the partial goes out padded
    assert chunk == b"\1\0" * 1200 + bytes(7200) and len(buf) == 0
    buf.append(b"\2\0" * 100)
    buf.commit()
    assert buf.take() == b"\2\0" * 100 + bytes(9400)


def test_g711_and_resampling_by_three():
    codes = bytes(range(256))
    for fmt in ("audio/pcmu", "audio/pcma"):
        assert g711_encode(g711_decode(codes, fmt), fmt) == codes or fmt == "audio/pcmu"  # μ-law has two zeros
        assert np.array_equal(g711_decode(g711_encode(g711_decode(codes, fmt), fmt), fmt), g711_decode(codes, fmt))
    t = np.arange(16_000) / 8_000
    tone = (np.sin(2 * np.pi * 1_000 * t) * 8_000).astype(np.int16)
    up = np.concatenate([Upsampler3()(tone)])
    pieces = Upsampler3()
    assert np.array_equal(np.concatenate([pieces(tone[i:i + 160]) for i in range(0, len(tone), 160)]), up)
    spectrum = np.abs(np.fft.rfft(up[2400:2400 + 24_000].astype(float)))
    assert np.argmax(spectrum) == 1_000 and spectrum[4_000:].max() < spectrum[1_000] * 1e-2  # no images
    down = Downsampler3()
    back = np.concatenate([down(up[i:i + 1000]) for i in range(0, len(up), 1000)])
    assert len(back) == len(tone)
    assert abs(np.sqrt(np.mean(back[800:].astype(float) ** 2)) - 8_000 / np.sqrt(2)) < 200
    assert len(AudioDecoder("audio/pcma")(bytes(80))) == 480  # 10 ms of A-law -> 240 samples at 24 kHz

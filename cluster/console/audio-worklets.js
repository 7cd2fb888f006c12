// The microphone's AudioWorklet: the context's rate (44.1/48 kHz, whatever the device gives)
// -> 24 kHz mono PCM16, posted to the page every 100 ms (2400 samples) with its peak level.
// Linear interpolation after a one-pole low-pass at ~10 kHz: speech, not hi-fi.

const OUT_RATE = 24000;
const POST_SAMPLES = 2400;

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE;  // input samples per output sample
    this.pos = 0;                       // position of the next output sample, in input samples
    this.prev = 0;                      // the last (filtered) input sample of the previous block
    this.lp = 0;
    this.alpha = Math.min(1, 2 * Math.PI * 10000 / sampleRate);
    this.out = new Int16Array(POST_SAMPLES);
    this.n = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const ch = input[0];
    const filtered = new Float32Array(ch.length);
    for (let i = 0; i < ch.length; i++) {
      this.lp += this.alpha * (ch[i] - this.lp);
      filtered[i] = this.lp;
    }
    // output sample k sits at input position pos (relative to this block; -1 is `prev`)
    while (this.pos < ch.length - 1 + 1e-9) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = i < 0 ? this.prev : filtered[i];
      const b = filtered[Math.min(i + 1, ch.length - 1)];
      const v = Math.max(-1, Math.min(1, a + (b - a) * frac));
      this.peak = Math.max(this.peak, Math.abs(v));
      this.out[this.n++] = v < 0 ? v * 32768 : v * 32767;
      if (this.n === POST_SAMPLES) {
        this.port.postMessage({ pcm: this.out.buffer, peak: this.peak }, [this.out.buffer]);
        this.out = new Int16Array(POST_SAMPLES);
        this.n = 0;
        this.peak = 0;
      }
      this.pos += this.step;
    }
    this.pos -= ch.length;
    this.prev = filtered[ch.length - 1];
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);

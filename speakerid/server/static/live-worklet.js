// The Live tab's AudioWorklet: microphone samples -> little-endian int16 mono PCM chunks of
// 100 ms at the AudioContext's own rate (the page sends that rate as `sample_rate`; the server
// resamples it with a proper low-pass, so nothing is resampled here). A separate module served
// from the page's origin: the page's Content-Security-Policy allows scripts from 'self' only.
"use strict";

class PcmChunker extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.max(128, Math.round(sampleRate / 10));  // 100 ms: well under 1 s a message
    this.fresh();
    this.done = false;
    this.port.onmessage = (e) => {
      if (e.data === "flush") {  // the page stops: hand over what is left, then nothing more
        this.send();
        this.done = true;
        this.port.postMessage({ flushed: true });
      }
    };
  }

  fresh() {
    this.bytes = new ArrayBuffer(this.size * 2);
    this.view = new DataView(this.bytes);
    this.n = 0;
    this.energy = 0;
  }

  send() {
    if (!this.n) return;
    const pcm = this.bytes.slice(0, this.n * 2);
    this.port.postMessage({ pcm, rms: Math.sqrt(this.energy / this.n) }, [pcm]);
    this.fresh();
  }

  process(inputs) {
    if (this.done) return false;
    const input = inputs[0];
    if (!input || !input.length) return true;  // nothing connected yet
    const channels = input.length, frames = input[0].length;
    for (let i = 0; i < frames; i++) {
      let v = 0;
      for (let c = 0; c < channels; c++) v += input[c][i];
      v = Math.max(-1, Math.min(1, v / channels));  // a stereo microphone is mixed down to mono
      this.energy += v * v;
      this.view.setInt16(this.n * 2, v < 0 ? v * 32768 : v * 32767, true);  // little-endian
      if (++this.n === this.size) this.send();
    }
    return true;
  }
}

registerProcessor("speakerid-pcm", PcmChunker);

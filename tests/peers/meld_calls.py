#!/usr/bin/env python3
"""Spoken MELD calls for the reference ASR benchmark: whole dialogues of MELD's test split,
in order of Dialogue_ID, spoken by espeak-ng (one voice per MELD speaker of a call, all at the
same neutral prosody, so the voice says nothing about the label), one call per stream.

Dialogues are dealt to the streams in turn (the stream with the fewest lines that stays at
most 6 distinct speakers takes the next dialogue) until at least --utterances utterances are placed. Each line is
cleaned for the synthesiser only (typographic quotes and dashes, "Y'know"); the gold text kept
for scoring is MELD's own.

Writes OUT/<stream>.wav (22.05 kHz mono) and OUT/calls.json: per stream, its lines with
speaker, voice, emotion, MELD's text, dialogue and utterance ids, and where the speech really
is in the call (seconds, found from the samples).

Usage: meld_calls.py OUT --meld ../shared/data/meld [--streams 8] [--utterances 320]
"""

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "demo"))
from make_call import RATE, speech_bounds  # noqa: E402

# Eight espeak-ng voices that differ in accent, sex and pitch.
VOICES = ["en-us+m3", "en-gb+f3", "en-us+f2", "en-gb-x-rp+m1", "en-029+m7", "en-gb-scotland+f4",
          "en-us+m5", "en-gb+f1"]
MAX_SPEAKERS = 6
GAP = 1.2  # seconds between lines
DIALOGUE_GAP = 2.0


def clean(text):
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2014", ", "),
                 ("\u2026", "..."), ("\u0092", "'"), ("\u0097", ", ")):
        text = text.replace(a, b)
    return " ".join(text.split())


def say(text, voice, path):
    import subprocess
    import wave

    subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(path), text], check=True)
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def deal(dialogues, streams, need):
    """Dialogue ids per stream, in turn, until `need` utterances are placed."""
    plan = [[] for _ in range(streams)]
    names = [set() for _ in range(streams)]
    counts = [0] * streams
    for did, lines in dialogues.items():
        if sum(counts) >= need:
            break
        who = {l["Speaker"] for l in lines}
        for s in sorted(range(streams), key=lambda s: counts[s]):
            if len(names[s] | who) <= MAX_SPEAKERS:
                plan[s].append(did)
                names[s] |= who
                counts[s] += len(lines)
                break
    return plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--meld", type=Path, required=True)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--utterances", type=int, default=320)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import wave

    dialogues = {}
    with open(args.meld / "test_sent_emo.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if clean(row["Utterance"]).strip(" .,!?'\""):
                dialogues.setdefault(int(row["Dialogue_ID"]), []).append(row)
    dialogues = dict(sorted(dialogues.items()))
    calls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s, dids in enumerate(deal(dialogues, args.streams, args.utterances)):
            sid = f"meld-{s + 1}"
            voices, lines = {}, []
            pieces = [np.zeros(int(0.8 * RATE), dtype=np.float32)]
            t = len(pieces[0]) / RATE
            for did in dids:
                for row in dialogues[did]:
                    voice = voices.setdefault(row["Speaker"], VOICES[len(voices)])
                    x = say(clean(row["Utterance"]), voice, Path(tmp) / "line.wav")
                    a, b = speech_bounds(x)
                    lines.append({"speaker": row["Speaker"], "voice": voice, "emotion": row["Emotion"],
                                  "text": row["Utterance"], "dialogue": did,
                                  "utterance": int(row["Utterance_ID"]),
                                  "start": round(t + a, 3), "end": round(t + b, 3)})
                    pieces += [x, np.zeros(int(GAP * RATE), dtype=np.float32)]
                    t += (len(x) + int(GAP * RATE)) / RATE
                pieces.append(np.zeros(int(DIALOGUE_GAP * RATE), dtype=np.float32))
                t += int(DIALOGUE_GAP * RATE) / RATE
            audio = np.concatenate(pieces)
            with wave.open(str(args.out / f"{sid}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
            calls[sid] = {"media": str((args.out / f"{sid}.wav").resolve()),
                          "seconds": round(len(audio) / RATE, 3), "lines": lines}
    (args.out / "calls.json").write_text(json.dumps(calls, indent=1))
    n = sum(len(c["lines"]) for c in calls.values())
    print(f"{n} utterances in {len(calls)} calls, longest {max(c['seconds'] for c in calls.values()):.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()

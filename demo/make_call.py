#!/usr/bin/env python3
"""Make the demo's sample call: two English voices from espeak-ng speaking a short scripted
dialogue with clear emotional turns, over a video of a real face (the NASA astronaut portrait
from scikit-image's data), as an MP4 (H.264 + AAC) that summerd ingests like a recording.

Writes OUT/call.wav, OUT/call.mp4 and OUT/call.json (per line: speaker, voice, intended
emotion, text, and where the speech really is in the call, in seconds, found from the
samples). --short makes the 3-line call the end-to-end test uses. --stereo puts each speaker on
a channel of their own (the agent on 0, the customer on 1, as call-centre recordings and
SIPREC forks carry them; call.json says so under "channels"); otherwise both are on one.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave
import zipfile
from pathlib import Path

import numpy as np

# (speaker, emotion, text): the agent keeps calm, the customer turns from anger to relief.
SCRIPT = [
    ("agent", "neutral", "Hello, thank you for calling. How can I help you today?"),
    ("customer", "anger", "I have been waiting for an hour and my internet is still broken! This is ridiculous!"),
    ("agent", "sadness", "I am so sorry to hear that. I understand how frustrating this must be."),
    ("customer", "anger", "You people always say that, and nothing ever changes!"),
    ("agent", "neutral", "I can see the fault now. A technician can come tomorrow morning at nine."),
    ("customer", "joy", "Really? Tomorrow morning? That is wonderful news, thank you so much!"),
    ("agent", "joy", "You are very welcome. Have a great day!"),
]
SHORT = [
    ("agent", "neutral", "Good morning, how can I help you"),
    ("customer", "anger", "My order never arrived and I am really angry about it"),
    ("agent", "sadness", "I am so sorry, I have sent you a new one today"),
]
# espeak-ng voice and prosody per speaker and emotion: speed (wpm), pitch (0-99), amplitude.
VOICES = {"agent": "en-us+m3", "customer": "en-gb+f3"}
PROSODY = {
    "neutral": (160, 45, 100),
    "anger": (185, 70, 180),
    "sadness": (125, 25, 70),
    "joy": (175, 85, 130),
}
RATE = 22050
CHANNEL = {"agent": 0, "customer": 1}  # with --stereo
# scikit-image==0.25.2 (cp311, manylinux x86_64), only fetched when ../shared is absent.
SKIMAGE_SHA256 = "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641"
GAP = 1.2  # seconds of silence between lines


def say(text, voice, emotion, path):
    speed, pitch, amp = PROSODY[emotion]
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amp),
         "-w", str(path), text],
        check=True,
    )
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def speech_bounds(x, thresh=0.01, hop=220):
    """First and last 10 ms frame whose RMS exceeds thresh."""
    frames = [np.sqrt(np.mean(x[i:i + hop] ** 2)) for i in range(0, len(x) - hop, hop)]
    on = [i for i, e in enumerate(frames) if e > thresh]
    if not on:
        return 0.0, len(x) / RATE
    return on[0] * hop / RATE, (on[-1] + 1) * hop / RATE


def astronaut(out_dir):
    """The astronaut portrait: from $SUMMERD_ASSETS/media, else from scikit-image's wheel."""
    assets = Path(os.environ.get("SUMMERD_ASSETS", Path(__file__).resolve().parents[2] / "shared"))
    p = assets / "media" / "astronaut.png"
    if p.is_file():
        return p
    cache = Path(os.environ.get("SUMMERD_CACHE", Path.home() / ".cache" / "summerd")) / "wheels" / "scikit-image"
    cache.mkdir(parents=True, exist_ok=True)
    whl = next(cache.glob("*.whl"), None)
    if whl is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", str(cache), "scikit-image==0.25.2"], check=True)
        whl = next(cache.glob("*.whl"))
    got = hashlib.sha256(whl.read_bytes()).hexdigest()
    if got != SKIMAGE_SHA256:
        whl.unlink()
        sys.exit(f"{whl.name}: sha256 {got} is not the pinned {SKIMAGE_SHA256}; removed")
    dest = Path(out_dir) / "astronaut.png"
    with zipfile.ZipFile(whl) as z:
        dest.write_bytes(z.read("skimage/data/astronaut.png"))
    return dest


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--short", action="store_true", help="the 3-line call of the end-to-end test")
    ap.add_argument("--stereo", action="store_true", help="each speaker on a channel of their own")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    script = SHORT if args.short else SCRIPT
    channels = 2 if args.stereo else 1
    pieces = [np.zeros((int(0.8 * RATE), channels), dtype=np.float32)]
    t = len(pieces[0]) / RATE
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (who, emotion, text) in enumerate(script):
            x = say(text, VOICES[who], emotion, Path(tmp) / f"{i}.wav")
            a, b = speech_bounds(x)
            lines.append({"speaker": who, "voice": VOICES[who], "emotion": emotion, "text": text,
                          "start": round(t + a, 3), "end": round(t + b, 3)})
            placed = np.zeros((len(x), channels), dtype=np.float32)
            placed[:, CHANNEL[who] if args.stereo else 0] = x
            pieces += [placed, np.zeros((int(GAP * RATE), channels), dtype=np.float32)]
            t += (len(x) + int(GAP * RATE)) / RATE
    audio = np.concatenate(pieces)
    wav = args.out / "call.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    seconds = len(audio) / RATE
    face = astronaut(args.out)
    mp4 = args.out / "call.mp4"
    frames = int(seconds * 25) + 1
    # Each channel coded on its own: intensity and mid/side stereo would leak each voice into
    # the other's channel.
    stereo = "aac-is=false aac-ms=false" if args.stereo else ""
    pipeline = (
        f"filesrc location={face} ! pngdec ! videoconvert ! imagefreeze num-buffers={frames} ! "
        f"videoscale ! video/x-raw,width=384,height=384,framerate=25/1 ! videoconvert ! "
        f"video/x-raw,format=I420 ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=25 ! h264parse ! queue ! mux. "
        f"filesrc location={wav} ! wavparse ! audioconvert ! audioresample ! "
        f"audio/x-raw,rate=48000 ! avenc_aac {stereo} ! aacparse ! queue ! mux. "
        f"mp4mux name=mux faststart=true ! filesink location={mp4}"
    )
    gst = shutil.which("gst-launch-1.0") or "gst-launch-1.0"
    subprocess.run([gst, "-q", *pipeline.split()], check=True)
    about = {"seconds": round(seconds, 3), "media": str(mp4.resolve()), "lines": lines}
    if args.stereo:
        about["channels"] = {str(c): who for who, c in CHANNEL.items()}
    (args.out / "call.json").write_text(json.dumps(about, indent=2) + "\n")
    print(f"{mp4}: {seconds:.1f} s, {len(lines)} lines", file=sys.stderr)


if __name__ == "__main__":
    main()

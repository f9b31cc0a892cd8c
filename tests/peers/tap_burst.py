#!/usr/bin/env python3
"""An audio tap in a hurry: binds a PUB socket where the daemon's tap would be and publishes
N streams of the same speech (a WAV file, resampled to 16 kHz, repeated to --seconds) as fast
as it can, 100 ms a message, in the tap's format (INTERFACES.md, "Audio tap out"). Waits
--wait seconds for subscribers first, and --linger after, then exits.

Usage: tap_burst.py ENDPOINT WAV --streams 8 --seconds 60 [--prefix burst] [--wait 2] [--linger 2]
"""

import argparse
import json
import time
import wave

import numpy as np
import zmq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("wav")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--prefix", default="burst", help="stream ids: PREFIX-1, PREFIX-2, ...")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--wait", type=float, default=2.0)
    ap.add_argument("--linger", type=float, default=2.0)
    args = ap.parse_args()
    with wave.open(args.wav) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    t16 = np.arange(int(len(x) * 16000 / rate)) / 16000
    x = np.interp(t16, np.arange(len(x)) / rate, x)
    x = np.tile(x, int(np.ceil(args.seconds * 16000 / len(x))))[: int(args.seconds * 16000)]
    pcm = x.astype("<i2")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100000)
    pub.bind(args.endpoint)
    time.sleep(args.wait)
    chunk = 1600
    for i in range(0, len(pcm), chunk):
        for s in range(args.streams):
            sid = f"{args.prefix}-{s + 1}"
            header = {"v": 1, "stream": sid, "pts": i / 16000, "rate": 16000, "channels": 1,
                      "format": "S16LE"}
            pub.send_multipart([sid.encode(), json.dumps(header).encode(), pcm[i:i + chunk].tobytes()])
    print(f"sent {args.streams} x {len(pcm) / 16000:.0f} s", flush=True)
    time.sleep(args.linger)
    pub.close(linger=1000)
    ctx.term()


if __name__ == "__main__":
    main()

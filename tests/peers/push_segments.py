"""A pyzmq ASR-worker stand-in that sends given transcript segments: one JSON message per
line of standard input, PUSHed to ENDPOINT in order, --gap seconds apart. Prints
{"sent": N} when done.

Usage: push_segments.py ENDPOINT [--gap 0.0] < segments.jsonl
"""
import argparse
import json
import sys
import time

import zmq

ap = argparse.ArgumentParser()
ap.add_argument("endpoint")
ap.add_argument("--gap", type=float, default=0.0)
args = ap.parse_args()

ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.setsockopt(zmq.SNDTIMEO, 5000)
push.setsockopt(zmq.LINGER, 5000)
push.connect(args.endpoint)
sent = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    push.send_string(line)
    sent += 1
    if args.gap:
        time.sleep(args.gap)
push.close()
ctx.term()
print(json.dumps({"sent": sent}), flush=True)

"""A pyzmq ASR-worker stand-in: PUSH a mix of valid and malformed transcript messages.

Prints one JSON object: {"sent": N, "valid": N, "rejected": {reason: count}} so that the test
can compare the daemon's counters with what was really sent. The reasons are the daemon's
metric labels, worked out here independently from the wire contract.

Usage: push_transcripts.py ENDPOINT --total 10000 --bad 1000 [--streams a,b] [--seed 7]
       [--server-key Z85 --client-secret Z85 --client-public Z85]
"""
import argparse
import json
import random
import sys
import time

import zmq

ap = argparse.ArgumentParser()
ap.add_argument("endpoint")
ap.add_argument("--total", type=int, default=10000)
ap.add_argument("--bad", type=int, default=1000)
ap.add_argument("--streams", default="call-42,call-7")
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--max-bytes", type=int, default=65536)
ap.add_argument("--server-key")
ap.add_argument("--client-secret")
ap.add_argument("--client-public")
args = ap.parse_args()

rng = random.Random(args.seed)
streams = args.streams.split(",")
WORDS = "I have been waiting for an hour and nobody called me back this is fine thanks".split()


def valid(seq):
    # Within what a stream has played (the daemon refuses segments that start more than
    # transcripts.max_ahead, 30 s by default, beyond its newest media).
    start = round(rng.uniform(0, 20), 3)
    msg = {
        "v": 1,
        "stream": rng.choice(streams),
        "seq": seq,
        "start": start,
        "end": round(start + rng.uniform(0, 8), 3),
        "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20))),
    }
    # Optional fields in every combination, and extra fields a newer worker might send.
    if rng.random() < 0.7:
        msg["speaker"] = rng.choice(["customer", "agent", "spk0"])
    if rng.random() < 0.5:
        msg["final"] = rng.random() < 0.8
    if rng.random() < 0.3:
        msg["lang"] = "en"
    if rng.random() < 0.2:
        msg["clock"] = "media"
    if rng.random() < 0.1:
        now = time.time()
        msg["clock"] = "unix"
        msg["start"], msg["end"] = now - 3.0, now - 1.0
    if rng.random() < 0.1:
        msg["embedding"] = [rng.uniform(-1, 1) for _ in range(384)]
    if rng.random() < 0.2:
        msg["x_asr_confidence"] = rng.random()
        msg["x_words"] = [{"w": "hi", "t": 0.1}]
    if rng.random() < 0.05:
        msg["lang"] = None  # null counts as absent
    return msg


def malformed(seq):
    """Returns (frames, reason)."""
    base = valid(seq)
    kind = rng.randrange(15)
    if kind == 0:
        return [b"{not json"], "not_json"
    if kind == 1:
        return [bytes([0xFF, 0xFE]) + rng.randbytes(rng.randint(0, 64))], "invalid_utf8"
    if kind == 2:
        base["seq"] = "seventeen"
        return [json.dumps(base).encode()], "wrong_type"
    if kind == 3:
        base["clock"] = "media"
        # Reversed; far beyond the stream's media; longer than transcripts.max_segment (5 min).
        base["start"], base["end"] = rng.choice([(10.0, 5.0), (1e300, 1e301), (1.0, 400.0)])
        return [json.dumps(base).encode()], "bad_span"
    if kind == 4:
        base["text"] = "x" * (args.max_bytes + 10)
        return [json.dumps(base).encode()], "oversized"
    if kind == 5:
        base["v"] = 2
        return [json.dumps(base).encode()], "unsupported_version"
    if kind == 6:
        base["stream"] = "no-such-stream"
        return [json.dumps(base).encode()], "unknown_stream"
    if kind == 7:
        del base["text"]
        return [json.dumps(base).encode()], "missing_field"
    if kind == 8:
        return [json.dumps([base]).encode()], "not_object"
    if kind == 9:
        return [json.dumps(base).encode(), b"second frame"], "multipart"
    if kind == 10:
        base["text"] = "é" * 5001
        return [json.dumps(base, ensure_ascii=False).encode()], "text_too_long"
    if kind == 11:
        base["embedding"] = [1.0, "NaN"]
        return [json.dumps(base).encode()], "bad_embedding"
    if kind == 12:
        base["clock"], base["start"], base["end"] = "unix", 1000.0, 1001.0
        return [json.dumps(base).encode()], "stale"
    if kind == 13:
        base["clock"] = "tai"
        return [json.dumps(base).encode()], "bad_value"
    base["final"] = "yes"
    return [json.dumps(base).encode()], "wrong_type"


ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.setsockopt(zmq.LINGER, 5000)
push.setsockopt(zmq.SNDHWM, 0)
# A PUSH socket blocks on send while it has no pipe, which is what a refused CURVE handshake
# can leave it with: give up after 5 s instead of hanging.
push.setsockopt(zmq.SNDTIMEO, 5000)
if args.server_key:
    push.curve_serverkey = args.server_key.encode()
    push.curve_secretkey = args.client_secret.encode()
    push.curve_publickey = args.client_public.encode()
push.connect(args.endpoint)

bad_at = set(rng.sample(range(args.total), args.bad))
rejected = {}
n_valid = 0
sent = 0
for seq in range(args.total):
    if seq in bad_at:
        frames, reason = malformed(seq)
    else:
        frames, reason = [json.dumps(valid(seq)).encode()], None
    try:
        push.send_multipart(frames)
    except zmq.Again:
        print(f"send timed out at seq {seq} (no peer accepted the connection)", file=sys.stderr)
        break
    sent += 1
    if reason is None:
        n_valid += 1
    else:
        rejected[reason] = rejected.get(reason, 0) + 1

push.close()  # waits up to LINGER for delivery
ctx.term()
print(json.dumps({"sent": sent, "valid": n_valid, "rejected": rejected}))
sys.stdout.flush()

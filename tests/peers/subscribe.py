"""A pyzmq event consumer: SUB to ENDPOINT with PREFIX, print "subscribed" once connected,
then print each message received as one JSON line {"topic": ..., "body": ...} until
--count messages arrived or --timeout seconds passed. Exits 0 either way; the test judges.

Usage: subscribe.py ENDPOINT [--prefix lifecycle.] [--count 1] [--timeout 20]
       [--server-key Z85]
"""
import argparse
import json
import sys
import time

import zmq

ap = argparse.ArgumentParser()
ap.add_argument("endpoint")
ap.add_argument("--prefix", default="")
ap.add_argument("--count", type=int, default=1)
ap.add_argument("--timeout", type=float, default=20.0)
ap.add_argument("--server-key")
args = ap.parse_args()

ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.LINGER, 0)
if args.server_key:
    pub, sec = zmq.curve_keypair()
    sub.curve_serverkey = args.server_key.encode()
    sub.curve_publickey = pub
    sub.curve_secretkey = sec
sub.setsockopt(zmq.SUBSCRIBE, args.prefix.encode())
sub.connect(args.endpoint)
time.sleep(0.5)  # let the subscription reach the publisher (ZeroMQ's slow joiner)
print("subscribed", flush=True)

deadline = time.time() + args.timeout
got = 0
while got < args.count and time.time() < deadline:
    if sub.poll(100):
        frames = sub.recv_multipart()
        body = frames[1].decode() if len(frames) > 1 else ""
        rest = [len(f) for f in frames[2:]]
        print(json.dumps({"topic": frames[0].decode(), "body": body, "extra_frame_bytes": rest}), flush=True)
        got += 1
sub.close()
ctx.term()

"""The reference worker's side of cluster mode: segments into NATS JetStream and, optionally,
the audio tap from core NATS, behind the calls the ZeroMQ sockets take (`send_string` raising
zmq.Again when the segment was not stored, `poll` and `recv_multipart`).

- Segments go to `summerd.transcripts.<stream>` with `Nats-Msg-Id` = `<stream>:<seq>`, so one
  sent twice (the outbox offers it again after a lost acknowledgement) is stored once.
- The tap comes from `summerd.audio.<stream>` (the daemon's `cluster.audio_subjects`): the
  header JSON in the `Summerd-Tap` header, the PCM as the payload. Core NATS keeps nothing: a
  worker that is not listening misses it, as on the ZeroMQ tap.

nats-py is asyncio; its loop runs on a thread of its own and the worker's threads call in.
"""

import asyncio
import json
import queue
import threading

import zmq

TRANSCRIPTS = "summerd.transcripts"
AUDIO = "summerd.audio"


class Link:
    """One NATS connection on a background event loop."""

    def __init__(self, url, timeout=10.0):
        import nats

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self.call(nats.connect(url, max_reconnect_attempts=-1, connect_timeout=5), timeout)
        self.js = self.nc.jetstream()

    def call(self, coro, timeout):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        try:
            self.call(self.nc.drain(), 5.0)
        except Exception:  # noqa: BLE001 - closing on the way out; nothing to do about it
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5.0)


def subject_and_id(msg):
    """A segment's subject and message id, from its JSON."""
    d = json.loads(msg)
    return f"{TRANSCRIPTS}.{d['stream']}", f"{d['stream']}:{d['seq']}"


class JetStreamPush:
    """Sends segments into JetStream; a segment JetStream did not store raises zmq.Again, so
    the outbox keeps it and offers it again."""

    def __init__(self, link, timeout=2.0):
        self.link, self.timeout = link, timeout

    def send_string(self, msg, flags=0):
        subject, msg_id = subject_and_id(msg)
        publish = self.link.js.publish(subject, msg.encode(), timeout=self.timeout,
                                       headers={"Nats-Msg-Id": msg_id})
        try:
            self.link.call(publish, self.timeout + 1.0)
        except Exception as e:  # noqa: BLE001 - any failure means "not stored yet"
            raise zmq.Again() from e

    def close(self, linger=0):
        self.link.close()


def tap_parts(subject, headers, payload):
    """A tap message from NATS as the ZeroMQ tap frames it: [stream, header JSON, PCM]."""
    header = (headers or {}).get("Summerd-Tap")
    if header is None or not subject.startswith(AUDIO + "."):
        return None
    return [subject[len(AUDIO) + 1:].encode(), header.encode(), payload]


class NatsTap:
    """The tap from core NATS subjects, read like a ZeroMQ SUB socket."""

    def __init__(self, link, streams, limit=10000):
        self.link = link
        self.messages = queue.Queue(maxsize=limit)
        self.held = None
        self.dropped = 0

        async def take(m):
            parts = tap_parts(m.subject, m.headers, m.data)
            if parts is None:
                return
            try:
                self.messages.put_nowait(parts)
            except queue.Full:
                self.dropped += 1

        for s in streams or [">"]:
            link.call(link.nc.subscribe(f"{AUDIO}.{s}", cb=take), 5.0)

    def poll(self, timeout_ms):
        if self.held is None:
            try:
                self.held = self.messages.get(timeout=timeout_ms / 1000.0)
            except queue.Empty:
                return 0
        return 1

    def recv_multipart(self):
        parts, self.held = self.held, None
        return parts if parts is not None else self.messages.get()

    def close(self):
        pass

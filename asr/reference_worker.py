#!/usr/bin/env python3
"""summerd's reference ASR worker: Whisper on the CPU, with speaker labels.

It subscribes to the daemon's audio tap (ZeroMQ SUB: [stream, header JSON, S16LE PCM] at
16 kHz), finds speech per stream with silero-vad (segmenter.py), transcribes each speech
segment with Whisper tiny.en on CTranslate2 (recogniser.py), labels its speaker by online
clustering of d-vectors (speakers.py), and PUSHes one final transcript segment per speech
segment to the daemon, on the media clock of the tap (INTERFACES.md, "Transcripts in").

One process serves every stream on the tap. The tap is read and segmented on the main thread
(silero-vad is cheap); segments wait in a bounded queue for the recogniser thread, which takes
up to --batch of them at a time and decodes them as one batch. When the queue grows past a
batch the recogniser decodes greedily (beam 1) until it has caught up; when it is full
(--max-pending segments), the oldest waiting segment is sent without text (the daemon still
reads its voice) and counted. Segments the daemon does not take are kept (at most --max-outbox)
and offered again with growing back-off, in order. Memory is therefore bounded by
--max-pending x --max-segment-s of audio, whatever the tap sends; a stream silent for
--forget-after-s loses its VAD state and speakers (its segment numbers go on).

A stream whose channels the daemon maps to speakers (its tap header names them, one per
interleaved channel) is segmented per channel, and each segment carries its channel's speaker.
Otherwise, with --speaker LABEL every segment carries that label (a stream that is one
speaker); without it each stream's voices become spk1, spk2, ... in order of first appearance.

In cluster mode (--nats URL) segments go into NATS JetStream instead
(`summerd.transcripts.<stream>`, nats_link.py), on the unix clock (a stream that moves to
another node starts a new media timeline there), numbered by their start in unix
milliseconds (times 64, plus the channel), so that the worker beside the next owner never
reuses a number. The tap is the node's own ZeroMQ tap, or with --tap-nats the core NATS
subjects `summerd.audio.<stream>`.

Usage:
  reference_worker.py [--tap tcp://127.0.0.1:5557] [--transcripts tcp://127.0.0.1:5555]
                      [--stream ID ...] [--speaker LABEL] [--exit-after-idle SECONDS]
                      [--nats nats://127.0.0.1:4222 [--tap-nats]]
"""

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

RATE = 16000
ROOT = Path(__file__).resolve().parent.parent
WHISPER_DIR = ROOT / "models/third_party/whisper-tiny-en"
EMBEDDER = ROOT / "models/third_party/voice-embedder/embedder.int8.onnx"
STREAM_IDLE_S = 1.0  # a stream whose audio stopped this long ago ends its segment in progress
MAX_STREAMS = 100_000  # streams whose segment numbers are remembered (least recent forgotten)
MAX_PTS = 1e9  # seconds (31 years): beyond, a 32 ms step no longer moves a float's time
MAX_SKIPPED = 4096  # overflowed segments (d-vector and times, about 1.3 kB each) awaiting sending


def log(msg):
    print(f"[asr] {msg}", file=sys.stderr, flush=True)


class Job:
    """One speech segment on its way to the daemon."""

    __slots__ = ("stream", "start", "end", "samples", "seconds", "vector", "cut_at", "text", "speaker",
                 "seq", "unix_offset", "channel")

    def __init__(self, stream, start, end, samples, speaker=None):
        self.stream, self.start, self.end, self.samples = stream, start, end, samples
        self.seconds = len(samples) / RATE
        self.vector = None  # the speaker d-vector, where taken before the audio was let go
        self.cut_at = time.time()
        self.text = None
        self.speaker = speaker  # set here when the segment came from a speaker's own channel
        self.seq = None
        self.unix_offset = None  # unix time minus media time of its stream, when it was cut
        self.channel = 0


class Pending:
    """The bounded queue between the tap thread and the recogniser."""

    def __init__(self, limit, embed=None):
        self.limit = limit
        self.embed = embed
        self.jobs = collections.deque()
        self.skipped = collections.deque()  # overflowed jobs: sent without text, audio released
        self.cond = threading.Condition()
        self.closed = False
        self.overflowed = 0
        self.lost = 0

    def put(self, job):
        with self.cond:
            self.jobs.append(job)
            while len(self.jobs) > self.limit:
                old = self.jobs.popleft()
                # Its voice is kept as a d-vector (1 kB), its audio let go. Under the lock: the
                # recogniser must not take a newer job before this one is in `skipped`.
                if self.embed is not None and old.seconds > 0.2:
                    old.vector = self.embed(old.samples)
                old.samples, old.text = None, ""
                self.skipped.append(old)
                self.overflowed += 1
            while len(self.skipped) > MAX_SKIPPED:
                self.skipped.popleft()
                self.lost += 1
            self.cond.notify()

    def take(self, batch, timeout):
        """Up to `batch` jobs in arrival order (overflowed ones first), and the backlog left."""
        with self.cond:
            if not self.jobs and not self.skipped and not self.closed:
                self.cond.wait(timeout)
            out = list(self.skipped)
            self.skipped.clear()
            out += [self.jobs.popleft() for _ in range(min(batch, len(self.jobs)))]
            return out, len(self.jobs)

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify()

    def done(self):
        with self.cond:
            return self.closed and not self.jobs and not self.skipped


class Outbox:
    """Segments for the daemon, in order; held and offered again while it does not take them."""

    def __init__(self, push, limit):
        self.push, self.limit = push, limit
        self.queue = collections.deque()
        self.retry_at, self.backoff = 0.0, 0.05
        self.dropped = 0

    def add(self, msg):
        self.queue.append(msg)
        while len(self.queue) > self.limit:
            self.queue.popleft()
            self.dropped += 1
            log(f"the daemon has not taken transcripts for a while; {self.dropped} segments dropped")

    def flush(self):
        if not self.queue or time.monotonic() < self.retry_at:
            return
        while self.queue:
            try:
                self.push.send_string(self.queue[0], zmq.NOBLOCK)
            except zmq.Again:
                self.retry_at = time.monotonic() + self.backoff
                self.backoff = min(self.backoff * 2, 2.0)
                return
            self.queue.popleft()
            self.backoff = 0.05


def speaker_of(job, clusters, embed):
    """The job's speaker label in its stream's `clusters` (a segment under 0.2 s takes the
    stream's latest label)."""
    if job.seconds <= 0.2:
        return clusters.labels[-1] if clusters.labels else "spk1"
    vector = job.vector if job.vector is not None else embed(job.samples)
    return clusters.assign(vector, job.seconds)


def recogniser_loop(args, pending, recognise, embed, push, journal):
    """The recogniser thread: text, speaker and the message for each job, in order."""
    from speakers import Speakers

    outbox = Outbox(push, args.max_outbox)
    speakers, used, seqs = {}, {}, collections.OrderedDict()
    busy, pruned, total = 0.0, time.monotonic(), 0
    while True:
        jobs, backlog = pending.take(args.batch, 0.1)
        if time.monotonic() - pruned > 10.0:
            pruned = forget_idle(speakers, used, args.forget_after_s)
        if not jobs:
            outbox.flush()
            if pending.done():
                break
            continue
        t0 = time.monotonic()
        todo = [j for j in jobs if j.text is None and j.seconds > 0]
        beam = args.beam if backlog <= args.batch else 1
        for j, text in zip(todo, recognise([j.samples for j in todo], beam)):
            j.text = text
        for j in jobs:
            j.text = j.text or ""
            if j.speaker is not None:
                pass  # its channel's speaker
            elif args.speaker:
                j.speaker = args.speaker
            else:
                clusters = speakers.setdefault(
                    j.stream, Speakers(args.speaker_threshold, args.max_speakers, args.min_enrol_s)
                )
                j.speaker = speaker_of(j, clusters, embed)
            used[j.stream] = time.monotonic()
            total += 1
            if args.nats:
                msg = unix_segment(j)
            else:
                j.seq = seqs[j.stream] = seqs.pop(j.stream, 0) + 1
                while len(seqs) > MAX_STREAMS:
                    seqs.popitem(last=False)
                msg = {"v": 1, "stream": j.stream, "seq": j.seq, "start": round(j.start, 3),
                       "end": round(j.end, 3), "speaker": j.speaker, "text": j.text,
                       "final": True, "lang": "en", "clock": "media"}
            outbox.add(json.dumps(msg))
            j.samples = None
        outbox.flush()
        busy += time.monotonic() - t0
        now = time.time()
        for j in jobs:
            log(f"{j.stream} #{j.seq} {j.speaker} [{j.start:.2f}, {j.end:.2f}] {j.text!r}")
            if journal:
                journal.write(json.dumps({"stream": j.stream, "seq": j.seq, "start": j.start,
                                          "end": j.end, "speaker": j.speaker, "text": j.text,
                                          "cut": j.cut_at, "sent": now, "beam": beam}) + "\n")
                journal.flush()
    deadline = time.monotonic() + 5.0
    while outbox.queue and time.monotonic() < deadline:
        time.sleep(0.05)
        outbox.flush()
    log(f"done: {total} segments, {pending.overflowed} sent without text (queue full), "
        f"{pending.lost} lost (queue full while the recogniser was stuck), "
        f"{outbox.dropped} dropped (daemon not taking), {len(outbox.queue)} unsent; recogniser busy {busy:.1f} s")


def unix_segment(j):
    """A job as a cluster-mode segment: unix clock, numbered by its start in unix milliseconds
    times 64 plus its channel (unique per stream whichever worker cuts it)."""
    start, end = j.start + j.unix_offset, j.end + j.unix_offset
    j.seq = int(round(start * 1000)) * 64 + j.channel
    return {"v": 1, "stream": j.stream, "seq": j.seq, "start": round(start, 3),
            "end": round(end, 3), "speaker": j.speaker, "text": j.text,
            "final": True, "lang": "en", "clock": "unix"}


def forget_idle(state, last_used, after_s):
    """Drop the per-stream `state` of streams unused for `after_s` seconds; the time now."""
    now = time.monotonic()
    for sid in [sid for sid, t in last_used.items() if now - t > after_s]:
        state.pop(sid, None)
        del last_used[sid]
    return now


def channel_speakers(header):
    """[None] for a mono tap; a speaker label per channel for a tap with a channel map (its
    `speakers`); [] when the header says neither properly."""
    channels, speakers = header.get("channels", 1), header.get("speakers")
    if speakers is None:
        return [None] if channels == 1 else []
    if (isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 64
            or not isinstance(speakers, list) or len(speakers) != channels
            or not all(isinstance(s, str) and 0 < len(s) <= 128 for s in speakers)
            or len(set(speakers)) != len(speakers)):
        return []
    return speakers


def tap_header(parts, refused):
    """The tap message's header if this worker can read its audio, else None (a line the first
    time a stream's audio is refused, with the reason)."""
    try:
        header = json.loads(parts[1])
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        return None
    sid, pts = header.get("stream"), header.get("pts")
    why = None
    if header.get("v") != 1 or header.get("rate") != RATE or header.get("format") != "S16LE":
        why = "not version 1, 16 kHz S16LE"
    elif not channel_speakers(header):
        why = f"{header.get('channels')!r} channels without a speaker for each"
    elif not isinstance(sid, str) or not sid:
        why = "no stream id"
    elif isinstance(pts, bool) or not isinstance(pts, (int, float)) or not 0 <= pts < MAX_PTS:
        why = f"no media time in [0, {MAX_PTS:g}) s"
    elif len(parts[2]) % (2 * len(channel_speakers(header))):
        why = "PCM length not a whole number of frames"
    if why is None:
        return header
    key = (sid if isinstance(sid, str) else "?", why)
    if key not in refused and len(refused) < 1000:
        refused.add(key)
        log(f"tap audio of stream {key[0]!r} ignored: {why}")
    return None


def load_models(args):
    """The three models, or a clear error and exit status 2."""
    from recogniser import ModelError, Recogniser
    from speakers import Embedder

    from segmenter import Vad

    try:
        recognise = Recogniser(args.whisper, threads=args.threads, beam=args.beam)
        embed = None if args.speaker else Embedder(args.embedder)
        vad = Vad()
    except (ModelError, FileNotFoundError, ValueError) as e:
        log(f"error: {e}")
        sys.exit(2)
    return recognise, embed, vad


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tap", default="tcp://127.0.0.1:5557")
    ap.add_argument("--transcripts", default="tcp://127.0.0.1:5555")
    ap.add_argument("--stream", action="append", default=[], help="only these streams")
    ap.add_argument("--speaker", default="", help="label every segment so (no clustering)")
    ap.add_argument("--whisper", default=str(WHISPER_DIR), help="Whisper model (CTranslate2)")
    ap.add_argument("--embedder", default=str(EMBEDDER), help="speaker d-vector ONNX model")
    ap.add_argument("--threads", type=int, default=1, help="recogniser threads")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4, help="segments decoded together")
    ap.add_argument("--max-pending", type=int, default=32, help="segments waiting for the recogniser")
    ap.add_argument("--max-outbox", type=int, default=256, help="segments waiting for the daemon")
    ap.add_argument("--speaker-threshold", type=float, default=0.8)
    ap.add_argument("--max-speakers", type=int, default=8)
    ap.add_argument("--min-enrol-s", type=float, default=1.0)
    ap.add_argument("--threshold", type=float, default=0.5, help="silero-vad speech threshold")
    ap.add_argument("--min-silence-ms", type=int, default=400)
    ap.add_argument("--pad-ms", type=int, default=30)
    ap.add_argument("--max-segment-s", type=float, default=15.0)
    ap.add_argument("--forget-after-s", type=float, default=600.0,
                    help="a stream silent this long loses its VAD state and speakers")
    ap.add_argument("--max-streams", type=int, default=256, help="streams served at once")
    ap.add_argument("--journal", default="", help="append each sent segment, with times, as JSON lines")
    ap.add_argument("--nats", default="", help="cluster mode: send segments into NATS JetStream at this URL")
    ap.add_argument("--tap-nats", action="store_true",
                    help="with --nats: read the tap from core NATS (summerd.audio.<stream>)")
    ap.add_argument("--exit-after-idle", type=float, default=0.0,
                    help="exit when no audio came for this long after some did (0: never)")
    args = ap.parse_args()
    if not 0 < args.max_segment_s <= 30 or args.batch < 1 or args.max_pending < 1 or args.beam < 1:
        ap.error("--max-segment-s must be in (0, 30], --batch, --max-pending and --beam at least 1")
    if args.forget_after_s < 10 or args.max_streams < 1:
        ap.error("--forget-after-s must be at least 10, --max-streams at least 1")
    if args.tap_nats and not args.nats:
        ap.error("--tap-nats needs --nats URL")
    return args


class Tap:
    """The main thread's side: the tap's audio, per stream through its segmenter into `pending`."""

    def __init__(self, args, vad, pending):
        from segmenter import Segmenter

        self.args, self.vad, self.pending, self.new = args, vad, pending, Segmenter
        self.wanted = set(args.stream)
        self.streams, self.heard, self.seen, self.refused = {}, {}, {}, set()
        self.last_audio = None
        self.offsets = {}  # stream -> unix time minus media time at its latest audio
        self.channels = {}  # (stream, speaker) -> its channel

    def audio(self, parts):
        """One tap message."""
        header = tap_header(parts, self.refused)
        if header is None:
            return
        sid = header["stream"]
        if self.wanted and sid not in self.wanted:
            return  # SUBSCRIBE matches prefixes: call-1 also brings call-10
        speakers = channel_speakers(header)
        frames = np.frombuffer(parts[2], dtype="<i2").astype(np.float32) / 32768.0
        frames = frames.reshape(-1, len(speakers))
        self.offsets[sid] = time.time() - (header["pts"] + len(frames) / RATE)
        for i, speaker in enumerate(speakers):
            # A stream's own channels are segmented apart: (stream, speaker) is the key.
            self.push((sid, speaker), header["pts"], frames[:, i], i)

    def job(self, key, start, end, samples, channel):
        j = Job(key[0], start, end, samples, key[1])
        j.unix_offset, j.channel = self.offsets.get(key[0], 0.0), channel
        return j

    def push(self, key, pts, samples, channel=0):
        seg = self.streams.get(key)
        if seg is None:
            # --max-streams counts streams, whatever their channels.
            ids = {k[0] for k in self.streams}
            if key[0] not in ids and len(ids) >= self.args.max_streams:
                why = (key[0], "too many streams")
                if why not in self.refused and len(self.refused) < 1000:
                    self.refused.add(why)
                    log(f"stream {key[0]!r} ignored: already {self.args.max_streams} streams (--max-streams)")
                return
            a = self.args
            seg = self.streams[key] = self.new(self.vad, a.threshold, a.min_silence_ms, a.pad_ms,
                                               a.max_segment_s)
        self.last_audio = self.heard[key] = self.seen[key] = time.monotonic()
        self.channels[key] = channel
        for start, end, speech in seg.push(pts, samples):
            self.pending.put(self.job(key, start, end, speech, channel))

    def flush(self, idle_s):
        """End the segments in progress of streams unheard for `idle_s` seconds."""
        now = time.monotonic()
        for key in [key for key, t in self.heard.items() if now - t >= idle_s]:
            cut = self.streams[key].flush()
            if cut is not None:
                self.pending.put(self.job(key, *cut, self.channels.get(key, 0)))
            del self.heard[key]

    def forget(self):
        forget_idle(self.streams, self.seen, self.args.forget_after_s)

    def idle_for(self):
        """Seconds since the last audio, when every stream has gone quiet (else 0)."""
        if self.last_audio is None or self.heard:
            return 0.0
        return time.monotonic() - self.last_audio


def listen(args, sub, tap, stop, worker):
    """The tap loop, until a signal, --exit-after-idle, or the recogniser's death."""
    scanned = pruned = time.monotonic()
    while not stop and worker.is_alive():
        now = time.monotonic()
        if now - scanned > 0.2:
            tap.flush(STREAM_IDLE_S)
            scanned = now
        if now - pruned > 10.0:
            tap.forget()
            pruned = now
        if args.exit_after_idle and tap.idle_for() > args.exit_after_idle:
            return
        if sub.poll(100):
            parts = sub.recv_multipart()
            if len(parts) == 3:
                tap.audio(parts)


def main():
    args = parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    recognise, embed, vad = load_models(args)
    ctx = zmq.Context()
    link = None
    if args.nats:
        from nats_link import JetStreamPush, Link, NatsTap

        try:
            link = Link(args.nats)
        except Exception as e:  # noqa: BLE001 - said once, exit status 2
            log(f"error: cannot connect to NATS at {args.nats}: {e!r}")
            sys.exit(2)
    if args.tap_nats and link is not None:
        sub = NatsTap(link, args.stream)
        source = f"{args.nats} (summerd.audio.*)"
    else:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 10000)
        sub.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        for s in args.stream or [""]:
            sub.setsockopt(zmq.SUBSCRIBE, s.encode())
        sub.connect(args.tap)
        source = args.tap
    if link is not None:
        push = JetStreamPush(link)
        target = f"{args.nats} (JetStream summerd.transcripts.*)"
    else:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(args.transcripts)
        target = args.transcripts
    journal = open(args.journal, "a") if args.journal else None

    pending = Pending(args.max_pending, embed)
    failed = []

    def recogniser():
        try:
            recogniser_loop(args, pending, recognise, embed, push, journal)
        except Exception as e:  # noqa: BLE001 - any failure ends the worker, said once
            failed.append(e)
            log(f"error: the recogniser failed: {e!r}")

    worker = threading.Thread(target=recogniser, daemon=True)
    worker.start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    tap = Tap(args, vad, pending)
    log(f"listening to {source}, sending to {target}")
    try:
        listen(args, sub, tap, stop, worker)
        tap.flush(0.0)  # the speech in progress is a segment too
    finally:
        pending.close()
        worker.join(timeout=60.0)
        if worker.is_alive():
            log("error: the recogniser did not finish its queue within 60 s")
            os._exit(1)
        push.close(linger=2000)
        sub.close()
        ctx.term()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Unit tests of the reference worker's pure parts (run by tests/asr.rs, or
`python -m unittest discover -s asr`): speaker clustering, the bounded queue, the outbox, tap
header checks and the embedder's features."""

import json
import os
import sys
import unittest

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_worker as rw  # noqa: E402
import segmenter  # noqa: E402
import speakers  # noqa: E402


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


class SpeakersTest(unittest.TestCase):
    def test_voices_get_labels_in_order_and_keep_them(self):
        s = speakers.Speakers(threshold=0.8, cap=8, min_enrol_s=1.0)
        a, b = unit([1, 0, 0]), unit([0, 1, 0])
        self.assertEqual(s.assign(a, 2.0), "spk1")
        self.assertEqual(s.assign(b, 2.0), "spk2")
        self.assertEqual(s.assign(unit([0.95, 0.1, 0]), 2.0), "spk1")
        self.assertEqual(s.assign(unit([0.1, 0.95, 0]), 0.5), "spk2")

    def test_a_short_segment_never_starts_a_speaker(self):
        s = speakers.Speakers(threshold=0.8, cap=8, min_enrol_s=1.0)
        s.assign(unit([1, 0, 0]), 2.0)
        self.assertEqual(s.assign(unit([0, 1, 0]), 0.5), "spk1")
        self.assertEqual(s.labels, ["spk1"])

    def test_the_cap_holds(self):
        s = speakers.Speakers(threshold=0.99, cap=3, min_enrol_s=1.0)
        labels = {s.assign(unit(np.eye(6)[i]), 2.0) for i in range(6)}
        self.assertEqual(labels, {"spk1", "spk2", "spk3"})

    def test_log_mel_has_the_embedders_shape(self):
        x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
        f = speakers.log_mel(x)
        self.assertEqual(f.shape, (1 + (16000 - 512) // 160, 40))
        self.assertTrue(np.isfinite(f).all())
        self.assertTrue(np.isfinite(speakers.log_mel(np.zeros(100, np.float32))).all())


def job(stream, n=16000):
    return rw.Job(stream, 0.0, n / rw.RATE, np.zeros(n, dtype=np.float32))


class PendingTest(unittest.TestCase):
    def test_overflow_sends_the_oldest_without_text_and_bounds_everything(self):
        p = rw.Pending(limit=2)
        for _ in range(5):
            p.put(job("a", n=16000 * 10))
        jobs, backlog = p.take(batch=4, timeout=0)
        self.assertEqual(backlog, 0)
        self.assertEqual(len(jobs), 5)
        self.assertEqual([j.text for j in jobs], ["", "", "", None, None])
        self.assertTrue(all(j.samples is None for j in jobs[:3]))
        self.assertEqual(p.overflowed, 3)
        for _ in range(rw.MAX_SKIPPED + 10):
            p.put(job("a", n=100))
        self.assertLessEqual(len(p.skipped), rw.MAX_SKIPPED)
        self.assertEqual(p.lost, 8)

    def test_an_overflowed_segment_keeps_its_voice(self):
        p = rw.Pending(limit=1, embed=lambda x: np.ones(4, np.float32))
        p.put(job("a"))
        p.put(job("a"))
        jobs, _ = p.take(batch=4, timeout=0)
        self.assertEqual(jobs[0].text, "")
        self.assertEqual(list(jobs[0].vector), [1, 1, 1, 1])
        self.assertIsNone(jobs[1].vector)

    def test_take_gives_at_most_a_batch_in_order(self):
        p = rw.Pending(limit=10)
        for i in range(5):
            j = job("a")
            j.start = float(i)
            p.put(j)
        jobs, backlog = p.take(batch=2, timeout=0)
        self.assertEqual([j.start for j in jobs], [0.0, 1.0])
        self.assertEqual(backlog, 3)


class FakePush:
    def __init__(self, accept):
        self.accept, self.got = accept, []

    def send_string(self, s, flags=0):
        if not self.accept:
            raise zmq.Again()
        self.got.append(s)


class OutboxTest(unittest.TestCase):
    def test_held_while_refused_then_sent_in_order(self):
        push = FakePush(accept=False)
        o = rw.Outbox(push, limit=3)
        for i in range(5):
            o.add(str(i))
        o.flush()
        self.assertEqual(push.got, [])
        self.assertEqual(o.dropped, 2)
        push.accept, o.retry_at = True, 0.0
        o.flush()
        self.assertEqual(push.got, ["2", "3", "4"])


class TapHeaderTest(unittest.TestCase):
    def parts(self, **h):
        header = {"v": 1, "stream": "s", "pts": 1.0, "rate": 16000, "channels": 1, "format": "S16LE"}
        header.update(h)
        return [b"s", json.dumps(header).encode(), b"\0\0" * 10]

    def test_good_and_bad_headers(self):
        refused = set()
        self.assertIsNotNone(rw.tap_header(self.parts(), refused))
        for bad in ({"rate": 8000}, {"channels": 2}, {"stream": ""}, {"pts": None}, {"pts": -1},
                    {"v": 2}, {"pts": 1e20}, {"pts": 10**20}, {"pts": True}, {"stream": 7}):
            self.assertIsNone(rw.tap_header(self.parts(**bad), refused), bad)
        self.assertIsNone(rw.tap_header([b"s", b"not json", b""], refused))
        self.assertIsNone(rw.tap_header([b"s", b"[1]", b""], refused))
        self.assertIsNone(rw.tap_header([b"s", b"[" * 100000 + b"]" * 100000, b""], refused))
        odd = self.parts()
        odd[2] = b"\0"
        self.assertIsNone(rw.tap_header(odd, refused))

    def test_channels_need_a_speaker_each_and_whole_frames(self):
        refused = set()
        two = {"channels": 2, "speakers": ["agent", "customer"]}
        self.assertIsNotNone(rw.tap_header(self.parts(**two), refused))
        self.assertEqual(rw.channel_speakers(two), ["agent", "customer"])
        self.assertEqual(rw.channel_speakers({}), [None])
        for bad in ({"channels": 2, "speakers": ["agent"]}, {"channels": 2, "speakers": ["a", ""]},
                    {"channels": 2, "speakers": "ab"}, {"channels": True, "speakers": ["a"]},
                    {"channels": 1, "speakers": [7]}, {"channels": 0, "speakers": []},
                    {"channels": 2, "speakers": ["a", "a"]}, {"speakers": None, "channels": None}):
            self.assertIsNone(rw.tap_header(self.parts(**bad), refused), bad)
        three = self.parts(channels=3, speakers=["a", "b", "c"])  # 10 samples: not 3-sample frames
        self.assertIsNone(rw.tap_header(three, refused))


class ScriptedVad:
    """A VAD whose speech probability per window is given by a function of the window's index."""

    def __init__(self, prob):
        self.prob, self.n = prob, 0

    def state(self):
        return None

    def __call__(self, state, window):
        self.n += 1
        return self.prob(self.n - 1), state


W = segmenter.WINDOW / segmenter.RATE  # 32 ms


def feed(seg, seconds, t0=0.0, chunk=1600):
    """Push `seconds` of audio from media time t0 in 100 ms chunks; the segments yielded."""
    n = int(seconds * segmenter.RATE)
    out = []
    for i in range(0, n, chunk):
        out += list(seg.push(t0 + i / segmenter.RATE, np.full(min(chunk, n - i), 0.1, np.float32)))
    return out


class SegmenterTest(unittest.TestCase):
    def seg(self, prob, max_segment_s=15.0):
        return segmenter.Segmenter(ScriptedVad(prob), 0.5, 400, 30, max_segment_s)

    def test_speech_between_silences_is_one_segment_padded(self):
        # Windows 10..49 are speech (0.32 s .. 1.6 s).
        out = feed(self.seg(lambda i: 0.9 if 10 <= i < 50 else 0.0), 3.0)
        self.assertEqual(len(out), 1)
        start, end, x = out[0]
        self.assertAlmostEqual(start, 10 * W - 0.03, places=3)
        self.assertAlmostEqual(end, 50 * W + 0.03, places=3)
        self.assertEqual(len(x), round((end - start) * segmenter.RATE))

    def test_a_cut_long_segment_leaves_no_sliver_of_silence(self):
        # Speech for 2 s then silence, cut at 1 s: two segments, nothing after.
        out = feed(self.seg(lambda i: 0.9 if i < 62 else 0.0, max_segment_s=1.0), 5.0)
        self.assertEqual(len(out), 2, [(a, b) for a, b, _ in out])
        self.assertAlmostEqual(out[0][1], out[1][0], places=6)
        self.assertTrue(all(b - a > 0.5 for a, b, _ in out))

    def test_a_gap_in_the_media_time_ends_the_speech_heard(self):
        s = self.seg(lambda i: 0.9)
        self.assertEqual(feed(s, 1.0), [])
        out = feed(s, 1.0, t0=5.0)  # the tap jumps: the first second is a segment
        self.assertEqual(len(out), 1)
        self.assertLessEqual(out[0][1], 1.0 + 1e-6)

    def test_flush_ends_speech_in_progress_and_nothing_else(self):
        s = self.seg(lambda i: 0.9 if i >= 10 else 0.0)
        feed(s, 1.0)
        start, end, _ = s.flush()
        self.assertAlmostEqual(start, 10 * W - 0.03, places=3)
        self.assertIsNone(s.flush())
        quiet = self.seg(lambda i: 0.0)
        feed(quiet, 1.0)
        self.assertIsNone(quiet.flush())


class TapTest(unittest.TestCase):
    def test_only_the_streams_asked_for(self):
        import argparse

        args = argparse.Namespace(stream=["call-1"], max_streams=2, threshold=0.5, min_silence_ms=400,
                                  pad_ms=30, max_segment_s=15.0, forget_after_s=600.0)
        tap = rw.Tap(args, ScriptedVad(lambda i: 0.0), rw.Pending(4))
        for sid in ("call-1", "call-10"):
            header = {"v": 1, "stream": sid, "pts": 0.0, "rate": 16000, "channels": 1, "format": "S16LE"}
            tap.audio([sid.encode(), json.dumps(header).encode(), b"\0\0" * 1600])
        self.assertEqual(list(tap.streams), [("call-1", None)])

    def test_each_channel_is_segmented_apart_and_labelled_with_its_speaker(self):
        import argparse

        args = argparse.Namespace(stream=[], max_streams=10, threshold=0.5, min_silence_ms=400,
                                  pad_ms=30, max_segment_s=15.0, forget_after_s=600.0)
        class LevelVad(ScriptedVad):
            def __call__(self, state, window):
                return (0.9 if np.abs(window).mean() > 0.05 else 0.0), state

        pending = rw.Pending(8)
        tap = rw.Tap(args, LevelVad(None), pending)
        header = {"v": 1, "stream": "call", "pts": 0.0, "rate": 16000, "channels": 2,
                  "format": "S16LE", "speakers": ["agent", "customer"]}
        for k in range(10):  # 1 s: the agent's channel silent, the customer's speaking
            header["pts"] = k * 0.1
            frames = np.zeros((1600, 2), "<i2")
            frames[:, 1] = 3000
            tap.audio([b"call", json.dumps(header).encode(), frames.tobytes()])
        tap.flush(0.0)
        jobs, _ = pending.take(8, 0.0)
        self.assertEqual([(j.stream, j.speaker) for j in jobs], [("call", "customer")])
        self.assertGreater(jobs[0].seconds, 0.8)
        self.assertEqual(sorted(tap.streams), [("call", "agent"), ("call", "customer")])

    def test_at_most_max_streams(self):
        import argparse

        args = argparse.Namespace(stream=[], max_streams=2, threshold=0.5, min_silence_ms=400,
                                  pad_ms=30, max_segment_s=15.0, forget_after_s=600.0)
        tap = rw.Tap(args, ScriptedVad(lambda i: 0.0), rw.Pending(4))
        for k in range(5):
            header = {"v": 1, "stream": f"s{k}", "pts": 0.0, "rate": 16000, "channels": 1,
                      "format": "S16LE"}
            tap.audio([b"s", json.dumps(header).encode(), b"\0\0" * 1600])
        self.assertEqual(len(tap.streams), 2)


if __name__ == "__main__":
    unittest.main()


class ClusterModeTest(unittest.TestCase):
    def test_a_unix_segment_is_numbered_by_its_start_and_channel(self):
        j = rw.Job("call-1", 2.0, 3.5, np.zeros(RATE_S, dtype=np.float32), "customer")
        j.unix_offset, j.channel, j.text = 1_700_000_000.25, 1, "hello"
        msg = rw.unix_segment(j)
        self.assertEqual(msg["clock"], "unix")
        self.assertAlmostEqual(msg["start"], 1_700_000_002.25)
        self.assertAlmostEqual(msg["end"], 1_700_000_003.75)
        self.assertEqual(msg["seq"], 1_700_000_002_250 * 64 + 1)
        self.assertLess(msg["seq"], 2**53, "exact as a JSON number")
        j2 = rw.Job("call-1", 2.0, 3.5, np.zeros(RATE_S, dtype=np.float32), "agent")
        j2.unix_offset, j2.channel, j2.text = 1_700_000_000.25, 0, ""
        self.assertNotEqual(rw.unix_segment(j2)["seq"], msg["seq"])

    def test_subjects_ids_and_tap_frames(self):
        import nats_link

        subject, msg_id = nats_link.subject_and_id(json.dumps({"stream": "a:b.c", "seq": 7}))
        self.assertEqual(subject, "summerd.transcripts.a:b.c")
        self.assertEqual(msg_id, "a:b.c:7")
        parts = nats_link.tap_parts("summerd.audio.a.b", {"Summerd-Tap": '{"v":1}'}, b"\x00\x01")
        self.assertEqual(parts, [b"a.b", b'{"v":1}', b"\x00\x01"])
        self.assertIsNone(nats_link.tap_parts("summerd.audio.x", {}, b""))
        self.assertIsNone(nats_link.tap_parts("other.x", {"Summerd-Tap": "{}"}, b""))


RATE_S = 16000

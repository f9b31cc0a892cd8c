#!/usr/bin/env python3
"""Draw docs/architecture.svg: the stages and threads of a running summerd, in layers.

Standard library only. Run from anywhere: `python3 docs/architecture_svg.py` writes the SVG
beside this script. Boxes are threads or tasks (or the registry they share); arrows are the
channels between them, labelled with their bound and what happens when they are full.
"""

from pathlib import Path
from xml.sax.saxutils import escape

W, H = 1200, 920
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"

# Layer bands: (label, top y, height).
BANDS = [
    ("sources", 20, 90),
    ("ingest\n(per stream)", 120, 200),
    ("registry", 330, 80),
    ("utterance core", 420, 90),
    ("model", 520, 80),
    ("publishers", 610, 100),
    ("bus", 720, 90),
]

# Fills by kind: external peers, threads, tokio tasks, shared state, sockets.
FILL = {
    "peer": "#f2f2f2",
    "thread": "#dbe9f7",
    "task": "#e3f4df",
    "state": "#fdf1d6",
    "socket": "#efe3f6",
}

out = []


def text(x, y, s, size=13, weight="normal", anchor="start", colour="#1a1a1a", style=""):
    out.append(
        f'<text x="{x}" y="{y}" font-family="{FONT}" font-size="{size}" font-weight="{weight}" '
        f'text-anchor="{anchor}" fill="{colour}"{style}>{escape(s)}</text>'
    )


def box(x, y, w, h, title, lines=(), kind="thread"):
    """A box with a bold title and detail lines, centred."""
    out.append(
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" ry="6" '
        f'fill="{FILL[kind]}" stroke="#4a4a4a" stroke-width="1.2"/>'
    )
    n = 1 + len(lines)
    top = y + h / 2 - (n - 1) * 8 + 4
    text(x + w / 2, top, title, size=13, weight="bold", anchor="middle")
    for i, line in enumerate(lines):
        text(x + w / 2, top + 16 * (i + 1), line, size=11.5, anchor="middle", colour="#333333")


def arrow(points, label=None, at=None, anchor="start", dashed=False, colour="#333333"):
    """A polyline ending in an arrow head; `label` written at `at` (x, y)."""
    pts = " ".join(f"{x},{y}" for x, y in points)
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    out.append(
        f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"{dash} '
        f'marker-end="url(#head)"/>'
    )
    if label:
        lx, ly = at if at else points[0]
        for i, line in enumerate(label.split("\n")):
            text(lx, ly + 13 * i, line, size=11, anchor=anchor, colour="#444444",
                 style=' font-style="italic"')


def main():
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}">'
    )
    out.append(
        '<defs><marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" '
        'orient="auto" markerUnits="userSpaceOnUse"><path d="M0,0 L10,4 L0,8 z" '
        'fill="#333333"/></marker></defs>'
    )
    out.append(f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>')
    for i, (label, y, h) in enumerate(BANDS):
        shade = "#fafafa" if i % 2 == 0 else "#f3f3f3"
        out.append(f'<rect x="10" y="{y}" width="{W - 20}" height="{h}" fill="{shade}"/>')
        lines = label.split("\n")
        for j, line in enumerate(lines):
            text(20, y + h / 2 + 5 + 15 * (j - (len(lines) - 1) / 2), line, size=13,
                 weight="bold", colour="#666666")

    # Columns: A media path, B supervision and video, C control, D transcripts.
    A, B, C, D = 180, 410, 640, 880
    WA = WB = WC = 200
    WD = 290

    # Sources.
    box(A, 35, WA, 60, "Media sources", ["RTSP · SRT · RTP · files · v4l2"], "peer")
    box(C, 35, WC, 60, "Control client", ["REQ: attach · detach · list"], "peer")
    box(D, 35, WD, 60, "ASR workers", ["PUSH: one JSON segment a message"], "peer")

    # Ingest, per stream.
    box(A, 135, WA, 70, "GStreamer streaming", ["threads: appsink callbacks", "place buffers on the timeline"])
    box(B, 135, WB, 70, "ingest-<id>", ["supervisor: build · play ·", "watch bus · backoff · failed"])
    box(C, 135, WC, 70, "zmq-control", ["REP socket thread", "Ingest::attach / detach / list"])
    box(A, 240, WA, 65, "audio-<id>", ["16 kHz · descriptors · tap"])
    box(B, 240, WB, 65, "video-<id>", ["vision stage: faces,", "tracks, expression"])
    box(D, 240, WD, 65, "zmq-transcripts", ["PULL socket thread:", "validate · count rejects"])

    # Registry.
    box(A, 340, C + WC - A, 60, "streams::Registry",
        ["per stream: StreamSpec · StreamState · Timeline · AudioFeatures · VisualFeatures",
         "coverage Notify: rung as descriptors grow"], "state")

    # Utterance core.
    box(A, 430, 2 * WA + 30, 70, "tokio tasks beside it",
        ["HTTP: /metrics, /healthz, live page + feed", "systemd watchdog (heartbeats)"], "task")
    box(C, 430, D + WD - C, 70, "consumer task (tokio)",
        ["Core::offer: speaker policy · unix clock → media · assembler",
         "Core::poll: jobs when descriptors cover the span or feature_wait ends"], "task")

    # Model.
    box(C, 530, D + WD - C, 60, "model-worker thread (owns libtorch)",
        ["Job::resolve (functionals, face) · score: Engine, one batched forward pass"])

    # Publishers.
    box(A, 625, 2 * WA + 30, 70, "zmq-audio_tap", ["publisher thread (PUB socket)"])
    box(C, 625, D + WD - C, 70, "zmq-events",
        ["publisher thread (PUB socket)",
         "emotion.<id> (model worker) · lifecycle.<id> (supervisors) · lifecycle.daemon"])

    # Bus.
    box(A, 735, 2 * WA + 30, 60, "audio tap", ["[stream, header, 16 kHz PCM] → ASR workers"], "socket")
    box(C, 735, WC + 20, 60, "zmq-zap · zmq-monitor", ["CURVE: ZAP, refused handshakes"])
    box(D - 10, 735, WD + 10, 60, "events", ["[topic, JSON] → subscribers"], "socket")

    # Arrows: sources into ingest.
    arrow([(A + WA / 2, 95), (A + WA / 2, 135)], "media", (A + WA / 2 + 6, 120))
    arrow([(C + WC / 2, 95), (C + WC / 2, 135)], "control socket", (C + WC / 2 + 6, 120))
    arrow([(C, 170), (B + WB, 170)])
    text(B + WB + 4, 163, "spawns", size=11, colour="#444444", style=' font-style="italic"')
    arrow([(B, 170), (A + WA, 170)])
    text(A + WA + 3, 163, "pipeline", size=11, colour="#444444", style=' font-style="italic"')
    arrow([(A + 24, 205), (A + 24, 240)])
    text(A + 30, 222, "sync_channel(audio_queue)", size=10.5, colour="#444444", style=' font-style="italic"')
    text(A + 30, 234, "full: drop, count, log", size=10.5, colour="#444444", style=' font-style="italic"')
    arrow([(A + WA, 195), (B + 40, 240)])
    text(B + 48, 222, "DropOldest(video_queue)", size=10.5, colour="#444444", style=' font-style="italic"')
    text(B + 48, 234, "full: oldest dropped, counted", size=10.5, colour="#444444", style=' font-style="italic"')

    # Ingest into the registry.
    arrow([(A + WA / 2, 305), (A + WA / 2, 340)], "descriptors", (A + WA / 2 + 6, 326))
    arrow([(B + WB / 2, 305), (B + WB / 2, 340)], "faces", (B + WB / 2 + 6, 326))
    arrow([(C + WC / 2, 205), (C + WC / 2, 340)], "register /\nremove", (C + WC / 2 + 6, 268))

    # Transcripts path.
    arrow([(D + WD / 2, 95), (D + WD / 2, 240)], "transcripts socket", (D + WD / 2 + 6, 170))
    arrow([(D + WD / 2, 305), (D + WD / 2, 430)],
          "mpsc(transcripts.queue)\nfull: the thread waits;\nlibzmq's rcvhwm, then\nthe pushers absorb it",
          (D + WD / 2 + 6, 332))
    # Registry into the core.
    arrow([(C + WC / 2 - 40, 400), (C + WC / 2 - 40, 430)], "StreamView · wake-up", (C + WC / 2 - 34, 420))

    # Core into the model worker.
    arrow([(C + 120, 500), (C + 120, 530)], "sync_channel(inference.queue), try_send; full: backlog,",
          (C + 128, 513))
    text(C + 128, 526, "no transcript read while the backlog holds inference.queue", size=11,
         colour="#444444", style=' font-style="italic"')

    # Model worker into the events publisher.
    arrow([(C + 120, 590), (C + 120, 625)], "sync_channel(events.queue), try_send; full: newest dropped, counted",
          (C + 128, 611))

    # Audio thread into the tap publisher (left edge).
    arrow([(A, 272), (165, 272), (165, 660), (A, 660)], dashed=False)
    text(A + 8, 606, "sync_channel(audio_tap.queue), try_send;", size=11, colour="#444444", style=' font-style="italic"')
    text(A + 8, 619, "full: newest dropped, counted", size=11, colour="#444444", style=' font-style="italic"')

    # Publishers onto the bus.
    arrow([(A + WA, 695), (A + WA, 735)])
    arrow([(D + WD / 2, 695), (D + WD / 2, 735)])

    # Legend.
    y = 835
    text(20, y, "Legend", size=13, weight="bold", colour="#666666")
    x = 100
    for kind, what in [("peer", "outside peer"), ("thread", "OS thread"), ("task", "tokio task"),
                       ("state", "shared state"), ("socket", "ZeroMQ socket")]:
        out.append(f'<rect x="{x}" y="{y - 12}" width="22" height="14" rx="3" fill="{FILL[kind]}" '
                   f'stroke="#4a4a4a" stroke-width="1"/>')
        text(x + 28, y, what, size=12)
        x += 150
    text(20, y + 28, "Every channel is bounded. Transcripts block (no valid segment is dropped); "
         "media and publishers drop and count. The transcript, control and publisher threads", size=12)
    text(20, y + 46, "and the model worker beat a heartbeat at least every 100 ms: /healthz and the systemd "
         "watchdog follow them. Shutdown: transcripts stop first, then the consumer, the model", size=12)
    text(20, y + 64, "worker, the streams and the publishers; terminating the libzmq context ends zmq-zap "
         "and zmq-monitor.", size=12)
    out.append("</svg>")


if __name__ == "__main__":
    main()
    target = Path(__file__).with_name("architecture.svg")
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    print(target)

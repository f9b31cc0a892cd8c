#!/usr/bin/env python3
"""Draw docs/cluster.svg: three summerd nodes sharing their calls through NATS JetStream.

Standard library only. Run from anywhere: `python3 docs/cluster_svg.py` writes the SVG beside
this script. Each node has its media, the ASR worker beside it and its model worker; the NATS
servers hold the buckets (desired streams, leases, nodes, conversation state) and the streams
(transcripts, events), replicated three times.
"""

from pathlib import Path
from xml.sax.saxutils import escape

W, H = 1180, 640
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
FILL = {"peer": "#f2f2f2", "node": "#dbe9f7", "store": "#fdf1d6", "stream": "#efe3f6"}
out = []


def text(x, y, s, size=12.5, weight="normal", anchor="middle", colour="#1a1a1a"):
    out.append(f'<text x="{x}" y="{y}" font-family="{FONT}" font-size="{size}" '
               f'font-weight="{weight}" text-anchor="{anchor}" fill="{colour}">{escape(s)}</text>')


def box(x, y, w, h, title, lines=(), kind="node", dashed=False, size=12.5):
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" ry="6" fill="{FILL[kind]}" '
               f'stroke="#4a4a4a" stroke-width="1.2"{dash}/>')
    n = 1 + len(lines)
    top = y + h / 2 - (n - 1) * 8 + 4
    text(x + w / 2, top, title, size=size, weight="bold")
    for i, line in enumerate(lines):
        text(x + w / 2, top + 16 * (i + 1), line, size=11, colour="#333333")


def arrow(x1, y1, x2, y2, label=None, lx=None, ly=None, colour="#333333", anchor="start"):
    out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
               f'stroke-width="1.4" marker-end="url(#head)"/>')
    if label:
        text(lx if lx is not None else (x1 + x2) / 2 + 6, ly if ly is not None else (y1 + y2) / 2,
             label, size=10.5, anchor=anchor, colour="#444444")


out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">')
out.append('<defs><marker id="head" markerWidth="9" markerHeight="7" refX="8" refY="3.5" '
           'orient="auto"><polygon points="0 0, 9 3.5, 0 7" fill="#333333"/></marker></defs>')
out.append(f'<rect width="{W}" height="{H}" fill="white"/>')
text(W / 2, 28, "summerd cluster mode: nodes share calls through NATS JetStream", size=16, weight="bold")

# The NATS cluster in the middle.
box(40, 270, 1100, 150, "", kind="peer")
text(590, 292, "NATS JetStream: three servers, every bucket and stream with 3 replicas (RAFT)",
     size=13, weight="bold")
stores = [
    ("summerd_streams", ["desired streams", "(attach requests)"], "store"),
    ("summerd_leases", ["who holds a stream", "expire after lease"], "store"),
    ("summerd_nodes", ["live nodes, load", "expire after lease"], "store"),
    ("summerd_state", ["conversation", "checkpoints"], "store"),
    ("SUMMERD_TRANSCRIPTS", ["summerd.transcripts.<id>", "durable consumer / stream"], "stream"),
    ("SUMMERD_EVENTS", ["summerd.events.<id>", "Nats-Msg-Id <id>:<seq>"], "stream"),
]
for i, (name, lines, kind) in enumerate(stores):
    box(55 + i * 181, 305, 172, 100, name, lines, kind, size=11.5)

# Three nodes above.
for i, name in enumerate(["node-1", "node-2", "node-3"]):
    x = 40 + i * 380
    box(x, 60, 340, 170, "", kind="peer", dashed=True)
    text(x + 170, 80, f"host {i + 1}", size=12, weight="bold")
    box(x + 10, 90, 155, 62, f"summerd {name}", ["pipelines, descriptors,", "model worker"])
    box(x + 175, 90, 155, 62, "ASR worker", ["reads the node's tap", "(loopback ZeroMQ)"], "peer")
    box(x + 10, 160, 155, 62, "node loop", ["renew leases, claim up to", "the fair share, hand one", "back when uneven"],
        size=12)
    arrow(x + 175, 121, x + 167, 121)
    arrow(x + 40, 224, x + 40, 268, "leases, state, events", x + 46, 263)
    arrow(x + 135, 270, x + 135, 224, "segments", x + 141, 236)
    arrow(x + 252, 154, x + 252, 268, "segments (unix clock)", x + 258, 250)

# Below: sources, admin and readers.
box(40, 470, 340, 130, "live calls", ["RTSP, SRT, RTP, files", "each is run by the node", "holding its lease; a dead",
                                      "node's calls restart elsewhere"], "peer")
box(420, 470, 340, 130, "summerd cluster attach | detach | list | nodes",
    ["any host with the config's [cluster]:", "requests checked as the control socket does",
     "(same templates, URIs, channel maps)"], "peer")
box(800, 470, 340, 130, "subscribers", ["summerd tail --nats URL [--from-start]", "dashboards, archives:",
                                         "each event stored once"], "peer")
arrow(330, 468, 330, 234, "media", 336, 452)
arrow(590, 468, 590, 422, "desired streams", 596, 448)
arrow(1000, 422, 1000, 468, "events", 1006, 448)

out.append("</svg>")
Path(__file__).with_name("cluster.svg").write_text("\n".join(out) + "\n")

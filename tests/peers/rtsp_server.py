"""A real RTSP server on loopback for ingest tests (gst-rtsp-server through Debian's
python3-gi; run with /usr/bin/python3). Mounts:
  /av     H.264 video (640x360, 25 fps) + AAC audio, live test sources
  /audio  AAC audio only
Prints "ready" once listening; serves until killed.

Usage: rtsp_server.py PORT
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1]
VIDEO = ("videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=640,height=360,framerate=25/1 "
         "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! rtph264pay name=pay0 pt=96")
AUDIO = ("audiotestsrc is-live=true freq=330 ! audio/x-raw,rate=44100,channels=1 ! avenc_aac "
         "! rtpmp4apay name={name} pt=97")

server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
mounts = server.get_mount_points()
for path, launch in [("/av", f"( {VIDEO} {AUDIO.format(name='pay1')} )"),
                     ("/audio", f"( {AUDIO.format(name='pay0')} )")]:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    mounts.add_factory(path, factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on port " + port)
print("ready", flush=True)
GLib.MainLoop().run()

"""An RTSP server on loopback that serves one recorded file to every client, each from its
start and in real time, without re-encoding (gst-rtsp-server through Debian's python3-gi; run
with /usr/bin/python3). Mount /call: the file's H.264 video and AAC audio. For the capacity
benchmark and the soak run. Prints "ready" once listening; serves until killed.

Usage: rtsp_file_server.py PORT FILE.mp4
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port, path = sys.argv[1], sys.argv[2]
launch = (f'( filesrc location="{path}" ! qtdemux name=d '
          "d.video_0 ! queue ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 "
          "d.audio_0 ! queue ! aacparse ! rtpmp4apay name=pay1 pt=97 )")
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(launch)
factory.set_shared(False)
server.get_mount_points().add_factory("/call", factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on port " + port)
print("ready", flush=True)
GLib.MainLoop().run()

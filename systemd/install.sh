#!/usr/bin/env bash
# Install summerd as a systemd service on this machine (Debian 12, as root):
#   - the `summerd` system user (groups video, render, audio where they exist),
#   - /opt/summerd/bin/summerd (built by tests/setup.sh) and the README,
#   - /opt/summerd/venv with torch==2.13.0 (libtorch; pip's cache is reused),
#   - /etc/summerd/summerd.toml from config/summerd.toml unless one exists already,
#   - /etc/systemd/system/summerd.service, then daemon-reload and enable --now.
# Re-running it upgrades the binary and unit and keeps the config.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SUMMERD_CACHE:-$HOME/.cache/summerd}
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

bash "$here/tests/setup.sh"

id summerd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/summerd --shell /usr/sbin/nologin summerd
for g in video render audio; do
  getent group "$g" >/dev/null && usermod -aG "$g" summerd
done

install -D -m 0755 "$here/target/release/summerd" /opt/summerd/bin/summerd
install -D -m 0644 "$here/README.md" /opt/summerd/share/doc/summerd/README.md
if [ ! -x /opt/summerd/venv/bin/python ]; then
  python3 -m venv /opt/summerd/venv
fi
PIP_CACHE_DIR=$cache/pip /opt/summerd/venv/bin/pip install -q torch==2.13.0

install -d -m 0750 -g summerd /etc/summerd
if [ ! -f /etc/summerd/summerd.toml ]; then
  # Relative paths in the shipped file point into the checkout; make them absolute.
  sed -e "s#\"\\.\\./#\"$here/#" "$here/config/summerd.toml" >/etc/summerd/summerd.toml
  chgrp summerd /etc/summerd/summerd.toml
  chmod 0640 /etc/summerd/summerd.toml
fi
/opt/summerd/bin/summerd validate -c /etc/summerd/summerd.toml

install -D -m 0644 "$here/systemd/summerd.service" /etc/systemd/system/summerd.service
systemctl daemon-reload
systemctl enable --now summerd.service
systemctl --no-pager status summerd.service || true

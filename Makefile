# The front door. Both targets set everything up first (idempotent, cached in ~/.cache/summerd).
.PHONY: run test lint setup bench-text bench-ingest bench-acoustic

# Run the daemon with the default config in the foreground (Ctrl-C drains and exits).
run:
	bash tests/setup.sh ./target/release/summerd run -c config/summerd.toml

# Every test: unit, config, ZeroMQ interop with pyzmq, CURVE, metrics, systemd.
test:
	bash tests/setup.sh cargo test --release --locked

# Formatting and lints, as required before a commit.
lint:
	bash tests/setup.sh sh -c 'cargo fmt --check && cargo clippy --release --locked --all-targets -- -D warnings'

setup:
	bash tests/setup.sh

# Text encoder: parity and speed against sentence-transformers on 500 MELD utterances
# (needs ../shared); figures printed and written to target/bench/text.json.
bench-text:
	bash tests/setup.sh cargo bench --locked --bench text

# Ingest: CPU per stream-second of summerd's ingest vs a bare GStreamer decode of the same
# 720p25 H.264+AAC file; figures printed and written to target/bench/ingest.json.
bench-ingest:
	bash tests/setup.sh cargo bench --locked --bench ingest

# Acoustic descriptors: summerd's eGeMAPS v02 vs openSMILE 2.6.0 on the 415 EmoDB clips
# (needs ../shared): agreement per functional, LOSO UAR, speed; figures printed and written to
# target/bench/acoustic.json and target/bench/acoustic.png.
bench-acoustic:
	bash tests/setup.sh sh -c 'cargo bench --locked --bench acoustic && python tests/acoustic_report.py'

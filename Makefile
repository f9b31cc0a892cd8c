# The front door. Both targets set everything up first (idempotent, cached in ~/.cache/summerd).
.PHONY: run daemon test lint setup default-model bench-cluster bench-text bench-ingest bench-acoustic bench-model bench-e2e bench-e2e-page bench-asr bench-vision bench-capacity soak fuzz ablate bench-table

# The demo: a sample call (two espeak-ng voices over a real face) through the daemon with the
# default model and the reference ASR worker, events shown live by `summerd tail` (~1 minute).
run:
	bash tests/setup.sh demo/run.sh

# Run the daemon with the default config in the foreground (Ctrl-C drains and exits).
daemon:
	bash tests/setup.sh ./target/release/summerd run -c config/summerd.toml

# Every test: unit, config, ZeroMQ interop with pyzmq, CURVE, metrics, systemd.
test:
	bash tests/setup.sh cargo test --release --locked --features failpoints

# Formatting and lints, as required before a commit.
lint:
	bash tests/setup.sh sh -c 'cargo fmt --check && cargo clippy --release --locked --all-targets -- -D warnings'

setup:
	bash tests/setup.sh

# Text encoder: parity and speed against sentence-transformers on 500 MELD utterances
# (needs ../shared); figures printed and written to target/bench/text.json.
bench-text:
	bash tests/setup.sh cargo bench --locked --bench text

# Capacity: N live 720p RTSP calls (4, 8, 10, 12) and N audio-only RTP calls (50, 100, 150)
# through the daemon with the default model and vision; real time, p99 latency, CPU against
# a bare decode, peak RSS; target/bench/capacity-{video,audio}.json (~15 minutes).
bench-capacity:
	bash tests/setup.sh sh -c 'cargo bench --locked --bench capacity -- video 4,8,10,12 && cargo bench --locked --bench capacity -- audio 50,100,150'

# Cluster mode on loopback: 3 NATS servers (R3) and 3 nodes; handover time over 20 kill -9s,
# events/s into JetStream against ZeroMQ, segment -> event latency with 8 calls a node;
# target/bench/cluster.json (~10 minutes).
bench-cluster:
	bash tests/setup.sh cargo bench --locked --bench cluster

# Soak: 4 live calls for MINUTES (default 30): RSS growth, lost utterances, queue;
# target/bench/capacity-soak.json.
MINUTES ?= 30
soak:
	bash tests/setup.sh cargo bench --locked --bench capacity -- soak --minutes $(MINUTES)

# Ingest: CPU per stream-second of summerd's ingest vs a bare GStreamer decode of the same
# 720p25 H.264+AAC file; figures printed and written to target/bench/ingest.json.
bench-ingest:
	bash tests/setup.sh cargo bench --locked --bench ingest

# Acoustic descriptors: summerd's eGeMAPS v02 vs openSMILE 2.6.0 on the 415 EmoDB clips
# (needs ../shared): agreement per functional, LOSO UAR, speed; figures printed and written to
# target/bench/acoustic.json and target/bench/acoustic.png.
bench-acoustic:
	bash tests/setup.sh sh -c 'cargo bench --locked --bench acoustic && python tests/acoustic_report.py'

# The model on real data (needs ../shared): MELD teacher + student (causal and bidirectional),
# EmoDB audio leave-one-speaker-out, inference cost; target/bench/model.json and pictures.
bench-model:
	bash tests/setup.sh tests/bench_model.sh

# Regenerate models/summer-default from ../shared (MELD + EmoDB) with its held-out figures:
# the MELD teacher, 8 EmoDB leave-one-speaker-out students, the shipped student (~50 min on
# 2 cores); results in models/summer-default/results.json.
default-model:
	bash tests/setup.sh sh -c 'tests/bench_model.sh datasets && target/release/summerd train-default'

# Segment arrival -> event publication with 8 concurrent live streams (CPU): p50/p99 printed
# and written to target/bench/e2e.json (~2 minutes).
bench-e2e:
	bash tests/setup.sh cargo bench --locked --bench e2e

# The same with 4 readers holding the live page's event feed open; target/bench/e2e-page.json.
bench-e2e-page:
	SUMMERD_BENCH_PAGE=4 bash tests/setup.sh cargo bench --locked --bench e2e

# The vision stage: MTCNN parity against facenet-pytorch and the expression net against a
# numpy forward pass (tests/vision.rs), then throughput vs the Python reference (1 and 2
# threads), the budget per stream at the defaults and the cost of the detection scheme:
# target/bench/vision.json.
bench-vision:
	bash tests/setup.sh sh -c 'cargo test --release --locked --test vision -- --nocapture --test-threads 1 && cargo bench --locked --bench vision'

# The routing and alpha ablations on MELD text (teacher), 3 seeds each:
# target/bench/ablation-{routing,alpha}/ablation.md.
ablate:
	bash tests/setup.sh sh -c 'tests/bench_model.sh datasets && for set in routing alpha; do \
	  target/release/summerd ablate --recipe models/recipes/meld-ablate.toml --set $$set --seeds 3 \
	    --train target/data/meld-train.safetensors --dev target/data/meld-dev.safetensors \
	    --test target/data/meld-test.safetensors --out target/bench/ablation-$$set; done'

# Rewrite the measured tables in docs/ from target/bench/*.json (absent JSON: recorded text kept).
# The reference ASR worker: the demo call's WER, then 323 spoken MELD utterances on 8 live
# streams (WER, speaker labels, WF1 on ASR vs gold text, end of speech -> segment, CPU); needs
# ../shared; target/bench/asr.json (~7 minutes).
bench-asr:
	bash tests/setup.sh cargo bench --locked --bench asr

bench-table:
	python3 scripts/bench-table

# Coverage-guided fuzzing (cargo-fuzz + libFuzzer) of the transcript parser and the config
# parser, FUZZ_SECONDS each (default 600), seeded from fuzz/seeds/ (and config/summerd.toml).
# The corpora grow in fuzz/corpus/ (ignored); a crash
# stops the run with its input in fuzz/artifacts/: fix it, then copy the input to
# fuzz/regressions/<target>/ so that `make test` replays it for ever (tests/fuzz_regressions.rs).
# cargo-fuzz drives rustc's unstable coverage flags; RUSTC_BOOTSTRAP lets this stable
# toolchain accept them. No sanitizer: the parsers are safe Rust, a panic is the bug looked for.
fuzz:
	bash tests/setup.sh sh -c 'command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.1; \
	  export LD_LIBRARY_PATH=$$(python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), \"lib\"))"); \
	  cd fuzz && for t in transcript config; do mkdir -p corpus/$$t && \
	  extra=$$([ $$t = config ] && echo ../config); \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $$t corpus/$$t seeds/$$t $$extra -- -max_total_time=$${FUZZ_SECONDS:-600} -timeout=10 || exit 1; done'

//! Acoustic descriptor speed: every EmoDB clip in ../shared (decoded first, not timed) through
//! summerd's eGeMAPS extractor on one thread, as a whole file each; then the steady-state cost
//! of one 10 ms hop on a live-like stream (48 kHz pushed in 20 ms chunks, resampling included).
//! Prints the figures and writes target/bench/acoustic_speed.json, which
//! `tests/acoustic_report.py` (`make bench-acoustic`) puts beside openSMILE's time.

use serde_json::json;
use summerd::acoustic::{self, AcousticStream, Band, Settings};

fn cpu_now() -> f64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let Some(assets) = summerd::assets::dir() else {
        eprintln!("SKIPPED: ../shared (SUMMERD_ASSETS) is absent; no EmoDB clips to time");
        return;
    };
    let files =
        summerd::assets::wav_files(&assets.join("data/emodb/wav")).expect("EmoDB wav folder");
    let clips: Vec<_> = files
        .iter()
        .map(|p| summerd::decode::decode_audio(p).expect("decodable clip"))
        .collect();
    let audio_s: f64 = clips
        .iter()
        .map(|a| a.samples.len() as f64 / f64::from(a.rate))
        .sum();
    // Whole files, one thread; the best of 3 passes (the machine is shared).
    let mut best = f64::MAX;
    let mut frames = 0usize;
    for _ in 0..3 {
        let t = cpu_now();
        frames = 0;
        for a in &clips {
            let (f, _) =
                acoustic::file_functionals(a.rate, &a.samples, Band::default()).expect("rate");
            frames += f.frames;
        }
        best = best.min(cpu_now() - t);
    }
    // Live streams: 60 s of a harmonic tone with vibrato pushed in 20 ms chunks at the media's
    // rate, as the daemon hands them to the descriptors, resampling included: 48 kHz, 16 kHz
    // in both bands, and 8 kHz (a G.711 call).
    let (hop_us, live_fraction) = live(48_000, Band::Telephone);
    let (tel16_us, tel16) = live(16_000, Band::Telephone);
    let (wide16_us, wide16) = live(16_000, Band::Wide);
    let (tel8_us, tel8) = live(8_000, Band::Telephone);
    let report = json!({
        "clips": clips.len(),
        "audio_seconds": audio_s,
        "frames": frames,
        "summerd_cpu_seconds": best,
        "summerd_ms_per_clip": best * 1e3 / clips.len() as f64,
        "summerd_realtime_factor": audio_s / best,
        "live_48k_hop_us": hop_us,
        "live_48k_core_fraction": live_fraction,
        "live_16k": {
            "telephone": {"hop_us": tel16_us, "core_fraction": tel16},
            "wide": {"hop_us": wide16_us, "core_fraction": wide16},
        },
        "live_8k": {"telephone": {"hop_us": tel8_us, "core_fraction": tel8}},
        "threads": 1,
    });
    println!(
        "summerd eGeMAPS: {} clips, {:.1} s of audio in {:.3} CPU s ({:.2} ms a clip, {:.0}x real \
         time, one thread)",
        clips.len(),
        audio_s,
        best,
        best * 1e3 / clips.len() as f64,
        audio_s / best
    );
    println!(
        "live stream (48 kHz, 20 ms chunks, resampling included): {hop_us:.1} us per 10 ms hop = \
         {:.3} % of one core",
        100.0 * live_fraction
    );
    println!(
        "live stream at 16 kHz: telephone band {tel16_us:.1} us a hop ({:.3} % of a core), wide \
         {wide16_us:.1} us ({:.3} %)",
        100.0 * tel16,
        100.0 * wide16
    );
    println!(
        "live stream at 8 kHz (G.711): telephone band {tel8_us:.1} us a hop ({:.3} % of a core)",
        100.0 * tel8
    );
    std::fs::create_dir_all("target/bench").expect("target/bench");
    std::fs::write(
        "target/bench/acoustic_speed.json",
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write");
}

/// The steady-state cost of one live stream at `rate` heard through `band`: (microseconds a
/// 10 ms hop, fraction of one core), the best of 3 passes.
fn live(rate: u32, band: Band) -> (f64, f64) {
    let n = rate as usize * 60;
    let signal: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let f0 = 140.0 + 20.0 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
            let ph = 2.0 * std::f32::consts::PI * f0 * t;
            0.3 * (ph.sin() + 0.5 * (2.0 * ph).sin() + 0.25 * (3.0 * ph).sin())
        })
        .collect();
    let chunk = rate as usize / 50;
    let warm = n / 4;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let settings = Settings {
            band,
            ..Settings::default()
        };
        let mut live = AcousticStream::new(rate, settings).expect("rate");
        for c in signal[..warm].chunks(chunk) {
            live.push(c);
        }
        let t = cpu_now();
        for c in signal[warm..].chunks(chunk) {
            live.push(c);
        }
        best = best.min(cpu_now() - t);
    }
    let live_s = (n - warm) as f64 / f64::from(rate);
    (best / (live_s * 100.0) * 1e6, best / live_s)
}

//! One channel per speaker, with real parts: a stereo call made by espeak-ng and GStreamer
//! (demo/make_call.py --stereo, the agent on channel 0 and the customer on channel 1), the daemon
//! with the default model, the reference ASR worker on the tap, two G.711 RTP legs from a
//! gst-launch sender joined by the `rtp-pcmu-legs` template, the call as stereo Opus RTP, and a
//! map naming a channel the media lacks.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{Daemon, attach, call_segments, collect, eventually, free_port, metric};
use serde_json::{Value, json};

fn channels() -> Value {
    json!({"0": "agent", "1": "customer"})
}

/// The script's speakers, in order.
fn speakers(call: &Value) -> Vec<String> {
    call["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["speaker"].as_str().unwrap().to_string())
        .collect()
}

fn ended(d: &Daemon, id: &str) {
    let done = eventually(Duration::from_secs(60), || {
        (d.stream_state(id).as_deref() == Some("ended")).then_some(())
    });
    assert!(done.is_some(), "stream {id} did not end:\n{}", d.log());
}

fn listed(d: &Daemon, id: &str) -> Value {
    let r = d.control(json!({"cmd": "list"}));
    r["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {r}"))
}

#[test]
fn a_stereo_call_through_the_reference_asr_gives_each_voice_its_channels_speaker() {
    let dir = tempfile::tempdir().unwrap();
    let call = common::short_stereo_call(dir.path());
    assert_eq!(call["channels"], channels());
    let d = common::model_daemon();
    let media = call["media"].as_str().unwrap();
    let (events, said) = common::through_worker(
        &d,
        dir.path(),
        json!({"id": "stereo", "uri": format!("file://{media}"), "template": "file",
               "channels": channels()}),
        speakers(&call).len(),
    );
    let who: Vec<&str> = events
        .iter()
        .map(|e| e["speaker"].as_str().unwrap())
        .collect();
    // Each line's speaker is its channel's: no clustering, no guessing.
    assert_eq!(
        who,
        speakers(&call),
        "events: {events:#?}\nASR: {said}\ndaemon: {}",
        d.log()
    );
    for (e, l) in events.iter().zip(call["lines"].as_array().unwrap()) {
        assert_eq!(e["modalities"]["audio"], true, "{e}");
        let (got, want) = (e["start"].as_f64().unwrap(), l["start"].as_f64().unwrap());
        assert!((got - want).abs() <= 0.3, "{e}\n{l}");
    }
    let info = listed(&d, "stereo");
    assert_eq!(info["audio_channels"], 2, "{info}");
    assert_eq!(info["described"], json!(["agent", "customer"]), "{info}");
}

#[test]
fn an_excluded_channel_gets_nothing_and_a_missing_channel_is_an_error_the_stream_survives() {
    let dir = tempfile::tempdir().unwrap();
    let stereo = common::short_stereo_call(&dir.path().join("stereo"));
    let mono = common::short_call(&dir.path().join("mono"));
    let d = common::model_daemon();
    let (_ctx, sub) = common::subscribe(&d, "emotion.");
    let (_lctx, life) = common::subscribe(&d, "lifecycle.");
    let fast = json!({"sync": "false"});
    let wav = |c: &Value| {
        std::path::Path::new(c["media"].as_str().unwrap())
            .with_file_name("call.wav")
            .display()
            .to_string()
    };
    // s: the agent is not inferred (EU AI Act); m: a mono recording under a two-channel map.
    attach(
        &d,
        json!({"id": "s", "uri": format!("file://{}", wav(&stereo)), "template": "file",
               "channels": channels(), "infer_speakers": ["customer"], "options": fast}),
    );
    attach(
        &d,
        json!({"id": "m", "uri": format!("file://{}", wav(&mono)), "template": "file",
               "channels": channels(), "options": fast}),
    );
    ended(&d, "s");
    ended(&d, "m");
    // The excluded agent's channel has no descriptors at all.
    let s = listed(&d, "s");
    assert_eq!(
        (&s["audio_channels"], &s["described"]),
        (&json!(2), &json!(["customer"])),
        "{s}"
    );
    let m = listed(&d, "m");
    assert_eq!(m["audio_channels"], 1, "{m}");

    let mut segments = call_segments(&stereo, "s");
    segments.extend(call_segments(&mono, "m"));
    common::push_segments(&d.transcripts, &segments);
    let want = 1 + 3;
    let mut events = collect(&sub, Duration::from_secs(60), |g| g.len() >= want);
    events.extend(collect(&sub, Duration::from_secs(1), |_| false));
    assert_eq!(events.len(), want, "{events:#?}\n{}", d.log());
    let of = |id: &str| -> Vec<&Value> { events.iter().filter(|e| e["stream"] == id).collect() };
    let s_events = of("s");
    assert_eq!(s_events.len(), 1, "only the customer's line: {s_events:#?}");
    assert_eq!(
        (&s_events[0]["speaker"], &s_events[0]["modalities"]["audio"]),
        (&json!("customer"), &json!(true))
    );
    // `summerd replay` with the same stream config reads the same channel: the same answer.
    let cfg = dir.path().join("replay.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[[streams]]\nid = \"s\"\nuri = \"file://{}\"\ntemplate = \"file\"\n\
             infer_speakers = [\"customer\"]\nchannels = {{ \"0\" = \"agent\", \"1\" = \"customer\" }}\n",
            common::model_config(None),
            wav(&stereo)
        ),
    )
    .unwrap();
    let segs = dir.path().join("s.jsonl");
    std::fs::write(&segs, call_segments(&stereo, "s").join("\n") + "\n").unwrap();
    let out = common::succeed(common::replay(&wav(&stereo), &segs, &cfg).args(["--stream", "s"]));
    let replayed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replayed.len(), 1, "{replayed:#?}");
    let (r, l) = (&replayed[0], s_events[0]);
    assert_eq!((&r["seq"], &r["speaker"]), (&json!(2), &json!("customer")));
    assert_eq!(r["modalities"]["audio"], true, "{r}");
    for (k, v) in r["probs"].as_object().unwrap() {
        let (a, b) = (v.as_f64().unwrap(), l["probs"][k].as_f64().unwrap());
        assert!((a - b).abs() < 0.02, "{k}: replay {a} live {b}");
    }
    assert_eq!(
        metric(
            &d.scrape(),
            "summerd_utterances_total{outcome=\"excluded\"}"
        ),
        Some(2.0)
    );
    // The mono stream keeps running on what it has: the agent's channel 0 is described, the
    // customer's lines go on without a voice.
    for e in of("m") {
        let agent = e["speaker"] == "agent";
        assert_eq!(e["modalities"]["audio"], agent, "{e}");
        assert_eq!(e["modalities"]["text"], true, "{e}");
    }
    let life = collect(&life, Duration::from_secs(1), |_| false);
    let m_life: Vec<&Value> = life.iter().filter(|e| e["stream"] == "m").collect();
    let error = m_life
        .iter()
        .find(|e| e["type"] == "stream.error")
        .unwrap_or_else(|| panic!("no stream.error for m: {life:#?}"));
    let reason = error["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 channel(s)") && reason.contains("customer (channel 1)"),
        "{reason}"
    );
    assert!(
        m_life
            .iter()
            .any(|e| e["type"] == "stream.down" && e["reason"] == "end of stream"),
        "{m_life:#?}"
    );
    assert!(
        !life
            .iter()
            .any(|e| e["stream"] == "s" && e["type"] == "stream.error"),
        "{life:#?}"
    );
}

/// Stops a sender when dropped.
struct Sender(Child);

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Tap audio of one stream: (pts, interleaved S16 samples) per message.
type TapFrames = Vec<(f64, Vec<i16>)>;

/// Read the tap until `until`: each listed stream's frames, every header checked by `check`.
fn read_tap(
    tap: &zmq::Socket,
    streams: &[&str],
    until: Instant,
    check: impl Fn(&Value),
) -> Vec<TapFrames> {
    let mut out = vec![Vec::new(); streams.len()];
    while Instant::now() < until {
        if let Ok(parts) = tap.recv_multipart(0) {
            let h: Value = serde_json::from_slice(&parts[1]).unwrap();
            check(&h);
            if let Some(k) = streams.iter().position(|s| h["stream"] == *s) {
                let pcm = parts[2]
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                out[k].push((h["pts"].as_f64().unwrap(), pcm));
            }
        }
    }
    out
}

/// RMS of channel `ch` of `n`-channel tap audio between two media times.
fn rms(frames: &[(f64, Vec<i16>)], n: usize, from: f64, to: f64, ch: usize) -> f64 {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (pts, pcm) in frames {
        for (i, f) in pcm.chunks_exact(n).enumerate() {
            let t = pts + i as f64 / 16_000.0;
            if t >= from && t < to {
                sum += f64::from(f[ch]).powi(2);
                count += 1;
            }
        }
    }
    (sum / count.max(1) as f64).sqrt()
}

/// In each line's middle, its speaker's channel of two-channel tap audio is loud and the other
/// quiet.
fn each_line_on_its_channel(call: &Value, frames: &[(f64, Vec<i16>)]) {
    for l in call["lines"].as_array().unwrap() {
        let (s, e) = (
            l["start"].as_f64().unwrap() + 0.3,
            l["end"].as_f64().unwrap() - 0.3,
        );
        let own = usize::from(l["speaker"] == "customer");
        let (loud, quiet) = (rms(frames, 2, s, e, own), rms(frames, 2, s, e, 1 - own));
        assert!(
            loud > 300.0 && loud > 10.0 * quiet,
            "{l}: own channel RMS {loud:.0}, other {quiet:.0}"
        );
    }
}

/// Segments of the call pushed for stream `id`: one emotion event per line, with its channel's
/// speaker and audio.
fn events_have_each_channels_speaker(d: &Daemon, sub: &zmq::Socket, call: &Value, id: &str) {
    common::push_segments(&d.transcripts, &call_segments(call, id));
    let n = speakers(call).len();
    let events = collect(sub, Duration::from_secs(30), |g| g.len() >= n);
    let who: Vec<&str> = events
        .iter()
        .map(|e| e["speaker"].as_str().unwrap())
        .collect();
    assert_eq!(who, speakers(call), "{events:#?}\n{}", d.log());
    for e in &events {
        assert_eq!(e["modalities"]["audio"], true, "{e}");
    }
    let info = listed(d, id);
    assert_eq!(info["audio_channels"], 2, "{info}");
}

/// The tap, subscribed to `streams`.
fn tap(d: &Daemon, streams: &[&str]) -> zmq::Socket {
    let tap = zmq::Context::new().socket(zmq::SUB).unwrap();
    for s in streams {
        tap.set_subscribe(s.as_bytes()).unwrap();
    }
    tap.set_rcvhwm(100_000).unwrap();
    tap.set_rcvtimeo(100).unwrap();
    tap.connect(&d.tap).unwrap();
    tap
}

/// The short stereo call made in `dir`, and its uncompressed wav for a gst-launch sender.
fn stereo_call_wav(dir: &std::path::Path) -> (Value, String) {
    let call = common::short_stereo_call(dir);
    let wav = std::path::Path::new(call["media"].as_str().unwrap())
        .with_file_name("call.wav")
        .display()
        .to_string();
    (call, wav)
}

/// `wav`'s two channels as two G.711 mu-law RTP legs to `ports`, in real time.
fn send_legs(wav: &str, ports: (u16, u16)) -> Sender {
    let leg = |pad: usize, port: u16| {
        format!(
            "d.src_{pad} ! queue ! audioconvert ! audio/x-raw,channels=1 ! mulawenc ! rtppcmupay ! \
             udpsink host=127.0.0.1 port={port}"
        )
    };
    let line = format!(
        "filesrc location={wav} ! wavparse ! audioconvert ! audioresample ! \
         audio/x-raw,format=S16LE,rate=8000,channels=2 ! deinterleave name=d {} {}",
        leg(0, ports.0),
        leg(1, ports.1)
    );
    Sender(common::gst_launch(&line))
}

#[test]
fn two_rtp_legs_are_one_call_with_a_speaker_per_leg() {
    let dir = tempfile::tempdir().unwrap();
    let (call, wav) = stereo_call_wav(dir.path());
    let d = common::model_daemon();
    let (_ctx, sub) = common::subscribe(&d, "emotion.");
    let tap = tap(&d, &["legs", "mixed"]);
    let (a, b, c, e) = (free_port(), free_port(), free_port(), free_port());
    attach(
        &d,
        json!({"id": "legs", "uri": format!("udp://127.0.0.1:{a}"), "template": "rtp-pcmu-legs",
               "channels": channels(),
               "options": {"uri_b": format!("udp://127.0.0.1:{b}")}}),
    );
    // The same template without a map: both legs mixed to one channel.
    attach(
        &d,
        json!({"id": "mixed", "uri": format!("udp://127.0.0.1:{c}"), "template": "rtp-pcmu-legs",
               "options": {"uri_b": format!("udp://127.0.0.1:{e}")}}),
    );
    std::thread::sleep(Duration::from_secs(1));
    let sender = send_legs(&wav, (a, b));
    let mixed_sender = send_legs(&wav, (c, e));
    // The call plays in real time (about 10 s); the tap carries both legs, interleaved.
    let seconds = call["seconds"].as_f64().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds + 3.0);
    let got = read_tap(&tap, &["legs", "mixed"], deadline, |h| {
        if h["stream"] == "mixed" {
            assert_eq!(
                (&h["channels"], h.get("speakers")),
                (&json!(1), None),
                "{h}"
            );
        } else {
            assert_eq!(
                (&h["channels"], &h["speakers"]),
                (&json!(2), &json!(["agent", "customer"])),
                "{h}"
            );
        }
    });
    let (frames, mixed) = (&got[0], &got[1]);
    drop(sender);
    drop(mixed_sender);
    assert!(
        !frames.is_empty() && !mixed.is_empty(),
        "no tap audio\n{}",
        d.log()
    );
    // Each line on its speaker's leg; the mix without a map carries every line.
    each_line_on_its_channel(&call, frames);
    for l in call["lines"].as_array().unwrap() {
        let (s, e) = (
            l["start"].as_f64().unwrap() + 0.3,
            l["end"].as_f64().unwrap() - 0.3,
        );
        let mix = rms(mixed, 1, s, e, 0);
        assert!(mix > 100.0, "{l}: the mix's RMS {mix:.0}");
    }
    events_have_each_channels_speaker(&d, &sub, &call, "legs");
}

/// The stereo call as one Opus RTP stream (two channels in each packet, 48 kHz), in real time,
/// to `port`.
fn send_stereo_opus(wav: &str, port: u16) -> Sender {
    Sender(common::gst_launch(&format!(
        "filesrc location={wav} ! wavparse ! audioconvert ! audioresample ! \
         audio/x-raw,rate=48000,channels=2 ! opusenc bitrate=48000 ! rtpopuspay ! \
         udpsink host=127.0.0.1 port={port}"
    )))
}

#[test]
fn a_stereo_opus_rtp_call_gives_each_channel_its_speaker() {
    let dir = tempfile::tempdir().unwrap();
    let (call, wav) = stereo_call_wav(dir.path());
    let d = common::model_daemon();
    let (_ctx, sub) = common::subscribe(&d, "emotion.");
    let tap = tap(&d, &["opus"]);
    let port = free_port();
    attach(
        &d,
        json!({"id": "opus", "uri": format!("udp://127.0.0.1:{port}"), "template": "rtp-opus",
               "channels": channels()}),
    );
    std::thread::sleep(Duration::from_secs(1));
    let sender = send_stereo_opus(&wav, port);
    let seconds = call["seconds"].as_f64().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds + 3.0);
    let got = read_tap(&tap, &["opus"], deadline, |h| {
        assert_eq!(
            (&h["channels"], &h["speakers"]),
            (&json!(2), &json!(["agent", "customer"])),
            "{h}"
        );
    });
    drop(sender);
    assert!(!got[0].is_empty(), "no tap audio\n{}", d.log());
    each_line_on_its_channel(&call, &got[0]);
    events_have_each_channels_speaker(&d, &sub, &call, "opus");
}

/// A call whose second channel goes away mid-call (a leg dropped: two channels, then one,
/// joined by GStreamer's `concat`): a `stream.error` names the change and the speaker left
/// without a channel, and the stream goes on to its end on what it has: the agent's later line
/// with audio, the customer's later line without, their earlier lines both with audio.
#[test]
fn a_channel_that_goes_away_mid_call_is_an_error_and_the_stream_goes_on() {
    let d = Daemon::start_custom(
        |dir, p| {
            std::fs::write(
                dir.join("pipelines/drop-leg.gst"),
                "# schemes: test\n# live: no\n\
                 concat name=c ! audioconvert ! capsfilter caps={audio_caps} \
                 ! appsink name=audio sync=false async=false \
                 audiotestsrc num-buffers=20 samplesperbuffer=1600 freq=200 \
                 ! audio/x-raw,rate=16000,channels=2,channel-mask=(bitmask)0x3 ! c. \
                 audiotestsrc num-buffers=20 samplesperbuffer=1600 freq=300 \
                 timestamp-offset=2000000000 ! audio/x-raw,rate=16000,channels=1 ! c.\n",
            )
            .unwrap();
            common::model_config(Some(p.1)).replace(
                &format!("dir = \"{}\"", common::repo().join("pipelines").display()),
                &format!("dir = \"{}\"", dir.join("pipelines").display()),
            )
        },
        &[],
        false,
    );
    let (_ctx, sub) = common::subscribe(&d, "emotion.");
    let (_lctx, life) = common::subscribe(&d, "lifecycle.");
    attach(
        &d,
        json!({"id": "leg", "uri": "test://drop-leg", "template": "drop-leg", "channels": channels()}),
    );
    ended(&d, "leg");
    assert_eq!(listed(&d, "leg")["audio_channels"], 1);
    let seg = |seq: u64, speaker: &str, start: f64| {
        json!({"v": 1, "stream": "leg", "seq": seq, "start": start, "end": start + 1.0,
               "speaker": speaker, "text": "I would like to cancel my order."})
        .to_string()
    };
    common::push_segments(
        &d.transcripts,
        &[
            seg(1, "agent", 0.5),
            seg(2, "customer", 0.5),
            seg(3, "agent", 2.5),
            seg(4, "customer", 2.5),
        ],
    );
    let events = collect(&sub, Duration::from_secs(30), |g| g.len() >= 4);
    assert_eq!(events.len(), 4, "{events:#?}\n{}", d.log());
    let life = collect(&life, Duration::from_secs(1), |_| false);
    let errors: Vec<&str> = life
        .iter()
        .filter(|e| e["type"] == "stream.error")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        errors
            .iter()
            .any(|r| r.contains("audio channels changed from 2 to 1")
                && r.contains("customer (channel 1)")),
        "{life:#?}"
    );
    let audio = |seq: u64| {
        events
            .iter()
            .find(|e| e["seq"] == seq)
            .map(|e| e["modalities"]["audio"].clone())
    };
    assert_eq!(
        [audio(1), audio(2), audio(3), audio(4)],
        [
            Some(json!(true)),
            Some(json!(true)),
            Some(json!(true)),
            Some(json!(false))
        ],
        "{events:#?}"
    );
    assert!(
        life.iter()
            .any(|e| e["type"] == "stream.down" && e["reason"] == "end of stream"),
        "{life:#?}"
    );
}

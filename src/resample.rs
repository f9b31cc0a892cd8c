//! Streaming mono resampling with rubato (an FFT resampler with a fixed chunk), to 16 kHz (the
//! rate everything downstream works at) or to any other rate, with caller-owned buffers: input
//! is gathered into an internal chunk, and each full chunk is resampled into a buffer allocated
//! once. The resampler's delay is removed, so that output sample n sits at input time
//! n / target s: timelines stay aligned.

use rubato::{FftFixedInOut, Resampler};

/// The rate everything downstream works at.
pub const TARGET_RATE: u32 = 16_000;

/// Errors building a resampler.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// The input rate, or the rate asked for, is unusable.
    #[error("cannot resample from {rate} Hz: {message}")]
    Rate {
        /// Input rate.
        rate: u32,
        /// The resampler's message.
        message: String,
    },
}

/// An error unless audio at `rate` Hz can be resampled to `target` Hz.
pub fn check(rate: u32, target: u32) -> Result<(), ResampleError> {
    for (what, r) in [("the input", rate), ("the target", target)] {
        if !(4000..=384_000).contains(&r) {
            return Err(ResampleError::Rate {
                rate,
                message: format!("{what} ({r} Hz) is outside 4-384 kHz"),
            });
        }
    }
    Ok(())
}

/// A streaming mono resampler from one rate to another (16 kHz for [`Resample::to_16k`]).
pub struct Resample {
    inner: Option<Inner>,
}

struct Inner {
    rs: FftFixedInOut<f32>,
    rate: u32,
    target: u32,
    pending: Vec<f32>,
    out: Vec<Vec<f32>>,
    skip: usize,
    delay: usize,
    in_total: u64,
    out_total: u64,
}

impl Resample {
    /// A resampler for input at `rate` Hz to 16 kHz (passes 16 kHz through untouched).
    pub fn to_16k(rate: u32) -> Result<Self, ResampleError> {
        Self::new(rate, TARGET_RATE)
    }

    /// A resampler for input at `rate` Hz to `target` Hz (passes `target` through untouched).
    pub fn new(rate: u32, target: u32) -> Result<Self, ResampleError> {
        if rate == target {
            return Ok(Resample { inner: None });
        }
        check(rate, target)?;
        // ~10 ms input chunks keep the added latency small.
        let chunk = (rate / 100).max(1) as usize;
        let rs =
            FftFixedInOut::<f32>::new(rate as usize, target as usize, chunk, 1).map_err(|e| {
                ResampleError::Rate {
                    rate,
                    message: e.to_string(),
                }
            })?;
        let out = rs.output_buffer_allocate(true);
        let skip = rs.output_delay();
        Ok(Resample {
            inner: Some(Inner {
                pending: Vec::with_capacity(rs.input_frames_max()),
                rs,
                rate,
                target,
                out,
                skip,
                delay: skip,
                in_total: 0,
                out_total: 0,
            }),
        })
    }

    /// Resample `input`, appending the output samples that are ready to `output`.
    pub fn push(&mut self, input: &[f32], output: &mut Vec<f32>) {
        let Some(s) = &mut self.inner else {
            output.extend_from_slice(input);
            return;
        };
        s.in_total += input.len() as u64;
        let mut rest = input;
        while !rest.is_empty() {
            let need = s.rs.input_frames_next() - s.pending.len();
            let take = need.min(rest.len());
            s.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if s.pending.len() == s.rs.input_frames_next() {
                let (_, produced) =
                    s.rs.process_into_buffer(&[&s.pending], &mut s.out, None)
                        .expect("buffers are sized by the resampler itself");
                s.emit(produced, output, u64::MAX);
                s.pending.clear();
            }
        }
    }

    /// End of input: push out everything still inside (the partial chunk and the
    /// resampler's delay), exactly as many samples as the input's duration makes at the target
    /// rate, and start afresh.
    pub fn flush(&mut self, output: &mut Vec<f32>) {
        let Some(s) = &mut self.inner else { return };
        let expected =
            (s.in_total * u64::from(s.target) + u64::from(s.rate) / 2) / u64::from(s.rate);
        // Zero-padded chunks push the partial chunk and then the delay line out.
        let mut input = std::mem::take(&mut s.pending);
        let mut guard = 0;
        while s.out_total < expected && guard < 1000 {
            input.resize(s.rs.input_frames_next(), 0.0);
            let (_, produced) =
                s.rs.process_into_buffer(&[&input], &mut s.out, None)
                    .expect("buffers are sized by the resampler itself");
            s.emit(produced, output, expected);
            input.clear();
            guard += 1;
        }
        s.rs.reset();
        s.skip = s.delay;
        s.in_total = 0;
        s.out_total = 0;
        s.pending = input;
    }
}

impl Inner {
    /// Append `produced` fresh samples, less the delay still to skip, up to `limit` in all.
    fn emit(&mut self, produced: usize, output: &mut Vec<f32>, limit: u64) {
        let drop = self.skip.min(produced);
        self.skip -= drop;
        let room = limit
            .saturating_sub(self.out_total)
            .min((produced - drop) as u64) as usize;
        output.extend_from_slice(&self.out[0][drop..drop + room]);
        self.out_total += room as u64;
    }
}

/// Channel `ch` of `n` interleaved channels, appended to `out`.
pub fn deinterleave(samples: &[f32], ch: usize, n: usize, out: &mut Vec<f32>) {
    out.extend(samples.iter().skip(ch).step_by(n.max(1)).copied());
}

/// 16 kHz float samples to S16LE-ready integers (clipped).
pub fn to_i16(x: &[f32], out: &mut Vec<i16>) {
    out.extend(
        x.iter()
            .map(|v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| (i as f32 * hz * std::f32::consts::TAU / rate as f32).sin() * 0.5)
            .collect()
    }

    /// Frequency by zero crossings.
    fn freq(x: &[f32], rate: u32) -> f32 {
        let crossings = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        crossings as f32 * rate as f32 / x.len() as f32
    }

    #[test]
    fn rates_and_chunkings_agree_and_keep_the_pitch() {
        for rate in [8000, 16000, 22050, 32000, 44100, 48000] {
            let input = tone(rate, 440.0, 1.0);
            let mut whole = Vec::new();
            Resample::to_16k(rate).unwrap().push(&input, &mut whole);
            for chunk in [1, 7, 160, 441, 4096] {
                let mut r = Resample::to_16k(rate).unwrap();
                let mut out = Vec::new();
                for c in input.chunks(chunk) {
                    r.push(c, &mut out);
                }
                assert_eq!(out, whole, "rate {rate}, chunk {chunk}");
            }
            // Nearly a second out (the last partial chunk waits for more input).
            assert!(
                whole.len() as f32 > 16000.0 * 0.97,
                "rate {rate}: {}",
                whole.len()
            );
            let f = freq(&whole[800..], TARGET_RATE);
            assert!((f - 440.0).abs() < 5.0, "rate {rate}: {f} Hz");
        }
    }

    #[test]
    fn delay_is_compensated() {
        // An impulse at input time 0.5 s must come out near output sample 8000.
        let rate = 44100;
        let mut x = vec![0.0f32; rate as usize];
        x[rate as usize / 2] = 1.0;
        let mut out = Vec::new();
        Resample::to_16k(rate).unwrap().push(&x, &mut out);
        let peak = out
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap()
            .0;
        assert!((peak as i64 - 8000).abs() <= 2, "peak at {peak}");
    }

    #[test]
    fn flush_yields_exactly_the_input_duration() {
        for rate in [8000, 16000, 22050, 44100, 48000] {
            let input = tone(rate, 300.0, 3.0);
            let mut r = Resample::to_16k(rate).unwrap();
            let mut out = Vec::new();
            for c in input.chunks(1000) {
                r.push(c, &mut out);
            }
            r.flush(&mut out);
            assert_eq!(out.len(), 48000, "rate {rate}");
            // And it starts afresh.
            let mut again = Vec::new();
            r.push(&input, &mut again);
            r.flush(&mut again);
            assert_eq!(again, out, "rate {rate}");
        }
    }

    /// RMS of `x` (past the start).
    fn rms(x: &[f32]) -> f32 {
        let x = &x[400..];
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn down_to_8k_keeps_the_band_and_drops_what_is_above() {
        let mut r = Resample::new(16_000, 8_000).unwrap();
        let mut kept = Vec::new();
        r.push(&tone(16_000, 1000.0, 1.0), &mut kept);
        r.flush(&mut kept);
        assert_eq!(kept.len(), 8000);
        assert!((freq(&kept, 8000) - 1000.0).abs() < 5.0);
        assert!(
            (rms(&kept) - 0.5 / 2f32.sqrt()).abs() < 0.01,
            "{}",
            rms(&kept)
        );
        // 6 kHz is above 8 kHz's Nyquist: gone, not folded back to 2 kHz.
        let mut gone = Vec::new();
        r.push(&tone(16_000, 6000.0, 1.0), &mut gone);
        r.flush(&mut gone);
        assert!(rms(&gone) < 0.005, "{}", rms(&gone));
    }

    #[test]
    fn bad_rates_are_errors() {
        assert!(Resample::to_16k(0).is_err());
        assert!(Resample::to_16k(1_000_000).is_err());
    }

    #[test]
    fn i16_conversion_clips() {
        let mut v = Vec::new();
        to_i16(&[0.0, 1.5, -2.0, 0.5], &mut v);
        assert_eq!(v, vec![0, 32767, -32767, 16384]);
    }
}

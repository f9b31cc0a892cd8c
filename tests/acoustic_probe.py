"""Black-box measurements of openSMILE 2.6.0's eGeMAPS v02 that summerd's acoustic stage
reproduces (src/acoustic/). openSMILE is used only as an oracle from the dev venv: its own
configuration files (from the installed wheel) are copied to a temporary directory and one
line is changed, so that an intermediate level is written out instead of the LLDs. Nothing of
openSMILE is copied into summerd; this script re-derives, from openSMILE's outputs alone, each
reading the Rust code documents, and prints a verdict for each.

Run: `bash tests/setup.sh python tests/acoustic_probe.py` (about a minute; needs the dev venv).
"""

import os
import shutil
import sys
import tempfile

import numpy as np
import opensmile
import scipy.signal as ss

FS = 16000
HAM = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(320) / 319)
FEATURES = opensmile.FeatureSet.eGeMAPSv02
LLD = opensmile.FeatureLevel.LowLevelDescriptors


def probe(tmp, levels):
    """A Smile whose 'lld' output is the given intermediate levels of eGeMAPS v02."""
    src = os.path.join(tmp, "egemaps", "v02", "eGeMAPSv02.conf")
    conf = open(src).read().replace(
        "reader.dmLevel = egemapsv02_lldsetE_smo;egemapsv02_lldsetF_smo",
        f"reader.dmLevel = {levels}")
    path = os.path.join(tmp, "egemaps", "v02", f"probe_{abs(hash(levels))}.conf")
    open(path, "w").write(conf)
    return opensmile.Smile(feature_set=path, feature_level="lld")


def speech_like(seconds=2.0, seed=0):
    """A glottal pulse train with drifting F0 through three formant resonators, plus noise,
    quantised to 16 bits (openSMILE truncates float input to 16-bit, so both tools must see
    16-bit samples)."""
    rng = np.random.RandomState(seed)
    n = int(FS * seconds)
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * np.arange(n) / FS)
    phase = np.cumsum(f0 / FS)
    x = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    for f, bw in ((650, 90), (1300, 110), (2600, 160)):
        r = np.exp(-np.pi * bw / FS)
        x = ss.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / FS), r * r], x)
    x = x / np.abs(x).max() * 0.3 + 0.002 * rng.randn(n)
    return (np.round(x * 32767) / 32768).astype(np.float32)


def levinson(r, p=11):
    a = np.zeros(p + 1)
    a[0] = 1.0
    e = r[0]
    for i in range(1, p + 1):
        k = -(r[i] + a[1:i] @ r[i - 1:0:-1]) / e
        a[1:i + 1] = np.r_[a[1:i] + k * a[i - 1:0:-1], k]
        e *= 1 - k * k
    return a[1:]


def verdict(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return ok


def main():
    cfg = os.path.join(os.path.dirname(opensmile.__file__), "core", "config")
    tmp = tempfile.mkdtemp(prefix="smile-probe-")
    shutil.copytree(cfg, tmp, dirs_exist_ok=True)
    x = speech_like()
    results = []

    # 1. The LPC's input: the lowest 110 bins of the centred 20 ms frame's spectrum, DC twice,
    #    inverse-transformed on the 11 kHz grid (352 points), first 220 samples.
    lpc_in = probe(tmp, "gemapsv01b_outpR").process_signal(x, FS).to_numpy().astype(float)
    errs = []
    for t in range(20, 180, 7):
        buf = np.zeros(512)
        buf[96:416] = x[t * 160:t * 160 + 320] * HAM
        z = np.zeros(177, complex)
        z[:110] = np.fft.rfft(buf)[:110]
        z[0] *= 2
        y = np.fft.irfft(z, 352)[:220]
        scale = (y @ lpc_in[t]) / (y @ y)
        errs.append(np.abs(lpc_in[t] - scale * y).max() / np.abs(lpc_in[t]).max())
    results.append(verdict("formant LPC input", max(errs) < 1e-3,
                           f"largest difference {max(errs):.1e} of the frame's peak"))

    # 2. The formants: roots of 1 - a1 z^-1 - ... (the predictor's signs flipped).
    lv = probe(tmp, "gemapsv01b_lpc;gemapsv01b_formants").process_signal(x, FS)
    lpc, freq = lv.iloc[:, :11].to_numpy(), lv.iloc[:, 11:16].to_numpy()
    worst = {"flipped": 0.0, "as is": 0.0}
    for t in range(20, 180, 5):
        for name, sign in (("flipped", -1), ("as is", 1)):
            z = np.roots(np.r_[1, sign * lpc[t]])
            z = z[z.imag > 0]
            f = np.sort(np.angle(z) * 11000 / (2 * np.pi))
            f = f[(f > 50) & (f < 5450)][:3]
            worst[name] = max(worst[name], np.abs(f - freq[t, :len(f)]).max())
    results.append(verdict("formants from the sign-flipped predictor",
                           worst["flipped"] < 1.0 < worst["as is"],
                           f"largest F1-F3 difference {worst['flipped']:.2f} Hz flipped, "
                           f"{worst['as is']:.0f} Hz as is"))

    # 3. "H1-H2" follows the 2nd harmonic's level, not the 1st's.
    t = np.arange(FS) / FS
    smile = opensmile.Smile(feature_set=FEATURES, feature_level=LLD)
    h1h2 = []
    for a2 in (1.0, 0.5):
        sig = 0.1 * (np.sin(2 * np.pi * 200 * t) + a2 * np.sin(2 * np.pi * 400 * t)
                     + 0.3 * np.sin(2 * np.pi * 600 * t)
                     + 0.05 * sum(np.sin(2 * np.pi * k * 200 * t) for k in range(4, 20)))
        h1h2.append(smile.process_signal(sig.astype(np.float32), FS)
                    ["logRelF0-H1-H2_sma3nz"].iloc[30:-30].median())
    drop = h1h2[0] - h1h2[1]
    results.append(verdict("H1-H2 is the 2nd harmonic over the 3rd", abs(drop - 6.02) < 0.3,
                           f"halving the 2nd harmonic changes it by {-drop:+.2f} dB (-6.02 if it "
                           f"is the 2nd over the 3rd; +6.02 if it were the 1st over the 2nd)"))

    # 4. Loudness is the mean, not the sum, of the 26 compressed auditory bands.
    aud = probe(tmp, "gemapsv01b_audspec;gemapsv01b_loudness").process_signal(x, FS).to_numpy()
    ratio = np.median(aud[20:180, 26] / aud[20:180, :26].mean(axis=1))
    results.append(verdict("loudness = mean of the auditory bands", abs(ratio - 1) < 1e-4,
                           f"loudness / band mean = {ratio:.6f}"))

    # 5. Float input is truncated to 16 bits (so the bench feeds both tools 16-bit files): on a
    #    quiet signal sitting 0.4 of a step above the 16-bit grid, openSMILE's mel bands are
    #    several times closer to those of the truncated samples than of the rounded or floats.
    quiet = (np.round(0.002 * np.sin(2 * np.pi * 300 * t) * 32768) + 0.4) / 32768
    quiet = quiet.astype(np.float32)
    bands = probe(tmp, "gemapsv01b_melspec1").process_signal(quiet, FS).to_numpy()[50, :26]

    def mel_bands(sig):
        mel = lambda f: 1127 * np.log(1 + f / 700)
        edges = 700 * (np.exp((mel(20) + (mel(8000) - mel(20)) * np.arange(28) / 27) / 1127) - 1)
        fk = np.arange(257) * 31.25
        power = np.abs(np.fft.rfft(sig[50 * 160:50 * 160 + 320] * HAM, 512)) ** 2
        out = []
        for b in range(26):
            lo, c, hi = edges[b:b + 3]
            w = np.where(fk <= c, (mel(fk) - mel(lo)) / (mel(c) - mel(lo)),
                         (mel(hi) - mel(fk)) / (mel(hi) - mel(c)))
            w[(fk < lo) | (fk > hi) | (fk < lo + 1.5 * 31.25)] = 0
            out.append((w * power).sum())
        return np.array(out)

    err = {name: np.median(np.abs(mel_bands(sig) - bands) / bands) for name, sig in (
        ("truncated", np.trunc(quiet.astype(np.float64) * 32768) / 32768),
        ("rounded", np.round(quiet.astype(np.float64) * 32768) / 32768),
        ("float", quiet.astype(np.float64)))}
    results.append(verdict("float input truncated to 16 bits",
                           err["truncated"] < 0.2 * min(err["rounded"], err["float"]),
                           ", ".join(f"{k} {v:.1e}" for k, v in err.items())
                           + " (median relative band difference)"))

    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{sum(results)}/{len(results)} readings confirmed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""summerd's eGeMAPS v02 against openSMILE 2.6.0 (the research-only oracle) on the EmoDB clips
in $SUMMERD_ASSETS/data/emodb/wav: agreement per functional, usefulness (leave-one-speaker-out
UAR of one logistic regression on each feature set) and speed.

Run through `make bench-acoustic`, which first runs `cargo bench --bench acoustic` (summerd's
single-thread time, target/bench/acoustic_speed.json). Writes target/bench/acoustic.json and
target/bench/acoustic.png and prints the figures with the goals of issue #3.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "target" / "bench"
LABELS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral"}
ENERGY_SPECTRAL = ("loudness", "spectralFlux", "mfcc", "alphaRatio", "hammarberg", "slopeV", "slopeUV",
                   "equivalentSoundLevel")


def loso_uar(x, y, speakers, per_speaker):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import recall_score

    x = np.asarray(x, dtype=np.float64)
    if per_speaker:
        x = x.copy()
        for s in set(speakers):
            m = speakers == s
            mu, sd = x[m].mean(0), x[m].std(0)
            x[m] = (x[m] - mu) / np.where(sd > 0, sd, 1.0)
    pred = np.empty(len(y), dtype=object)
    for s in sorted(set(speakers)):
        test = speakers == s
        train = ~test
        xt, xs = x[train], x[test]
        if not per_speaker:
            mu, sd = xt.mean(0), xt.std(0)
            sd = np.where(sd > 0, sd, 1.0)
            xt, xs = (xt - mu) / sd, (xs - mu) / sd
        clf = LogisticRegression(C=0.1, max_iter=5000)
        clf.fit(xt, y[train])
        pred[test] = clf.predict(xs)
    return float(recall_score(y, pred, average="macro"))


def main():
    assets = Path(os.environ.get("SUMMERD_ASSETS", ROOT.parent / "shared"))
    wav_dir = assets / "data" / "emodb" / "wav"
    if not wav_dir.is_dir():
        print(f"SKIPPED: {wav_dir} is absent (set SUMMERD_ASSETS)")
        return 0
    import opensmile
    import soundfile

    files = sorted(wav_dir.glob("*.wav"))
    summerd = os.environ.get("SUMMERD_BIN", str(ROOT / "target" / "release" / "summerd"))

    # openSMILE on in-memory signals, one thread, best of 2 passes.
    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.Functionals,
    )
    signals = [soundfile.read(str(f), dtype="float32") for f in files]
    names = None
    oracle = []
    osm_cpu = float("inf")
    for _ in range(2):
        rows = []
        t = time.thread_time()
        for sig, sr in signals:
            df = smile.process_signal(sig, sr)
            rows.append(df.iloc[0].to_numpy(dtype=np.float64))
        osm_cpu = min(osm_cpu, time.thread_time() - t)
        names = list(df.columns)
        oracle = np.array(rows)

    out = subprocess.run(
        [summerd, "features", "audio", "--json", *map(str, files)],
        check=True, capture_output=True, text=True,
    ).stdout
    by_file = {json.loads(line)["file"]: json.loads(line)["functionals"] for line in out.splitlines()}
    ours = np.array([[by_file[str(f)][n] for n in names] for f in files], dtype=np.float64)
    assert np.isfinite(ours).all(), "summerd produced a non-finite functional"

    per_feature = []
    for i, n in enumerate(names):
        a, b = oracle[:, i], ours[:, i]
        r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
        rel = float(np.median(np.abs(b - a) / np.maximum(np.abs(a), 1e-12)))
        per_feature.append({
            "name": n, "r": r, "median_rel_diff": rel,
            "energy_spectral": n.startswith(ENERGY_SPECTRAL),
        })
    n90 = sum(p["r"] >= 0.9 for p in per_feature)
    es = [p for p in per_feature if p["energy_spectral"]]
    es80 = sum(p["r"] >= 0.8 for p in es)

    y = np.array([LABELS[f.name[5]] for f in files])
    speakers = np.array([f.name[:2] for f in files])
    uar = {}
    for key, x in (("opensmile", oracle), ("summerd", ours)):
        uar[key] = {
            "global_standardisation": loso_uar(x, y, speakers, False),
            "per_speaker_standardisation": loso_uar(x, y, speakers, True),
        }

    speed_path = BENCH / "acoustic_speed.json"
    speed = json.loads(speed_path.read_text()) if speed_path.exists() else None
    report = {
        "clips": len(files),
        "features": per_feature,
        "r_at_least_0_9": n90,
        "energy_spectral_total": len(es),
        "energy_spectral_r_at_least_0_8": es80,
        "uar": uar,
        "uar_ratio": {
            k: uar["summerd"][k] / uar["opensmile"][k] for k in uar["summerd"]
        },
        "opensmile_cpu_seconds": osm_cpu,
        "summerd": speed,
        "speed_ratio": (osm_cpu / speed["summerd_cpu_seconds"]) if speed else None,
    }
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "acoustic.json").write_text(json.dumps(report, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    srt = sorted(per_feature, key=lambda p: p["r"])
    fig, ax = plt.subplots(figsize=(9, 15))
    ax.barh(range(len(srt)), [p["r"] for p in srt],
            color=["tab:orange" if p["energy_spectral"] else "tab:blue" for p in srt])
    ax.set_yticks(range(len(srt)), [p["name"] for p in srt], fontsize=6)
    ax.axvline(0.9, color="k", lw=0.8, ls="--")
    ax.axvline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Pearson r across 415 EmoDB clips (summerd vs openSMILE 2.6.0)")
    ax.set_title(f"eGeMAPS v02 agreement: {n90}/88 with r >= 0.9 (orange: energy/spectral)")
    fig.tight_layout()
    fig.savefig(BENCH / "acoustic.png", dpi=110)

    print(f"{'functional':<46} {'r':>7} {'med.rel.diff':>12}")
    for p in per_feature:
        print(f"{p['name']:<46} {p['r']:7.3f} {p['median_rel_diff']:12.3f}")
    print(f"\nagreement: {n90}/88 functionals with r >= 0.90 (goal >= 70); "
          f"energy/spectral with r >= 0.80: {es80}/{len(es)} (goal: all)")
    for k in ("global_standardisation", "per_speaker_standardisation"):
        o, s = uar["opensmile"][k], uar["summerd"][k]
        print(f"LOSO UAR, {k.replace('_', ' ')}: openSMILE {100 * o:.1f} %, summerd {100 * s:.1f} % "
              f"(ratio {s / o:.3f}, goal >= 0.97)")
    if speed:
        print(f"speed, {len(files)} clips, one thread: openSMILE {osm_cpu:.2f} CPU s, summerd "
              f"{speed['summerd_cpu_seconds']:.2f} CPU s: {osm_cpu / speed['summerd_cpu_seconds']:.1f}x "
              f"(goal >= 10x); a live 48 kHz stream costs {100 * speed['live_48k_core_fraction']:.2f} % "
              f"of one core ({speed['live_48k_hop_us']:.1f} us a hop; goal < 1 %)")
    else:
        print("speed: run `cargo bench --bench acoustic` first for summerd's time")
    print(f"wrote {BENCH / 'acoustic.json'} and {BENCH / 'acoustic.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

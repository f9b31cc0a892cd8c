//! Classification metrics (accuracy = WA, support-weighted F1 = WF1, per-class F1, confusion
//! matrix) and their picture (SVG, no dependencies).

use serde::Serialize;

/// Metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Utterances scored.
    pub n: usize,
    /// Accuracy (the literature's "weighted accuracy", WA), 0-100.
    pub wa: f64,
    /// F1 averaged over classes weighted by support (WF1), 0-100.
    pub wf1: f64,
    /// Unweighted average recall, 0-100.
    pub uar: f64,
    /// F1 per class, 0-100.
    pub f1: Vec<f64>,
    /// confusion[true][predicted].
    pub confusion: Vec<Vec<usize>>,
}

impl Metrics {
    /// F1 averaged over classes with support, unweighted (macro F1), 0-100.
    pub fn macro_f1(&self) -> f64 {
        let with: Vec<f64> = self
            .f1
            .iter()
            .zip(&self.confusion)
            .filter(|(_, row)| row.iter().sum::<usize>() > 0)
            .map(|(f, _)| *f)
            .collect();
        if with.is_empty() {
            0.0
        } else {
            with.iter().sum::<f64>() / with.len() as f64
        }
    }
}

/// Metrics of predictions against truths (class indices below `classes`).
pub fn compute(truth: &[i64], pred: &[i64], classes: usize) -> Metrics {
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (t, p) in truth.iter().zip(pred) {
        confusion[*t as usize][*p as usize] += 1;
    }
    let n = truth.len();
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let mut f1 = Vec::with_capacity(classes);
    let mut wf1 = 0.0;
    let mut recall_sum = 0.0;
    let mut with_support = 0;
    for (c, row) in confusion.iter().enumerate() {
        let tp = row[c] as f64;
        let support: usize = row.iter().sum();
        let predicted: usize = (0..classes).map(|r| confusion[r][c]).sum();
        let p = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let r = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        f1.push(100.0 * f);
        wf1 += f * support as f64;
        if support > 0 {
            recall_sum += r;
            with_support += 1;
        }
    }
    let nf = n.max(1) as f64;
    Metrics {
        n,
        wa: 100.0 * correct as f64 / nf,
        wf1: 100.0 * wf1 / nf,
        uar: 100.0 * recall_sum / with_support.max(1) as f64,
        f1,
        confusion,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A picture of the metrics: the row-normalised confusion matrix and per-class F1 bars.
pub fn svg(m: &Metrics, classes: &[String], title: &str) -> String {
    let c = classes.len();
    let cell = 44.0;
    let left = 90.0;
    let top = 60.0;
    let bars_x = left + cell * c as f64 + 60.0;
    let width = bars_x + 320.0;
    let height = top + cell * c as f64 + 90.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n\
         <text x=\"10\" y=\"38\">n = {}, WA {:.1}, WF1 {:.1}, UAR {:.1}</text>\n",
        esc(title),
        m.n,
        m.wa,
        m.wf1,
        m.uar
    );
    for (i, row) in m.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 6.0,
            top + cell * (i as f64 + 0.6),
            esc(&classes[i])
        );
        for (j, v) in row.iter().enumerate() {
            let frac = if total > 0 {
                *v as f64 / total as f64
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - frac)) as u8;
            s += &format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({shade},{shade},255)\" stroke=\"#ccc\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{v}</text>\n",
                left + cell * j as f64,
                top + cell * i as f64,
                left + cell * (j as f64 + 0.5),
                top + cell * (i as f64 + 0.6),
                if frac > 0.5 { "white" } else { "black" }
            );
        }
    }
    for (j, name) in classes.iter().enumerate() {
        let x = left + cell * (j as f64 + 0.5);
        let y = top + cell * c as f64 + 12.0;
        s += &format!(
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"end\" transform=\"rotate(-45 {x} {y})\">{}</text>\n",
            esc(name)
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\">rows: true class; columns: predicted</text>\n",
        left,
        top + cell * c as f64 + 80.0
    );
    s += &format!(
        "<text x=\"{bars_x}\" y=\"{}\">F1 per class (0-100)</text>\n",
        top - 8.0
    );
    for (i, f) in m.f1.iter().enumerate() {
        let y = top + cell * i as f64 + 10.0;
        s += &format!(
            "<rect x=\"{bars_x}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"#4a7\"/>\
             <text x=\"{}\" y=\"{}\">{f:.1}</text>\n",
            2.5 * f,
            cell - 20.0,
            bars_x + 2.5 * f + 4.0,
            y + 16.0
        );
    }
    s + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_metrics() {
        // truth: 0 0 0 1 1 2; pred: 0 0 1 1 1 0
        let m = compute(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 1, 0], 3);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert!((m.wa - 100.0 * 4.0 / 6.0).abs() < 1e-9);
        // class 0: p 2/3 r 2/3 f 2/3; class 1: p 2/3 r 1 f 0.8; class 2: 0.
        assert!((m.f1[0] - 66.6666666).abs() < 1e-4);
        assert!((m.f1[1] - 80.0).abs() < 1e-9);
        assert_eq!(m.f1[2], 0.0);
        let wf1 = (3.0 * 2.0 / 3.0 + 2.0 * 0.8) / 6.0 * 100.0;
        assert!((m.wf1 - wf1).abs() < 1e-9);
        assert!((m.uar - 100.0 * (2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-9);
        let pic = svg(&m, &["a".into(), "b".into(), "c<".into()], "t");
        assert!(pic.starts_with("<svg") && pic.contains("c&lt;"));
    }
}

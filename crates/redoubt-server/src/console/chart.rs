//! The dashboard's compliance chart: an SVG drawn on the server from the samples the
//! server takes of the fleet (`compliance_samples`), one line for the share of phones
//! compliant and one for the share not compliant, over a window ending now. Pure: the
//! samples and the window are parameters.

use std::fmt::Write as _;

use redoubt_proto::Timestamp;
use redoubt_store::ComplianceSample;

const W: f64 = 600.0;
const H: f64 = 160.0;
const PAD: f64 = 30.0;

/// The chart of `samples` over `window_secs` ending at `now`, titled `title` (already
/// escaped by the caller: it comes from the catalogues). Empty samples: an empty frame
/// with `empty` written in it.
pub fn svg(
    samples: &[ComplianceSample],
    now: Timestamp,
    window_secs: i64,
    title: &str,
    empty: &str,
) -> String {
    let start = now.unix() - window_secs;
    let x = |at: i64| PAD + (at - start) as f64 / window_secs as f64 * (W - 2.0 * PAD);
    let y = |share: f64| H - PAD - share * (H - 2.0 * PAD);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"{PAD}\" y=\"{PAD}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        W - 2.0 * PAD,
        H - 2.0 * PAD
    );
    for (share, label) in [(0.0, "0%"), (0.5, "50%"), (1.0, "100%")] {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" fill=\"#333\">{label}</text>",
            PAD - 4.0,
            y(share) + 3.0
        );
    }
    // A sample of an empty fleet has no share to draw.
    let shown: Vec<&ComplianceSample> = samples
        .iter()
        .filter(|s| s.at.unix() >= start && s.compliant + s.non_compliant + s.stale + s.pending > 0)
        .collect();
    if shown.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">{empty}</text></svg>",
            W / 2.0,
            H / 2.0
        );
        return out;
    }
    for (color, pick) in [
        (
            "#1a7f37",
            (|s: &ComplianceSample| s.compliant) as fn(&ComplianceSample) -> u64,
        ),
        ("#b42318", |s: &ComplianceSample| s.non_compliant),
    ] {
        let mut points = String::new();
        for s in &shown {
            let total = s.compliant + s.non_compliant + s.stale + s.pending;
            let share = if total == 0 {
                0.0
            } else {
                pick(s) as f64 / total as f64
            };
            let _ = write!(points, "{:.1},{:.1} ", x(s.at.unix()), y(share));
        }
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.trim_end()
        );
        // Few samples (a new server): each one a dot, so a single sample shows.
        if shown.len() < 60 {
            for p in points.split_whitespace() {
                if let Some((px, py)) = p.split_once(',') {
                    let _ = write!(
                        out,
                        "<circle cx=\"{px}\" cy=\"{py}\" r=\"2.5\" fill=\"{color}\"/>"
                    );
                }
            }
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64, compliant: u64, non_compliant: u64) -> ComplianceSample {
        ComplianceSample {
            at: Timestamp(at),
            compliant,
            non_compliant,
            stale: 0,
            pending: 0,
        }
    }

    #[test]
    fn shares_become_points_in_the_window() {
        let now = Timestamp(100_000);
        let svg = svg(
            &[
                sample(10, 1, 1),
                sample(100_000 - 3600, 3, 1),
                sample(100_000, 4, 0),
            ],
            now,
            3600,
            "t",
            "none",
        );
        // The sample before the window is left out; the two inside span the width.
        assert!(svg.contains("points=\"30.0,55.0 570.0,30.0\""), "{svg}");
        assert!(svg.contains("points=\"30.0,105.0 570.0,130.0\""), "{svg}");
        assert!(!svg.contains("none</text>"));
    }

    #[test]
    fn no_samples_say_so() {
        let empty_fleet = ComplianceSample {
            at: Timestamp(90),
            compliant: 0,
            non_compliant: 0,
            stale: 0,
            pending: 0,
        };
        let svg = svg(&[empty_fleet], Timestamp(100), 60, "t", "no data yet");
        assert!(svg.contains("no data yet</text>"));
        assert!(!svg.contains("polyline"));
    }
}

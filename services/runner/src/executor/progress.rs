//! The pipeline's progress file (`$PIRUS_PROGRESS_FILE`): `{"value": 0.42, "label": "21 / 50"}`
//! (value in 0..1) or the older `{"min", "max", "value", "label"}`. A value becomes an event
//! once it has stayed in place for the settle time (100 ms, CONTRACT §2.2).

use std::time::{Duration, Instant};

use crate::domain::Progress;

/// Which values of the progress file become events. The file is read by the caller (through
/// the run's workspace, which refuses links, FIFOs and large files); the tracker only decides.
pub(super) struct Tracker {
    settle: Duration,
    candidate: Option<(Progress, Instant)>,
    published: Option<Progress>,
}

pub(super) fn parse(bytes: &[u8]) -> Option<Progress> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let value = v["value"].as_f64()?;
    let value = match (v["min"].as_f64(), v["max"].as_f64()) {
        (Some(min), Some(max)) if max > min => (value - min) / (max - min),
        _ => value,
    };
    if !value.is_finite() {
        return None;
    }
    let label = match &v["label"] {
        serde_json::Value::String(s) => s.chars().take(256).collect(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    Some(Progress {
        value: value.clamp(0.0, 1.0),
        label,
    })
}

impl Tracker {
    pub(super) fn new(settle: Duration) -> Self {
        Self {
            settle,
            candidate: None,
            published: None,
        }
    }

    /// The value already published (a re-adopted run's last progress).
    pub(super) fn assume_published(&mut self, progress: Progress) {
        self.published = Some(progress);
    }

    /// A value to publish, given the file's bytes now: one that changed and then stayed for
    /// the settle time.
    pub(super) fn poll(&mut self, bytes: Option<&[u8]>) -> Option<Progress> {
        let now = parse(bytes?)?;
        match &self.candidate {
            Some((candidate, _)) if *candidate == now => {}
            _ => self.candidate = Some((now.clone(), Instant::now())),
        }
        let (candidate, since) = self.candidate.as_ref()?;
        if since.elapsed() >= self.settle && self.published.as_ref() != Some(candidate) {
            self.published = Some(candidate.clone());
            return Some(candidate.clone());
        }
        None
    }

    /// The file's value now, if it differs from the last one published (the final read after
    /// the command ended, which does not wait to settle).
    pub(super) fn poll_now(&mut self, bytes: Option<&[u8]>) -> Option<Progress> {
        let now = parse(bytes?)?;
        if self.published.as_ref() == Some(&now) {
            return None;
        }
        self.published = Some(now.clone());
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        assert_eq!(
            parse(br#"{"value": 0.42, "label": "21 / 50"}"#),
            Some(Progress {
                value: 0.42,
                label: "21 / 50".into()
            })
        );
        assert_eq!(
            parse(br#"{"min": 0, "max": 50, "value": 25, "label": 3}"#),
            Some(Progress {
                value: 0.5,
                label: "3".into()
            })
        );
        assert_eq!(parse(br#"{"value": 7}"#).unwrap().value, 1.0);
        assert_eq!(parse(br#"{"value": 0.5"#), None);
        assert_eq!(parse(br#"{"label": "x"}"#), None);
    }

    #[test]
    fn a_value_must_settle_before_it_is_published() {
        let mut tracker = Tracker::new(Duration::from_millis(100));
        assert_eq!(tracker.poll(None), None, "no file yet");
        assert_eq!(
            tracker.poll(Some(br#"{"value": 0.1}"#)),
            None,
            "not settled"
        );
        assert_eq!(
            tracker.poll(Some(br#"{"value": 0.2}"#)),
            None,
            "changed: not settled"
        );
        std::thread::sleep(Duration::from_millis(120));
        let settled = Some(&br#"{"value": 0.2}"#[..]);
        assert_eq!(tracker.poll(settled).map(|p| p.value), Some(0.2));
        assert_eq!(tracker.poll(settled), None, "published once");
        assert_eq!(
            tracker.poll_now(settled),
            None,
            "the final read repeats nothing"
        );
        let last = Some(&br#"{"value": 1.0}"#[..]);
        assert_eq!(tracker.poll_now(last).map(|p| p.value), Some(1.0));
    }
}

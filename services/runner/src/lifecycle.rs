//! The run lifecycle: every run state and every transition, in one place, as pure functions.
//!
//! [`next`] takes a run's status and something that happened to it ([`Event`]) and answers the
//! new status with what must be recorded alongside ([`Decision`]), or why the event does not
//! apply. [`request`] does the same for what a client asks (pause, resume, cancel, delete).
//! The stores persist these decisions (under the run row's lock, with the event row, in one
//! transaction); they make none of their own. The transition table in docs/architecture.md is
//! `markdown_table`'s output, checked by a test.

use crate::domain::RunStatus::{self, *};

/// Something that happened to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A node claimed it (a new attempt).
    Claimed,
    /// Its command started.
    Started,
    /// A progress value, or a note (what collection skipped): no change of status.
    Noted,
    /// Its owner froze the container on request.
    Paused,
    /// Its owner thawed the container on request.
    Resumed,
    /// Its command exited (the exit code is recorded).
    Exited,
    /// Its results were collected after the command exited; `ok` when the command's exit
    /// status was 0 and everything was collected.
    Collected { ok: bool },
    /// It failed on its own: preparation, timeout, disk limit, its container vanished.
    Failed,
    /// Canceled on request: at once while waiting, by its owner otherwise.
    Canceled,
    /// Its node's lease lapsed; `retry` while `attempt < max_attempts`.
    NodeLost { retry: bool },
}

/// What a transition records besides the new status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// The run ended: `ended_at` is set, and any pending control request is dropped.
    pub ended: bool,
    /// The control request this transition fulfils is cleared.
    pub clear_desired: bool,
    /// The run leaves its node (queued again): its node is cleared and the queue woken.
    pub requeued: bool,
}

/// A transition's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub status: RunStatus,
    pub effects: Effects,
}

/// Why an event does not apply to a run in its status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {status} run cannot be {what}")]
pub(crate) struct Refused {
    pub status: &'static str,
    pub what: &'static str,
}

/// The statuses that hold a node's slot.
pub(crate) const ACTIVE: [RunStatus; 4] = [Initializing, Running, Pause, Finishing];

/// The new status of a run in status `from` after `event`.
pub(crate) fn next(from: RunStatus, event: Event) -> Result<Decision, Refused> {
    let to = |status: RunStatus| Decision {
        status,
        effects: Effects {
            ended: status.is_terminal(),
            ..Effects::default()
        },
    };
    let refused = || Refused {
        status: from.as_str(),
        what: describe(event),
    };
    let active = ACTIVE.contains(&from);
    let decision = match (from, event) {
        (Waiting, Event::Claimed) => to(Initializing),
        (Initializing, Event::Started) => to(Running),
        (s, Event::Noted) if !s.is_terminal() => to(s),
        (Running, Event::Paused) => Decision {
            effects: Effects {
                clear_desired: true,
                ..Effects::default()
            },
            ..to(Pause)
        },
        (Pause, Event::Resumed) => Decision {
            effects: Effects {
                clear_desired: true,
                ..Effects::default()
            },
            ..to(Running)
        },
        (Running | Pause, Event::Exited) => to(Finishing),
        (Finishing, Event::Collected { ok: true }) => to(Done),
        (Finishing, Event::Collected { ok: false }) => to(Error),
        (Initializing | Running | Pause | Finishing, Event::Failed) => to(Error),
        (Waiting | Initializing | Running | Pause | Finishing, Event::Canceled) => to(Canceled),
        (s, Event::NodeLost { retry: true }) if ACTIVE.contains(&s) => Decision {
            effects: Effects {
                requeued: true,
                clear_desired: true,
                ..Effects::default()
            },
            ..to(Waiting)
        },
        (_, Event::NodeLost { retry: false }) if active => to(Error),
        _ => return Err(refused()),
    };
    Ok(decision)
}

/// The status a submitted run starts in.
pub(crate) fn submitted() -> Decision {
    Decision {
        status: Waiting,
        effects: Effects::default(),
    }
}

/// What a client may ask of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Pause,
    Resume,
    Cancel,
    Delete,
}

/// A control request a run's owner carries out (`runs.desired_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Desired {
    Running,
    Pause,
    Canceled,
}

impl Desired {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Pause => "pause",
            Self::Canceled => "canceled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Pause, Self::Canceled]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// How a client request is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// At once, by whoever got the request (a waiting run has no owner).
    Now(Event),
    /// By the run's owner: recorded as desired state and announced.
    Owner(Desired),
    /// The run and its files are removed.
    Delete,
}

/// How a client's request applies to a run in status `from`.
pub(crate) fn request(from: RunStatus, r: Request) -> Result<Answer, Refused> {
    let refused = || Refused {
        status: from.as_str(),
        what: match r {
            Request::Pause => "paused",
            Request::Resume => "resumed",
            Request::Cancel => "canceled",
            Request::Delete => "deleted before it ends (cancel it first)",
        },
    };
    match (r, from) {
        (Request::Pause, Running | Pause) => Ok(Answer::Owner(Desired::Pause)),
        (Request::Resume, Pause | Running) => Ok(Answer::Owner(Desired::Running)),
        (Request::Cancel, Waiting) => Ok(Answer::Now(Event::Canceled)),
        // A finishing run stops collecting its outputs (its logs are kept).
        (Request::Cancel, Initializing | Running | Pause | Finishing) => {
            Ok(Answer::Owner(Desired::Canceled))
        }
        (Request::Delete, s) if s.is_terminal() => Ok(Answer::Delete),
        _ => Err(refused()),
    }
}

fn describe(event: Event) -> &'static str {
    match event {
        Event::Claimed => "claimed",
        Event::Started => "started",
        Event::Noted => "noted",
        Event::Paused => "paused",
        Event::Resumed => "resumed",
        Event::Exited => "exited",
        Event::Collected { .. } => "collected",
        Event::Failed => "failed",
        Event::Canceled => "canceled",
        Event::NodeLost { .. } => "lost with its node",
    }
}

/// Every event, for enumerations.
#[cfg(test)]
const EVENTS: [Event; 12] = [
    Event::Claimed,
    Event::Started,
    Event::Noted,
    Event::Paused,
    Event::Resumed,
    Event::Exited,
    Event::Collected { ok: true },
    Event::Collected { ok: false },
    Event::Failed,
    Event::Canceled,
    Event::NodeLost { retry: true },
    Event::NodeLost { retry: false },
];

/// Why each event happens, for the documentation's table.
#[cfg(test)]
fn cause(event: Event) -> &'static str {
    match event {
        Event::Claimed => {
            "a node's claim (inputs all READY, a free slot, the run within the node's limits and free capacity, its node selector matched, its owner within its quotas, node not draining, LXD up)"
        }
        Event::Started => "the command started",
        Event::Noted => "progress, or a note",
        Event::Paused => "PauseRun, by the owner (container frozen)",
        Event::Resumed => "ResumeRun, by the owner (container thawed)",
        Event::Exited => "the command exited (exit code recorded)",
        Event::Collected { ok: true } => "exit status 0 and everything collected",
        Event::Collected { ok: false } => "non-zero exit status, or collecting failed",
        Event::Failed => "preparation failed, timeout, disk limit, or the container vanished",
        Event::Canceled => {
            "CancelRun: at once while WAITING, else by the owner (container deleted, logs kept, outputs not collected)"
        }
        Event::NodeLost { retry: true } => {
            "the node's lease lapsed and `attempt < max_attempts` (next attempt)"
        }
        Event::NodeLost { retry: false } => "the node's lease lapsed on the last attempt",
    }
}

/// The transition table as documented: one row per event and target status, the statuses it
/// applies from in lifecycle order. Status-preserving events (notes) are left out.
#[cfg(test)]
fn markdown_table() -> String {
    let name = |s: RunStatus| s.as_str().to_uppercase();
    let mut out = String::from("| from | to | by |\n|---|---|---|\n");
    out.push_str(&format!(
        "| (none) | {} | SubmitRun |\n",
        name(submitted().status)
    ));
    for event in EVENTS {
        let mut rows: Vec<(RunStatus, Vec<RunStatus>)> = Vec::new();
        for from in RunStatus::ALL {
            let Ok(d) = next(from, event) else { continue };
            if d.status == from {
                continue;
            }
            match rows.iter_mut().find(|(to, _)| *to == d.status) {
                Some((_, froms)) => froms.push(from),
                None => rows.push((d.status, vec![from])),
            }
        }
        for (to, froms) in rows {
            let froms: Vec<String> = froms.into_iter().map(name).collect();
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                froms.join(", "),
                name(to),
                cause(event)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (status, event) pair, against the table written out by hand.
    #[test]
    fn every_transition_is_exactly_the_table() {
        let expected: &[(RunStatus, Event, Option<RunStatus>)] = &[
            (Waiting, Event::Claimed, Some(Initializing)),
            (Waiting, Event::Noted, Some(Waiting)),
            (Waiting, Event::Canceled, Some(Canceled)),
            (Initializing, Event::Started, Some(Running)),
            (Initializing, Event::Noted, Some(Initializing)),
            (Initializing, Event::Failed, Some(Error)),
            (Initializing, Event::Canceled, Some(Canceled)),
            (Initializing, Event::NodeLost { retry: true }, Some(Waiting)),
            (Initializing, Event::NodeLost { retry: false }, Some(Error)),
            (Running, Event::Noted, Some(Running)),
            (Running, Event::Paused, Some(Pause)),
            (Running, Event::Exited, Some(Finishing)),
            (Running, Event::Failed, Some(Error)),
            (Running, Event::Canceled, Some(Canceled)),
            (Running, Event::NodeLost { retry: true }, Some(Waiting)),
            (Running, Event::NodeLost { retry: false }, Some(Error)),
            (Pause, Event::Noted, Some(Pause)),
            (Pause, Event::Resumed, Some(Running)),
            (Pause, Event::Exited, Some(Finishing)),
            (Pause, Event::Failed, Some(Error)),
            (Pause, Event::Canceled, Some(Canceled)),
            (Pause, Event::NodeLost { retry: true }, Some(Waiting)),
            (Pause, Event::NodeLost { retry: false }, Some(Error)),
            (Finishing, Event::Noted, Some(Finishing)),
            (Finishing, Event::Collected { ok: true }, Some(Done)),
            (Finishing, Event::Collected { ok: false }, Some(Error)),
            (Finishing, Event::Failed, Some(Error)),
            (Finishing, Event::Canceled, Some(Canceled)),
            (Finishing, Event::NodeLost { retry: true }, Some(Waiting)),
            (Finishing, Event::NodeLost { retry: false }, Some(Error)),
        ];
        for from in RunStatus::ALL {
            for event in EVENTS {
                let want = expected
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .and_then(|(_, _, to)| *to);
                let got = next(from, event).ok().map(|d| d.status);
                assert_eq!(got, want, "{} on {event:?}", from.as_str());
            }
        }
    }

    #[test]
    fn terminal_runs_take_no_event_and_ending_records_the_end() {
        for from in [Done, Error, Canceled] {
            for event in EVENTS {
                assert!(next(from, event).is_err(), "{} on {event:?}", from.as_str());
            }
        }
        for from in RunStatus::ALL {
            for event in EVENTS {
                if let Ok(d) = next(from, event) {
                    assert_eq!(d.effects.ended, d.status.is_terminal());
                    assert_eq!(d.effects.requeued, d.status == Waiting && from != Waiting);
                }
            }
        }
        assert!(next(Running, Event::Paused).unwrap().effects.clear_desired);
        assert!(next(Pause, Event::Resumed).unwrap().effects.clear_desired);
        let e = next(Done, Event::Canceled).unwrap_err();
        assert_eq!(e.to_string(), "a done run cannot be canceled");
    }

    #[test]
    fn client_requests() {
        use Answer::*;
        let cases = [
            (Request::Pause, Running, Some(Owner(Desired::Pause))),
            (Request::Pause, Pause, Some(Owner(Desired::Pause))),
            (Request::Pause, Waiting, None),
            (Request::Pause, Done, None),
            (Request::Resume, Pause, Some(Owner(Desired::Running))),
            (Request::Resume, Running, Some(Owner(Desired::Running))),
            (Request::Resume, Finishing, None),
            (Request::Cancel, Waiting, Some(Now(Event::Canceled))),
            (
                Request::Cancel,
                Initializing,
                Some(Owner(Desired::Canceled)),
            ),
            (Request::Cancel, Pause, Some(Owner(Desired::Canceled))),
            (Request::Cancel, Finishing, Some(Owner(Desired::Canceled))),
            (Request::Cancel, Canceled, None),
            (Request::Delete, Done, Some(Delete)),
            (Request::Delete, Error, Some(Delete)),
            (Request::Delete, Canceled, Some(Delete)),
            (Request::Delete, Running, None),
        ];
        for (r, from, want) in cases {
            assert_eq!(
                request(from, r).ok(),
                want,
                "{r:?} of a {} run",
                from.as_str()
            );
        }
        // What the owner is asked to do is something the lifecycle lets it do.
        for from in RunStatus::ALL {
            for r in [Request::Pause, Request::Resume, Request::Cancel] {
                match request(from, r) {
                    Ok(Now(event)) => assert!(next(from, event).is_ok()),
                    Ok(Owner(Desired::Canceled)) => assert!(next(from, Event::Canceled).is_ok()),
                    _ => {}
                }
            }
        }
        for s in ["running", "pause", "canceled"] {
            assert_eq!(Desired::parse(s).map(Desired::as_str), Some(s));
        }
    }

    /// The table in docs/architecture.md is this one.
    #[test]
    fn the_documented_table_is_the_lifecycle() {
        let docs = include_str!("../../../docs/architecture.md");
        let table = markdown_table();
        assert!(
            docs.contains(&table),
            "docs/architecture.md must hold the transition table; replace it with:\n{table}"
        );
    }
}

//! Admission control of long-lived calls: each caller may hold at most so many streams at
//! once (WatchRun, StreamRunLogs, ReadFile, WriteUpload, and tus transfers on the HTTP port),
//! by role, so no single caller can take a service's capacity; one past its budget is
//! answered RESOURCE_EXHAUSTED (tus: 429 with Retry-After) with a retry hint. Callers are counted by principal, all its tokens together (by peer
//! address under `--auth none`): making more tokens never widens the budget. A runner moves
//! every input and output of its node, so runner tokens get the largest budget.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use uuid::Uuid;

use crate::{Caller, Role};

/// Concurrent streams per caller, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamBudget {
    pub user: usize,
    pub operator: usize,
    pub admin: usize,
    pub runner: usize,
}

impl StreamBudget {
    /// The budgets from one number, a user's: operators and admins get 4 times it, runners 16
    /// times.
    pub fn from_user(user: usize) -> Self {
        Self {
            user,
            operator: user * 4,
            admin: user * 4,
            runner: user * 16,
        }
    }

    fn of(&self, role: Role) -> usize {
        match role {
            Role::User => self.user,
            Role::Operator => self.operator,
            Role::Admin => self.admin,
            Role::Runner => self.runner,
        }
    }
}

impl Default for StreamBudget {
    fn default() -> Self {
        Self::from_user(64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Principal(Uuid),
    Peer(Option<IpAddr>),
}

/// RESOURCE_EXHAUSTED with the retry hint every bound of the services gives (gRPC's retry
/// pushback, 1 s): a caller past its budget, or a process-wide bound that is full.
pub fn exhausted(message: impl Into<String>) -> tonic::Status {
    let mut status = tonic::Status::resource_exhausted(message);
    status.metadata_mut().insert(
        "grpc-retry-pushback-ms",
        tonic::metadata::MetadataValue::from_static("1000"),
    );
    status
}

/// The streams each caller holds now.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    budget: StreamBudget,
    held: Arc<Mutex<HashMap<Key, Arc<AtomicUsize>>>>,
}

/// One admitted stream; the caller's count goes down when it is dropped (with the response
/// body, when the stream ends).
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A caller past its budget.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this {who} holds {limit} streams already (watches, log follows, reads and uploads at once); retry when one ends"
)]
pub struct Exhausted {
    pub who: String,
    pub limit: usize,
}

impl Admission {
    pub fn new(budget: StreamBudget) -> Self {
        Self {
            budget,
            held: Arc::default(),
        }
    }

    /// Admits one more stream of `caller` (counted by `peer` for the anonymous admin of
    /// `--auth none`), or says why not.
    pub fn admit(&self, caller: &Caller, peer: Option<IpAddr>) -> Result<Permit, Exhausted> {
        let key = if caller.accessor.is_nil() {
            Key::Peer(peer)
        } else {
            Key::Principal(caller.principal)
        };
        let limit = self.budget.of(caller.role);
        let count = std::sync::Arc::clone(
            self.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default(),
        );
        let admitted = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Ok(Permit(count))
        } else {
            Err(Exhausted {
                who: format!(
                    "{} principal '{}'",
                    caller.role.as_str(),
                    caller.principal_name
                ),
                limit,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            accessor: Uuid::new_v4(),
            name: "t".into(),
            principal: Uuid::new_v4(),
            principal_name: "t".into(),
            role,
            node: None,
            credential: Default::default(),
            unrestricted: false,
        }
    }

    #[test]
    fn each_caller_holds_at_most_its_budget_and_gets_it_back() {
        let admission = Admission::new(StreamBudget::from_user(2));
        let (user, other, runner) = (caller(Role::User), caller(Role::User), caller(Role::Runner));
        let a = admission.admit(&user, None).unwrap();
        let _b = admission.admit(&user, None).unwrap();
        let refused = admission.admit(&user, None).unwrap_err();
        assert_eq!(refused.limit, 2);
        assert!(
            refused
                .to_string()
                .contains("user principal 't' holds 2 streams")
        );
        // Another caller has a budget of its own; a runner a larger one.
        admission.admit(&other, None).unwrap();
        let runners: Vec<_> = (0..32)
            .map(|_| admission.admit(&runner, None).unwrap())
            .collect();
        assert!(admission.admit(&runner, None).is_err());
        drop(runners);
        drop(a);
        let _c = admission.admit(&user, None).unwrap();
        // Another token of the same principal shares the principal's budget.
        let laptop = Caller {
            accessor: Uuid::new_v4(),
            ..user.clone()
        };
        admission.admit(&laptop, None).unwrap_err();
    }
}

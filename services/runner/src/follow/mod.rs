//! Following runs, shared per process so that a thousand followers cost what one does:
//! [`events`] follows a run's events (WatchRun), [`logs`] a running run's log (StreamRunLogs).

pub(crate) mod events;
pub(crate) mod logs;

//! Reads of single rows by key, coalesced: while queries for some keys are in flight, the keys
//! asked for meanwhile wait and go together in the next query (one `WHERE id = ANY($1)`).
//! Under load, many concurrent GetRun calls cost the database and the pool one query, one
//! connection checkout and one round trip per batch instead of one each (bench/load.sh); a
//! read alone is one query as before, after one channel hop.
//!
//! **Consistency**: a batch is formed from reads already queued and its query starts after it
//! is formed, so every read is answered by a query that started after the read was asked for:
//! a reader sees every change committed before it asked, as with a query of its own.

use std::{collections::HashMap, future::Future, hash::Hash, sync::Arc};

use sea_orm::{DbErr, RuntimeErr};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Batches running at once (each holds one pooled connection while its query runs); reads that
/// arrive while all are running queue up for the next. Two rather than four: batches grow, and
/// the database answers fewer statements for the same reads (GetRun with 32 callers, A/B over
/// 3 rounds on the seeded database: 0.38-0.44x the health check's rate against 0.28-0.35x).
pub const IN_FLIGHT: usize = 2;
/// Keys in one batch at most.
pub const MAX_BATCH: usize = 256;
/// Reads queued at most; one more waits for room (the callers are bounded by admission
/// control well below this).
const QUEUE: usize = 16_384;

type Answer<V> = Result<Option<V>, DbErr>;
type Waiter<K, V> = (K, oneshot::Sender<Answer<V>>);

/// A coalescing reader of rows `V` by key `K`. Cheap to clone: clones share the batching task,
/// which ends when the last clone is dropped.
#[derive(Debug)]
pub struct Coalesced<K, V> {
    queue: mpsc::Sender<Waiter<K, V>>,
}

impl<K, V> Clone for Coalesced<K, V> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<K, V> Coalesced<K, V>
where
    K: Copy + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + 'static,
{
    /// Starts the batching task on the current tokio runtime. `fetch` reads the rows of a set of
    /// distinct keys, each answered with its key; a key it does not answer has no row.
    pub fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<(K, V)>, DbErr>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(batches(waiting, Arc::new(fetch)));
        Self { queue }
    }

    /// The row of `key`, if any, read by a query that started after this call.
    pub async fn get(&self, key: K) -> Answer<V> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((key, answer))
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn stopped() -> DbErr {
    DbErr::Custom("the batched reader stopped".to_owned())
}

/// Forms batches from the queue, at most [`IN_FLIGHT`] running at once.
async fn batches<K, V, F, Fut>(mut waiting: mpsc::Receiver<Waiter<K, V>>, fetch: Arc<F>)
where
    K: Copy + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + 'static,
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<(K, V)>, DbErr>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let fetch = std::sync::Arc::clone(&fetch);
        tokio::spawn(async move {
            let mut wanted: HashMap<K, usize> = HashMap::with_capacity(batch.len());
            for (key, _) in &batch {
                *wanted.entry(*key).or_default() += 1;
            }
            let answer = fetch(wanted.keys().copied().collect()).await;
            drop(slot);
            answer_all(batch, wanted, answer);
        });
    }
}

/// Hands each waiter its row (moved to the last waiter of a key, cloned for the others), or a
/// copy of the batch's error that keeps whether the database was unavailable.
fn answer_all<K: Eq + Hash, V: Clone>(
    batch: Vec<Waiter<K, V>>,
    mut wanted: HashMap<K, usize>,
    answer: Result<Vec<(K, V)>, DbErr>,
) {
    match answer {
        Ok(rows) => {
            let mut rows: HashMap<K, V> = rows.into_iter().collect();
            for (key, waiter) in batch {
                let left = wanted.get_mut(&key).map_or(0, |n| {
                    *n -= 1;
                    *n
                });
                let row = if left == 0 {
                    rows.remove(&key)
                } else {
                    rows.get(&key).cloned()
                };
                let _ = waiter.send(Ok(row));
            }
        }
        Err(e) => {
            let unavailable = crate::is_unavailable(&e);
            let message = e.to_string();
            for (_, waiter) in batch {
                let _ = waiter.send(Err(if unavailable {
                    DbErr::Conn(RuntimeErr::Internal(message.clone()))
                } else {
                    DbErr::Custom(message.clone())
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Squares of keys below 1,000, slowly, counting the queries and the largest batch.
    fn squares(queries: Arc<AtomicUsize>, largest: Arc<AtomicUsize>) -> Coalesced<u32, u64> {
        Coalesced::new(move |keys: Vec<u32>| {
            let (queries, largest) = (
                std::sync::Arc::clone(&queries),
                std::sync::Arc::clone(&largest),
            );
            async move {
                queries.fetch_add(1, Ordering::SeqCst);
                largest.fetch_max(keys.len(), Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(keys
                    .into_iter()
                    .filter(|k| *k < 1000)
                    .map(|k| (k, u64::from(k) * u64::from(k)))
                    .collect())
            }
        })
    }

    #[tokio::test]
    async fn concurrent_reads_share_queries_and_each_gets_its_own_row() {
        let (queries, largest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reader = squares(
            std::sync::Arc::clone(&queries),
            std::sync::Arc::clone(&largest),
        );
        // 500 reads, keys repeated (each key asked five times) and some without a row.
        let reads: Vec<_> = (0..500u32)
            .map(|i| {
                let reader = reader.clone();
                let key = (i % 100) * 11;
                tokio::spawn(async move { (key, reader.get(key).await) })
            })
            .collect();
        for read in reads {
            let (key, row) = read.await.unwrap();
            let expected = (key < 1000).then(|| u64::from(key) * u64::from(key));
            assert_eq!(row.unwrap(), expected, "key {key}");
        }
        let queries = queries.load(Ordering::SeqCst);
        assert!(queries < 50, "500 concurrent reads took {queries} queries");
        // Repeated keys are asked for once per batch.
        assert!(largest.load(Ordering::SeqCst) <= 100);
    }

    #[tokio::test]
    async fn a_read_alone_is_one_query() {
        let (queries, largest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reader = squares(std::sync::Arc::clone(&queries), largest);
        assert_eq!(reader.get(3).await.unwrap(), Some(9));
        assert_eq!(reader.get(5000).await.unwrap(), None);
        assert_eq!(queries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn every_reader_of_a_failed_batch_gets_the_error_and_its_kind() {
        let reader: Coalesced<u32, u32> = Coalesced::new(|_keys: Vec<u32>| async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Err(DbErr::Conn(RuntimeErr::Internal(
                "connection refused".into(),
            )))
        });
        let reads: Vec<_> = (0..20)
            .map(|k| {
                let reader = reader.clone();
                tokio::spawn(async move { reader.get(k).await })
            })
            .collect();
        for read in reads {
            let e = read.await.unwrap().unwrap_err();
            assert!(crate::is_unavailable(&e), "{e}");
            assert!(e.to_string().contains("connection refused"), "{e}");
        }
        let failing: Coalesced<u32, u32> =
            Coalesced::new(|_keys: Vec<u32>| async { Err(DbErr::Custom("syntax error".into())) });
        let e = failing.get(1).await.unwrap_err();
        assert!(!crate::is_unavailable(&e));
        assert!(e.to_string().contains("syntax error"), "{e}");
    }
}

//! Upload data in memory: 1 MiB blocks, aligned for direct I/O, drawn from one budget per
//! process.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    datadir::DIRECT_ALIGN,
    domain::{Error, Result},
};

/// Bytes of a block.
pub(super) const BLOCK: usize = 1 << 20;

/// A block: up to [`BLOCK`] bytes, 4 KiB-aligned in memory for direct I/O, and its share of
/// the process's [`BlockBudget`], given back when the block is dropped.
pub(super) struct Block {
    buf: Vec<u8>,
    /// Leading bytes skipped to reach the alignment.
    pad: usize,
    _permit: OwnedSemaphorePermit,
}

impl Block {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.pad..]
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len() - self.pad
    }

    /// Appends within the capacity, so the buffer never moves and stays aligned.
    pub(super) fn extend(&mut self, data: &[u8]) {
        debug_assert!(self.len() + data.len() <= BLOCK);
        self.buf.extend_from_slice(data);
    }
}

/// The memory every transfer of the process may hold in blocks, together: however many
/// transfers run and however fast their clients send, upload data in memory stays under
/// [`BlockBudget::BYTES`]. A transfer waits for a block only while it holds none (its queued
/// blocks drain without needing any), so waiting never deadlocks. Buffers of dropped blocks
/// are kept for reuse, a few, so that a busy transfer does not fault in fresh memory for
/// every block.
#[derive(Clone)]
pub(super) struct BlockBudget {
    permits: Arc<Semaphore>,
    buffers: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BlockBudget {
    /// 256 blocks of 1 MiB.
    pub(super) const BYTES: usize = 256 << 20;
    /// Buffers kept for reuse.
    const KEPT: usize = 32;

    pub(super) fn new() -> Self {
        Self::with_blocks(Self::BYTES / BLOCK)
    }

    pub(super) fn with_blocks(blocks: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(blocks)),
            buffers: Arc::default(),
        }
    }

    pub(super) async fn block(&self) -> Result<Block> {
        let permit = std::sync::Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(Error::internal)?;
        let kept = self.buffers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = kept.unwrap_or_else(|| Vec::with_capacity(BLOCK + DIRECT_ALIGN));
        let pad = (DIRECT_ALIGN - buf.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
        buf.clear();
        buf.resize(pad, 0);
        Ok(Block {
            buf,
            pad,
            _permit: permit,
        })
    }

    /// Keeps the block's buffer if the caller held its last reference; the permit goes back
    /// either way once the block is dropped.
    pub(super) fn recycle(&self, block: Arc<Block>) {
        if let Ok(block) = Arc::try_unwrap(block) {
            let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
            if buffers.len() < Self::KEPT {
                buffers.push(block.buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn blocks_wait_for_the_budget_and_come_back_aligned() {
        let budget = BlockBudget::with_blocks(2);
        let mut a = budget.block().await.unwrap();
        let b = budget.block().await.unwrap();
        a.extend(&[7; 5000]);
        let a = Arc::new(a);
        let held = std::sync::Arc::clone(&a);
        let third = tokio::spawn({
            let budget = budget.clone();
            async move { budget.block().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !third.is_finished(),
            "a third block waits while two are held"
        );
        // The writer is done with `a` but the hasher still holds it: nothing comes back yet.
        budget.recycle(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished());
        budget.recycle(held);
        let c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the block freed by its last holder")
            .unwrap();
        assert_eq!(c.len(), 0, "a reused buffer starts empty");
        assert!(c.bytes().as_ptr().addr().is_multiple_of(DIRECT_ALIGN));
        assert_eq!(
            budget.buffers.lock().unwrap().len(),
            0,
            "its buffer was reused"
        );
        drop(b);
    }
}

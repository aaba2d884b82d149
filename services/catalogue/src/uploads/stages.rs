//! The threads of a transfer's pipeline ([`super::transfer`]): the writer, which writes the
//! blocks in order at their offsets and publishes how far the file is written, and the hasher,
//! which hashes the same blocks (the whole upload's SHA-256, the chunk checksum). Each takes
//! its blocks from a queue of [`QUEUE`] and gives them back to the process's budget.

use std::{io, sync::Arc};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    blocks::{Block, BlockBudget},
    checksum::ChunkHasher,
};
use crate::datadir::PartialFile;

/// Blocks waiting for each of the writer and the hasher.
pub(super) const QUEUE: usize = 4;

/// The digests a transfer keeps.
#[derive(Default)]
pub(super) struct Hashers {
    /// Of the whole upload, kept only when this transfer started at offset 0.
    pub(super) whole: Option<Sha256>,
    pub(super) chunk: Option<ChunkHasher>,
}

impl Hashers {
    pub(super) fn is_empty(&self) -> bool {
        self.whole.is_none() && self.chunk.is_none()
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = self.whole.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.chunk.as_mut() {
            h.update(data);
        }
    }
}

/// The writer thread's end of the pipeline.
pub(super) struct Writer {
    pub(super) queue: Option<mpsc::Sender<(u64, Arc<Block>)>>,
    /// How far the file is written, gap-free from the transfer's start.
    pub(super) written: watch::Receiver<u64>,
    /// The thread's outcome once it stopped (its queue closed, or a write failed).
    pub(super) done: Option<oneshot::Receiver<io::Error>>,
}

/// The hasher thread's end of the pipeline.
pub(super) struct Hasher {
    pub(super) queue: Option<mpsc::Sender<Arc<Block>>>,
    pub(super) done: Option<oneshot::Receiver<Hashers>>,
}

pub(super) fn spawn_writer(
    file: Arc<PartialFile>,
    start: u64,
    budget: BlockBudget,
) -> io::Result<Writer> {
    let (queue, mut blocks) = mpsc::channel::<(u64, Arc<Block>)>(QUEUE);
    let (progress, written) = watch::channel(start);
    let (failed, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("upload-writer".to_owned())
        .spawn(move || {
            while let Some((offset, block)) = blocks.blocking_recv() {
                if let Err(e) = file.write_at(block.bytes(), offset) {
                    let _ = failed.send(e);
                    return;
                }
                progress.send_replace(offset + block.len() as u64);
                budget.recycle(block);
            }
        })?;
    Ok(Writer {
        queue: Some(queue),
        written,
        done: Some(done),
    })
}

pub(super) fn spawn_hasher(mut hashers: Hashers, budget: BlockBudget) -> io::Result<Hasher> {
    let (queue, mut blocks) = mpsc::channel::<Arc<Block>>(QUEUE);
    let (finished, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("upload-hasher".to_owned())
        .spawn(move || {
            while let Some(block) = blocks.blocking_recv() {
                hashers.update(block.bytes());
                budget.recycle(block);
            }
            let _ = finished.send(hashers);
        })?;
    Ok(Hasher {
        queue: Some(queue),
        done: Some(done),
    })
}

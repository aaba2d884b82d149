//! tus `Upload-Checksum`: a chunk's expected digest, and the hasher that checks it.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A tus `Upload-Checksum`: the algorithm and the expected digest of the whole chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChunkChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub expected: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChecksumAlgorithm {
    Sha1,
    Sha256,
    Md5,
}

impl ChecksumAlgorithm {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "md5" => Some(Self::Md5),
            _ => None,
        }
    }
}

pub(super) enum ChunkHasher {
    Sha1(Sha1),
    Sha256(Sha256),
    Md5(Md5),
}

impl ChunkHasher {
    pub(super) fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => Self::Sha1(Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
            ChecksumAlgorithm::Md5 => Self::Md5(Md5::new()),
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Md5(h) => h.update(data),
        }
    }

    pub(super) fn finalize(self) -> Vec<u8> {
        match self {
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Md5(h) => h.finalize().to_vec(),
        }
    }
}

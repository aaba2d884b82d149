//! SHA-256 of a stream, the one way both services hash content: read in 1 MiB blocks, each
//! block handed on (to be written elsewhere) as it is hashed, bounded in bytes.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

const BLOCK: usize = 1 << 20;

/// Reads `reader` to its end, hashing it and handing every block to `sink`; answers the
/// lowercase hex SHA-256 and the size, or `None` as soon as more than `limit` bytes came.
pub fn sha256_copy(
    reader: &mut impl Read,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    limit: u64,
) -> io::Result<Option<(String, u64)>> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; BLOCK];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        size += n as u64;
        if size > limit {
            return Ok(None);
        }
        hasher.update(&buffer[..n]);
        sink(&buffer[..n])?;
    }
    Ok(Some((hex::encode(hasher.finalize()), size)))
}

/// The lowercase hex SHA-256 of everything `reader` holds, and its size.
pub fn sha256(reader: &mut impl Read) -> io::Result<(String, u64)> {
    sha256_copy(reader, |_| Ok(()), u64::MAX).map(|r| r.expect("no limit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_copies_and_bounds() {
        let data = vec![7u8; 3 * BLOCK + 5];
        let (digest, size) = sha256(&mut &data[..]).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(digest, hex::encode(Sha256::digest(&data)));
        let mut copy = Vec::new();
        let copied = sha256_copy(
            &mut &data[..],
            |b| {
                copy.extend_from_slice(b);
                Ok(())
            },
            data.len() as u64,
        )
        .unwrap();
        assert_eq!(copied, Some((digest, size)));
        assert_eq!(copy, data);
        assert_eq!(sha256_copy(&mut &data[..], |_| Ok(()), 10).unwrap(), None);
        assert_eq!(
            sha256(&mut &b""[..]).unwrap().0,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

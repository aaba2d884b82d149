//! Benchmark client: uploads a file to the catalogue with CreateFile + WriteUpload, streaming it
//! from disk in 1 MiB messages, then reads it back whole with ReadFile (as a runner fetches an
//! input; bytes counted, not kept). Prints the seconds of each: the upload from creation to the
//! final durable answer, the download from the request to the last byte. Used by
//! bench/upload.sh.
//!
//! Usage: pirus-bench-upload GRPC_ADDR FILE

// A command-line tool: its answer goes to stdout.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use anyhow::{Context, Result};
use pirus_proto::catalogue::v1::{self as pb, catalogue_service_client::CatalogueServiceClient};
use std::io::Read;

use bytes::BytesMut;

const MESSAGE: usize = 1 << 20;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .context("usage: pirus-bench-upload GRPC_ADDR FILE")?;
    let path = args
        .next()
        .context("usage: pirus-bench-upload GRPC_ADDR FILE")?;
    let size = std::fs::metadata(&path)?.len();
    let mut client =
        CatalogueServiceClient::new(pirus_tests::identity::connect_from_env(&addr).await?)
            .max_decoding_message_size(16 << 20);
    let started = Instant::now();
    let file = client
        .create_file(pb::CreateFileRequest {
            filename: "bench.bin".into(),
            size: size as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    // The file is read on a thread of its own straight into the message buffers (one copy
    // out of the page cache), so the client spends its CPU on gRPC, not on reading.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let id = file.id.clone();
    let reader = std::thread::spawn(move || -> Result<()> {
        let mut input = std::fs::File::open(&path)?;
        let mut offset = 0i64;
        loop {
            let mut data = BytesMut::zeroed(MESSAGE);
            let mut filled = 0;
            while filled < MESSAGE {
                let n = input.read(&mut data[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            data.truncate(filled);
            if data.is_empty() {
                return Ok(());
            }
            let len = data.len() as i64;
            let message = pb::WriteUploadRequest {
                upload_id: id.clone(),
                offset,
                data: data.freeze(),
                ..Default::default()
            };
            offset += len;
            if tx.blocking_send(message).is_err() {
                return Ok(());
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let status = client.write_upload(stream).await?.into_inner();
    anyhow::ensure!(status.complete, "upload not complete: {status:?}");
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reading thread panicked"))??;
    let uploaded = started.elapsed();

    let started = Instant::now();
    let mut stream = client
        .read_file(pb::ReadFileRequest {
            file_id: file.id.clone(),
            offset: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    let mut received = 0u64;
    while let Some(chunk) = stream.message().await? {
        received += chunk.data.len() as u64;
    }
    anyhow::ensure!(received == size, "read {received} bytes of {size}");
    println!(
        "{:.3} {:.3}",
        uploaded.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

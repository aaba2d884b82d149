//! Benchmark client: uploads a file to the catalogue with CreateFile + WriteUpload, streaming it
//! from disk in 1 MiB messages, and prints the seconds the upload took (creation to the final
//! durable answer). Used by bench/upload.sh.
//!
//! Usage: pirus-bench-upload GRPC_ADDR FILE

// A command-line tool: its answer goes to stdout.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use anyhow::{Context, Result};
use pirus_proto::catalogue::v1::{self as pb, catalogue_service_client::CatalogueServiceClient};
use tokio::io::AsyncReadExt;

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
    let mut client = CatalogueServiceClient::connect(format!("http://{addr}"))
        .await?
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
    let mut reader = tokio::fs::File::open(&path).await?;
    let id = file.id.clone();
    let stream = async_stream(move |tx| async move {
        let mut offset = 0i64;
        loop {
            let mut data = vec![0u8; MESSAGE];
            let mut filled = 0;
            while filled < MESSAGE {
                let n = reader
                    .read(&mut data[filled..])
                    .await
                    .expect("read the input file");
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            data.truncate(filled);
            let message = pb::WriteUploadRequest {
                upload_id: id.clone(),
                offset,
                data: data.into(),
            };
            offset += filled as i64;
            if tx.send(message).await.is_err() {
                break;
            }
        }
    });
    let status = client.write_upload(stream).await?.into_inner();
    anyhow::ensure!(status.complete, "upload not complete: {status:?}");
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

/// A stream fed by a producer task through a small channel (two messages in flight).
fn async_stream<F, Fut>(
    produce: F,
) -> tokio_stream::wrappers::ReceiverStream<pb::WriteUploadRequest>
where
    F: FnOnce(tokio::sync::mpsc::Sender<pb::WriteUploadRequest>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

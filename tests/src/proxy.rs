//! A TCP proxy for tests: forwards every connection to a target, at a bounded rate if asked
//! (so a transfer takes long enough to be interrupted), and cuts every open connection on
//! request (a dropped network path) while accepting new ones.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cuts: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<a free port>` to `target`, each direction at most
    /// `bytes_per_second` (0: unbounded).
    pub async fn start(target: SocketAddr, bytes_per_second: u64) -> Result<Self> {
        Self::on(
            TcpListener::bind("127.0.0.1:0").await?,
            target,
            bytes_per_second,
        )
    }

    /// [`Proxy::start`] on a listener bound beforehand (its port was given to a service
    /// first). Holding the listener from the start leaves no moment in which another
    /// process could take the port.
    pub fn start_on(
        listener: std::net::TcpListener,
        target: SocketAddr,
        bytes_per_second: u64,
    ) -> Result<Self> {
        listener.set_nonblocking(true)?;
        Self::on(TcpListener::from_std(listener)?, target, bytes_per_second)
    }

    fn on(listener: TcpListener, target: SocketAddr, bytes_per_second: u64) -> Result<Self> {
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let (cuts_rx, count) = (cuts.subscribe(), std::sync::Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let mut cut = cuts_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, bytes_per_second) => {}
                        _ = pump(sr, cw, bytes_per_second) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            cuts,
            accepted,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection open now; later ones go through.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes_per_second: u64,
) {
    let mut buffer = vec![0; 64 << 10];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        if bytes_per_second > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_second as f64)).await;
        }
    }
    let _ = to.shutdown().await;
}

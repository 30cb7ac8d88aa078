//! The one seam between the server and its I/O reactor. Connections read and
//! write bytes through two small traits; two backends implement them:
//!
//! - `Reactor::Tokio`: tokio's current-thread runtime (epoll), the default;
//! - `Reactor::Uring`: tokio-uring (io_uring), as the design card names it.
//!
//! Both run the same connection code on one network thread, inside a
//! `LocalSet`; docs/benchmarks.md measures both in one run.

use std::io;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::{connection, Shared};

/// Which I/O reactor serves the connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reactor {
    /// tokio's current-thread runtime (epoll).
    #[default]
    Tokio,
    /// tokio-uring (io_uring).
    Uring,
}

/// Bytes in from a connection.
pub(crate) trait ReadBytes {
    /// Appends what the peer sent to `into`; 0 at end of stream.
    async fn read_into(&mut self, into: &mut Vec<u8>) -> io::Result<usize>;
}

/// Bytes out to a connection.
pub(crate) trait WriteBytes {
    /// Writes all of `bytes`; hands the buffer back for reuse.
    async fn write_bytes(&mut self, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Shuts the sending side down.
    async fn finish(&mut self);
}

const READ_CHUNK_BYTES: usize = 64 * 1024;

impl ReadBytes for tokio::net::tcp::OwnedReadHalf {
    /// Reads straight into `into`'s spare capacity: no zeroing, no copy.
    async fn read_into(&mut self, into: &mut Vec<u8>) -> io::Result<usize> {
        into.reserve(READ_CHUNK_BYTES);
        self.read_buf(into).await
    }
}

impl WriteBytes for tokio::net::tcp::OwnedWriteHalf {
    async fn write_bytes(&mut self, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        (self.write_all(&bytes).await, bytes)
    }
    async fn finish(&mut self) {
        let _ = self.shutdown().await;
    }
}

/// The reading side of a tokio-uring stream, with its owned read buffer.
pub(crate) struct UringRead {
    stream: Rc<tokio_uring::net::TcpStream>,
    spare: Vec<u8>,
}

impl ReadBytes for UringRead {
    async fn read_into(&mut self, into: &mut Vec<u8>) -> io::Result<usize> {
        let mut buffer = std::mem::take(&mut self.spare);
        buffer.clear();
        buffer.reserve(READ_CHUNK_BYTES);
        let (read, buffer) = self.stream.read(buffer).await;
        into.extend_from_slice(&buffer);
        self.spare = buffer;
        read
    }
}

pub(crate) struct UringWrite {
    stream: Rc<tokio_uring::net::TcpStream>,
}

impl WriteBytes for UringWrite {
    async fn write_bytes(&mut self, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if bytes.is_empty() {
            return (Ok(()), bytes);
        }
        let (written, slice) = self.stream.write_all(bytes).await;
        (written, slice)
    }
    async fn finish(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

/// Whether this kernel lets the process use io_uring (containers often forbid it).
pub fn uring_available() -> bool {
    tokio_uring::uring_builder().build(8).is_ok()
}

/// Runs the accept loop on the chosen reactor until shutdown; blocks.
pub(crate) fn run(reactor: Reactor, listener: StdListener, shared: Arc<Shared>) -> io::Result<()> {
    match reactor {
        Reactor::Tokio => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
            let local = tokio::task::LocalSet::new();
            runtime.block_on(local.run_until(accept_tokio(listener, shared)));
        }
        Reactor::Uring => {
            if !uring_available() {
                return Err(io::Error::other("io_uring is not available to this process"));
            }
            tokio_uring::start(accept_uring(listener, shared));
        }
    }
    Ok(())
}

/// Counts a new connection; false (and a refusal sent) when over the cap.
fn admit(shared: &Shared) -> bool {
    let open = shared.counters.connections_open.fetch_add(1, Ordering::Relaxed);
    if open >= u64::from(shared.config.connections_max) {
        shared.counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
        shared.counters.protocol_refusals_by_code.add(crate::protocol::code::TOO_MANY_CONNECTIONS, 1);
        return false;
    }
    true
}

fn too_many_connections_frame(limit: u32) -> Vec<u8> {
    let answer = crate::protocol::Answer::protocol(crate::protocol::code::TOO_MANY_CONNECTIONS, 0, limit);
    super::connection::error_frame(0, answer)
}

/// How long the accept loop waits after a failed accept (EMFILE, say).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// How long, at shutdown, connections may take to answer what is in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A listening socket of one reactor, handing out connections as the two
/// halves the connection code reads and writes through.
pub(crate) trait Acceptor {
    type Read: ReadBytes + 'static;
    type Write: WriteBytes + 'static;
    async fn accept(&self) -> io::Result<(Self::Read, Self::Write)>;
}

impl Acceptor for tokio::net::TcpListener {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    async fn accept(&self) -> io::Result<(Self::Read, Self::Write)> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream.into_split())
    }
}

impl Acceptor for tokio_uring::net::TcpListener {
    type Read = UringRead;
    type Write = UringWrite;
    async fn accept(&self) -> io::Result<(Self::Read, Self::Write)> {
        let (stream, _) = tokio_uring::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        let stream = Rc::new(stream);
        let read = UringRead { stream: Rc::clone(&stream), spare: Vec::with_capacity(READ_CHUNK_BYTES) };
        Ok((read, UringWrite { stream }))
    }
}

async fn accept_tokio(listener: StdListener, shared: Arc<Shared>) {
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => accept_loop(listener, shared).await,
        Err(error) => tracing::error!(%error, "cannot serve on the listening socket"),
    }
}

async fn accept_uring(listener: StdListener, shared: Arc<Shared>) {
    accept_loop(tokio_uring::net::TcpListener::from_std(listener), shared).await
}

/// Accepts connections until shutdown, then gives them `DRAIN_GRACE` to
/// answer what they have in flight.
async fn accept_loop<A: Acceptor>(listener: A, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.stop_accepting.notified() => break,
            accepted = listener.accept() => {
                // Finished connections are reaped as new ones come, so their tasks do not pile up.
                while connections.try_join_next().is_some() {}
                let Ok((read, mut write)) = accepted else {
                    // Out of file descriptors, say: back off instead of spinning.
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                };
                if !admit(&shared) {
                    let frame = too_many_connections_frame(shared.config.connections_max);
                    connections.spawn_local(async move {
                        let _ = write.write_bytes(frame).await;
                        write.finish().await;
                        drop(read);
                    });
                    continue;
                }
                connections.spawn_local(connection::serve(read, write, Arc::clone(&shared)));
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
}

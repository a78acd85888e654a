//! What a client of the daemon's servers (the metrics address, the
//! monitoring socket) may take from it: a place among a bounded number of
//! connections, a bounded time and size to ask, and no busy loop when
//! accepting fails.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Connections a server holds at once. Past its cap, a new one closes the
/// oldest: idle clients can neither lock others out nor use up the daemon's
/// descriptors.
pub struct Admission {
    /// Connections holding a place, oldest first.
    held: Arc<Mutex<VecDeque<(u64, tokio::task::AbortHandle)>>>,
    next_id: u64,
    cap: usize,
}

/// A connection's place among those held; dropping it frees the place.
pub struct Place {
    id: u64,
    held: Arc<Mutex<VecDeque<(u64, tokio::task::AbortHandle)>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut held) = self.held.lock() {
            held.retain(|(other, _)| *other != self.id);
        }
    }
}

impl Admission {
    pub fn new(cap: usize) -> Self {
        Admission {
            held: Arc::default(),
            next_id: 0,
            cap,
        }
    }

    /// Serves a new connection on a task of its own, which holds a place
    /// for as long as it keeps the [`Place`] it is given.
    pub fn spawn<F>(&mut self, serve: impl FnOnce(Place) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.next_id;
        self.next_id += 1;
        let place = Place {
            id,
            held: self.held.clone(),
        };
        // Held across the spawn: the task cannot free its place before it has one.
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        let task = tokio::spawn(serve(place));
        held.push_back((id, task.abort_handle()));
        while held.len() > self.cap {
            if let Some((_, oldest)) = held.pop_front() {
                oldest.abort();
            }
        }
    }
}

/// Reads a request up to and including `end`, at most `max` bytes (what
/// came by then is returned), within `limit`; it may come in pieces.
pub async fn read_request<R: AsyncRead + Unpin>(
    stream: &mut R,
    end: &[u8],
    max: usize,
    limit: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut request = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    tokio::time::timeout(limit, async {
        while !request.windows(end.len()).any(|w| w == end) && request.len() < max {
            let room = chunk.len().min(max - request.len());
            match stream.read(&mut chunk[..room]).await? {
                0 => break,
                n => request.extend_from_slice(&chunk[..n]),
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))??;
    Ok(request)
}

/// Accepts that failed in a row.
#[derive(Default)]
pub struct AcceptFailures(u32);

impl AcceptFailures {
    /// The connection `server` accepted; or, when accepting failed (out of
    /// descriptors, say), None after logging now and then and waiting a
    /// little rather than spin.
    pub async fn take<S, A>(&mut self, server: &str, accepted: std::io::Result<(S, A)>) -> Option<S> {
        match accepted {
            Ok((stream, _)) => {
                self.0 = 0;
                Some(stream)
            }
            Err(error) => {
                self.0 += 1;
                if self.0.is_power_of_two() {
                    log::warn!("{server}: accept failed ({} in a row): {error}", self.0);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    }
}

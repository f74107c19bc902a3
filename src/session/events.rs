//! What wakes a session, and what each wake does: client bytes read or written,
//! upstream replies (shared, follow-up, dedicated), timeouts, shutdown.

use tokio::time::Instant;

use super::pinned::Pinned;
use super::{MAX_OUT, READ_CHUNK, Session};
use crate::upstream::{Reply, ReplyRx, UpstreamError};

/// Why the loop woke.
pub(super) enum Event {
    ClientRead(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Upstream(Reply),
    Resolved(u64, Reply),
    PinnedRead(std::io::Result<usize>),
    PinnedTimeout,
    Shutdown,
    /// The client sent nothing for `idle_timeout`.
    Idle,
    /// Redis no longer accepts the client's login (its user was deleted): the
    /// connection ends, as Redis ends it.
    Revoked,
    /// Another client ended this one (`CLIENT KILL ID`).
    Killed,
}

/// What the loop does after an event.
pub(super) enum Step {
    Go,
    /// The server is shutting down: no more shutdown signals to wait for.
    ShuttingDown,
    /// The session ends.
    End,
}

impl Session {
    /// Acts on one event.
    pub(super) async fn on_event(
        &mut self,
        event: Event,
        reply_rx: &mut ReplyRx,
        timeout: std::time::Duration,
    ) -> Step {
        if let Some(why) = ending(&event) {
            tracing::debug!(session = self.id, peer = %self.peer, "{why}");
            return Step::End;
        }
        match event {
            Event::ClientRead(Ok(0)) => {
                self.closing = true;
                if self.pinned.as_ref().is_some_and(Pinned::blocked) {
                    self.hang_up_blocked();
                }
            }
            Event::ClientRead(Ok(n)) => self.client_read(n).await,
            Event::Wrote(Ok(n)) => {
                self.wrote(n);
                // Decoding held back for a client that was not reading goes on
                // once it has read half (nothing is read meanwhile, so every
                // command already received runs before a hang-up is seen).
                if self.paused && self.out.len() < MAX_OUT / 2 {
                    self.resume().await;
                }
            }
            Event::Upstream(r) => {
                self.on_upstream(r);
                // Replies already queued go out with this one, in one write.
                while let Ok(r) = reply_rx.try_recv() {
                    self.on_upstream(r);
                }
                self.resume().await;
            }
            Event::Resolved(seq, reply) => {
                self.on_resolved(seq, reply);
                self.resume().await;
            }
            Event::PinnedRead(Ok(n)) if n > 0 => return self.pinned_read().await,
            Event::PinnedRead(Ok(_)) => {
                self.pinned_failed(UpstreamError::Io("connection closed by upstream".into()));
                self.resume().await;
            }
            Event::PinnedRead(Err(e)) => {
                self.pinned_failed(UpstreamError::Io(e.to_string()));
                self.resume().await;
            }
            Event::PinnedTimeout => {
                self.pinned_failed(UpstreamError::Timeout(timeout));
                self.resume().await;
            }
            Event::Shutdown => {
                self.closing = true;
                // A subscriber or a blocked command would hold shutdown for the
                // whole grace period; end them now.
                if self.pinned.as_ref().is_some_and(Pinned::waiting_long) {
                    self.pinned_failed(UpstreamError::Unavailable(
                        "cachet is shutting down".into(),
                    ));
                }
                return Step::ShuttingDown;
            }
            // Ends the session (`ending`, above).
            Event::Idle
            | Event::Killed
            | Event::Revoked
            | Event::ClientRead(Err(_))
            | Event::Wrote(Err(_)) => return Step::End,
        }
        Step::Go
    }

    /// `n` bytes arrived from the client.
    async fn client_read(&mut self, n: usize) {
        if self.rbuf.len() == self.rbuf.capacity() {
            // The read filled the buffer: this client sends in bulk.
            self.read_size = READ_CHUNK;
        }
        self.ctx
            .metrics
            .bytes_in
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.last_active = Instant::now();
        if self.holding.is_some() && !self.hurried {
            self.hurried = true;
            self.hurry.notify_waiters();
        }
        self.process().await
    }

    /// Frames arrived on the dedicated connection.
    async fn pinned_read(&mut self) -> Step {
        self.on_pinned_data();
        if self.out.len() as u64 > self.output_limit
            && self
                .pinned
                .as_ref()
                .is_some_and(Pinned::exempt_from_idle_timeout)
        {
            tracing::warn!(
                session = self.id,
                peer = %self.peer,
                owed_bytes = self.out.len(),
                "client output buffer limit reached (a subscriber not reading); closing the connection"
            );
            return Step::End;
        }
        self.resume().await;
        Step::Go
    }
}

/// Why `event` ends the session, if it does.
fn ending(event: &Event) -> Option<String> {
    Some(match event {
        Event::Idle => "idle timeout; closing the connection".into(),
        Event::Killed => "killed by another client (CLIENT KILL)".into(),
        Event::Revoked => "the client's upstream user is gone; closing the connection".into(),
        Event::ClientRead(Err(e)) => format!("client read failed: {e}"),
        Event::Wrote(Err(e)) => format!("client write failed: {e}"),
        _ => return None,
    })
}

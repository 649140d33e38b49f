//! How a record's outcome reaches its caller: through a [`Receipt`](super::Receipt) of its own,
//! or, for a record handed over with [`Producer::enqueue_tagged`](super::Producer::enqueue_tagged),
//! as its tag in an [`OutcomeBatch`] together with the other records resolved at the same time
//! (those of one `PutRecords` answer, or of one expiry pass). A batch costs one channel message
//! for all the records of a call, where receipts cost a channel and a wake-up each.

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::entry::Pending;
use super::record::{Ack, SendError};
use crate::metrics::ProducerMetrics;

/// Where a record's outcome goes.
pub(super) enum Notify {
    Receipt(oneshot::Sender<Result<Ack, SendError>>),
    /// The caller's tag, reported in an [`OutcomeBatch`].
    Tag(u64),
}

/// Outcomes of tagged records that ended together (one `PutRecords` answer's, say), each with
/// the tag it was handed over with.
/// The records' room in the buffer (their share of `max_buffered_records` and
/// `max_buffered_bytes`) is given back when the batch is dropped, so a caller that falls behind
/// reading outcomes holds the producer back instead of letting them pile up.
#[derive(Default)]
pub struct OutcomeBatch {
    outcomes: Vec<(u64, Result<Ack, SendError>)>,
    _permits: Permits,
}

impl OutcomeBatch {
    /// Each record's tag and what became of it.
    pub fn outcomes(&self) -> &[(u64, Result<Ack, SendError>)] {
        &self.outcomes
    }
}

/// The outcome batches of a producer started with
/// [`Producer::start_with_outcomes`](super::Producer::start_with_outcomes).
pub struct Outcomes(pub(super) mpsc::UnboundedReceiver<OutcomeBatch>);

impl Outcomes {
    /// The next batch; `None` once the producer's background task ended and every batch was
    /// read. Records it dropped at the shutdown timeout ([`Flusher::finish`](super::Flusher::finish)
    /// counts them) get no outcome.
    pub async fn recv(&mut self) -> Option<OutcomeBatch> {
        self.0.recv().await
    }
}

/// Buffer permits of several records merged into one of each kind, so that they go back to
/// their semaphores in one release instead of one per record.
#[derive(Default)]
struct Permits {
    records: Option<OwnedSemaphorePermit>,
    bytes: Option<OwnedSemaphorePermit>,
}

impl Permits {
    fn absorb(&mut self, (records, bytes): (OwnedSemaphorePermit, OwnedSemaphorePermit)) {
        for (held, new) in [(&mut self.records, records), (&mut self.bytes, bytes)] {
            match held {
                Some(held) => held.merge(new),
                None => *held = Some(new),
            }
        }
    }
}

/// Tells callers what became of their records, and counts it in the metrics.
#[derive(Clone, Default)]
pub(super) struct Reporter {
    pub(super) metrics: Option<ProducerMetrics>,
    pub(super) outcomes: Option<mpsc::UnboundedSender<OutcomeBatch>>,
}

impl Reporter {
    /// Starts resolving outcomes together (a call's, an expiry pass's).
    pub(super) fn resolution(&self) -> Resolution<'_> {
        Resolution {
            reporter: self,
            released: Permits::default(),
            batch: OutcomeBatch::default(),
        }
    }
}

/// Outcomes resolved together: each receipt at once, the tagged records' outcomes as one
/// [`OutcomeBatch`] when the resolution is dropped (one channel message per call rather than
/// per record), and the receipts' permits merged into one release then too.
pub(super) struct Resolution<'a> {
    reporter: &'a Reporter,
    released: Permits,
    batch: OutcomeBatch,
}

impl Resolution<'_> {
    pub(super) fn metrics(&self) -> Option<&ProducerMetrics> {
        self.reporter.metrics.as_ref()
    }

    /// Room for `n` more outcomes (a call's records), made at once rather than by doubling.
    pub(super) fn reserve(&mut self, n: usize) {
        if self.reporter.outcomes.is_some() {
            self.batch.outcomes.reserve(n);
        }
    }

    pub(super) fn resolve(&mut self, p: Pending, result: Result<Ack, SendError>) {
        let Pending {
            notify, _permits, ..
        } = p;
        match notify {
            Notify::Receipt(done) => {
                self.released.absorb(_permits);
                // The caller may have dropped its receipt: nobody to tell, nothing lost.
                let _ = done.send(result);
            }
            Notify::Tag(tag) => {
                self.batch._permits.absorb(_permits);
                self.batch.outcomes.push((tag, result));
            }
        }
    }
}

impl Drop for Resolution<'_> {
    fn drop(&mut self) {
        if let (false, Some(outcomes)) = (self.batch.outcomes.is_empty(), &self.reporter.outcomes) {
            // A caller that dropped its `Outcomes` reads none: the batch drops here.
            let _ = outcomes.send(std::mem::take(&mut self.batch));
        }
    }
}

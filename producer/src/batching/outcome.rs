//! How a record's outcome reaches its caller: through a [`Receipt`](super::Receipt) of its own,
//! or, for a record handed over with [`Producer::enqueue_tagged`](super::Producer::enqueue_tagged),
//! as its tag in an [`OutcomeBatch`] together with the other records of the same Kinesis record
//! (an aggregate's members) or of the same failure. A batch costs one channel message for
//! hundreds of records, where receipts cost a channel and a wake-up each.

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

/// Outcomes of tagged records that ended together, each with the tag it was handed over with.
/// The records' room in the buffer (their share of `max_buffered_records` and
/// `max_buffered_bytes`) is given back when the batch is dropped, so a caller that falls behind
/// reading outcomes holds the producer back instead of letting them pile up.
#[derive(Default)]
pub struct OutcomeBatch {
    outcomes: Vec<(u64, Result<Ack, SendError>)>,
    _permits: Permits,
}

impl OutcomeBatch {
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
    /// Resolves each record's receipt, and sends the tagged ones' outcomes as one batch.
    pub(super) fn resolve(&self, results: impl Iterator<Item = (Pending, Result<Ack, SendError>)>) {
        let mut released = Permits::default();
        let mut batch = OutcomeBatch::default();
        for (p, result) in results {
            let Pending {
                notify, _permits, ..
            } = p;
            match notify {
                Notify::Receipt(done) => {
                    released.absorb(_permits);
                    // The caller may have dropped its receipt: nobody to tell, nothing lost.
                    let _ = done.send(result);
                }
                Notify::Tag(tag) => {
                    batch._permits.absorb(_permits);
                    batch.outcomes.push((tag, result));
                }
            }
        }
        if let (false, Some(outcomes)) = (batch.outcomes.is_empty(), &self.outcomes) {
            // A caller that dropped its `Outcomes` reads none: the batch drops here.
            let _ = outcomes.send(batch);
        }
    }
}

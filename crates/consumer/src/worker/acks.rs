//! One partition's results awaiting their acks, settled in offset order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use stream_core::kafka::canceled;

use super::delivery::{Delivery, Outcome};
use crate::processor::Processor;

/// The results (or dead letters) of one partition's records, oldest first,
/// each settled once its ack is in and every record before it is settled.
///
/// Kept here rather than `FuturesOrdered` over each record's whole delivery:
/// that polls a record's future whenever its delivery report arrives, with a
/// task node per record, and every report wakes the partition task from the
/// thread that served it (perf: about a sixth of the bulk consumer's CPU in
/// those wake-ups and polls). A report completes its record's future whether
/// or not anyone waits on it, so only the oldest record still waiting
/// registers a waker here, and one wake-up settles it and every record after
/// it whose report is in, up to the next one still waiting.
///
/// What that costs: a record's report is looked at only once every record
/// before it is settled or recovering. A failure behind a record still
/// waiting (a result refused for good while an older one waits on a slow
/// partition) starts its retries or dead letter when the older one reports,
/// at the latest when it times out (`message.timeout.ms`), and the counters
/// and end-to-end latency of a record are taken when it is reached. Nothing
/// is stored early: a record's offset is stored only once it and every
/// record before it are acknowledged, as before. Once looked at, a failure
/// goes into its retries or dead letter beside the others.
pub(super) struct Acks<P> {
    slots: VecDeque<Slot<P>>,
    /// Sequence number of the front slot.
    front: u64,
    /// How many slots at the front are past waiting (settled or
    /// recovering): the next one to look at.
    looked: usize,
    /// Deliveries whose first report was a failure, by sequence number.
    recovering: FuturesUnordered<BoxFuture<'static, (u64, Outcome)>>,
}

// Nearly every slot is waiting, so boxing that variant would only add an
// allocation per record.
#[allow(clippy::large_enum_variant)]
enum Slot<P> {
    /// Waiting for its first delivery report.
    Waiting(Delivery<P>),
    /// Retrying, or writing a dead letter instead.
    Recovering,
    Settled(Outcome),
}

/// What became of the records settled in one look.
#[derive(Debug)]
pub(super) enum Settled {
    /// Every record up to and including this offset is acknowledged.
    UpTo(i64),
    /// A record could not be written: nothing from it on may be stored.
    /// Carries the offset of the last record before it that was settled in
    /// the same look, if any.
    Abandoned(Option<i64>),
}

impl<P: Processor> Acks<P> {
    pub(super) fn new() -> Self {
        Self { slots: VecDeque::new(), front: 0, looked: 0, recovering: FuturesUnordered::new() }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds the newest record's delivery.
    pub(super) fn push(&mut self, delivery: Delivery<P>) {
        let seq = self.front + self.slots.len() as u64;
        if delivery.sent.is_err() {
            // Refused at once: straight to its retries.
            self.recover(seq, delivery);
            self.slots.push_back(Slot::Recovering);
        } else {
            self.slots.push_back(Slot::Waiting(delivery));
        }
    }

    fn recover(&mut self, seq: u64, delivery: Delivery<P>) {
        self.recovering.push(Box::pin(async move { (seq, delivery.run().await) }));
    }

    /// Settles what can be settled, in offset order; pending while the
    /// oldest record is not settled yet. `None` when there is nothing left.
    pub(super) fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<Option<Settled>> {
        // Reports that came in, oldest first, up to the first record still
        // waiting, which keeps the waker.
        while self.looked < self.slots.len() {
            let seq = self.front + self.looked as u64;
            let Slot::Waiting(delivery) = &mut self.slots[self.looked] else {
                self.looked += 1;
                continue;
            };
            let Ok(report) = &mut delivery.sent else { unreachable!("refused sends are recovering from the start") };
            let Poll::Ready(report) = Pin::new(report).poll(cx) else { break };
            let report = match report {
                Ok(report) => report,
                Err(_gone) => Err(canceled()),
            };
            match report {
                Ok(_) => self.slots[self.looked] = Slot::Settled(delivery.acknowledged()),
                Err(failed) => {
                    let Slot::Waiting(mut delivery) = std::mem::replace(&mut self.slots[self.looked], Slot::Recovering)
                    else {
                        unreachable!("the slot was waiting")
                    };
                    delivery.sent = Err(failed);
                    self.recover(seq, delivery);
                }
            }
            self.looked += 1;
        }
        // Recoveries that finished (and, for new ones, their first steps).
        while let Poll::Ready(Some((seq, outcome))) = self.recovering.poll_next_unpin(cx) {
            self.slots[(seq - self.front) as usize] = Slot::Settled(outcome);
        }
        let mut last = None;
        while let Some(Slot::Settled(outcome)) = self.slots.front() {
            let outcome = match outcome {
                Outcome::Done(offset) => Some(*offset),
                Outcome::Abandoned => None,
            };
            self.slots.pop_front();
            self.front += 1;
            self.looked = self.looked.saturating_sub(1);
            match outcome {
                Some(offset) => last = Some(offset),
                None => return Poll::Ready(Some(Settled::Abandoned(last))),
            }
        }
        match last {
            Some(offset) => Poll::Ready(Some(Settled::UpTo(offset))),
            None if self.slots.is_empty() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// [`poll_settled`](Self::poll_settled) as a future.
    pub(super) async fn settled(&mut self) -> Option<Settled> {
        std::future::poll_fn(|cx| self.poll_settled(cx)).await
    }
}

//! One partition's pipeline: records in offset order, each processed and
//! its result enqueued without waiting for the previous ack, offsets
//! stored once everything up to them is acknowledged.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use stream_core::schema::trace;
use stream_core::telemetry;
use stream_core::{Event, EventResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acks::{Acks, Settled};
use super::context::Member;
use super::delivery::{dead_letter, send, Delivery, InFlight, Kind, Letter, Sent};
use super::record::Record;
use super::shared::{Shared, RESULT_SOURCE};
use crate::dlq;
use crate::processor::{ProcessError, Processor, WorkerInfo};

/// The task that owns one assigned partition until it is revoked or the
/// run stops.
pub(super) struct PartitionTask<P> {
    pub(super) shared: Arc<Shared<P>>,
    pub(super) consumer: Arc<Member>,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) worker: WorkerInfo,
    pub(super) stop: CancellationToken,
    /// Dropped when the task ends, which wakes a waiting rebalance.
    pub(super) _done: std_mpsc::Sender<()>,
}

impl<P: Processor> PartitionTask<P> {
    pub(super) async fn run(self, mut records: mpsc::Receiver<Vec<Record>>) {
        let mut in_flight = Acks::new();
        let shared = self.shared.clone();
        let max = shared.max_in_flight;
        let mut abandoned = false;
        // Records handed over but not started yet, in partition order.
        let mut queued: VecDeque<Record> = VecDeque::new();
        'run: loop {
            tokio::select! {
                biased;
                Some(settled) = in_flight.settled(), if !in_flight.is_empty() => {
                    if !self.settle(settled) {
                        abandoned = true;
                        break;
                    }
                }
                _ = self.stop.cancelled() => break,
                batch = records.recv(), if queued.is_empty() => match batch {
                    Some(batch) => queued.extend(batch),
                    None => break,
                },
            }
            // One record after another (per-key order), each result
            // enqueued without waiting for the previous ack, up to `max`
            // awaiting their acks.
            while in_flight.len() < max {
                let Some(record) = queued.pop_front() else { break };
                if self.stop.is_cancelled() {
                    break 'run;
                }
                in_flight.push(self.handle(record).await);
            }
        }
        // Records still queued are dropped unprocessed: their offsets are
        // not stored, so they are processed again after the restart or by
        // the partition's next owner.
        drop(records);
        if abandoned || in_flight.is_empty() {
            return;
        }
        let pending = in_flight.len();
        let deadline = tokio::time::sleep(shared.drain_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                // Results already in are stored before the deadline counts.
                biased;
                settled = in_flight.settled() => match settled {
                    Some(settled) => if !self.settle(settled) { break },
                    None => break,
                },
                _ = &mut deadline => {
                    tracing::warn!(
                        worker = self.worker.worker_id,
                        partition = self.partition,
                        unacknowledged = in_flight.len(),
                        "results not acknowledged within the drain timeout; their events will be processed again"
                    );
                    break;
                }
            }
        }
        tracing::debug!(partition = self.partition, pending, "partition drained");
    }

    /// Stores the offset after the last record settled. Returns `false` if
    /// the partition must stop.
    pub(super) fn settle(&self, settled: Settled) -> bool {
        match settled {
            Settled::UpTo(offset) => {
                self.store(Some(offset));
                true
            }
            Settled::Abandoned(last) => {
                self.store(last);
                false
            }
        }
    }

    pub(super) fn store(&self, offset: Option<i64>) {
        let Some(offset) = offset else { return };
        // `store_offset` records offset + 1, the next record to read.
        if let Err(error) = self.consumer.store_offset(&self.topic, self.partition, offset) {
            // After the partition was lost (session timeout) the store is
            // refused; the new owner processes those records again.
            tracing::debug!(partition = self.partition, offset, %error, "offset not stored");
        }
    }

    /// Processes one record and enqueues its result (or dead letter).
    /// Returns its delivery, which settles once the broker acknowledged it.
    pub(super) async fn handle(&self, record: Record) -> Delivery<P> {
        let shared = &self.shared;
        let started = Instant::now();
        let offset = record.offset();
        let counted = InFlight::new(&shared.stats);
        let processed = match Event::from_message(&*record) {
            Ok(event) => {
                let output = AssertUnwindSafe(shared.processor.process(&event, &self.worker)).catch_unwind().await;
                match output {
                    Ok(Ok(output)) => Ok((event, output)),
                    Ok(Err(error)) => Err(dlq::Failure::new(error.kind(), error.to_string())),
                    Err(panic) => Err(dlq::Failure::new(
                        "panic",
                        format!("processor panicked: {}", telemetry::panic_message(&*panic)),
                    )),
                }
            }
            Err(error) => {
                let error = ProcessError::from(error);
                Err(dlq::Failure::new(error.kind(), error.to_string()))
            }
        };
        shared.meters.processing.record(started.elapsed().as_secs_f64());
        let (sent, kind) = match processed {
            Ok((event, output)) => {
                let result = EventResult::answering(&event, Some(self.worker.worker_id), output);
                if let Some(trace) = result.traceparent.as_deref() {
                    // At info for a trace its caller sampled (as the
                    // gateway logs it), at debug otherwise.
                    // The trace id is cut out only when the line is written.
                    let (worker, event_id, latency_us) = (self.worker.worker_id, &result.event_id, result.latency_us);
                    if trace::is_sampled(trace) {
                        let trace_id = trace::trace_id(trace).unwrap_or(trace);
                        tracing::info!(worker, %event_id, trace_id, latency_us, "event processed");
                    } else {
                        tracing::debug!(worker, %event_id, trace_id = trace::trace_id(trace).unwrap_or(trace), latency_us, "event processed");
                    }
                }
                let data = result.to_json();
                // Scoped by the group: two groups processing one event write
                // two results, each under an id of its own.
                let record = result.record(
                    &data,
                    RESULT_SOURCE,
                    &shared.group,
                    &event,
                    &shared.results_topic,
                    shared.result_headers,
                );
                (send(&shared.producer, record).await, Kind::Result(event.time))
            }
            Err(failure) => (self.dead_letter(&record, &failure).await, Kind::DeadLetter(failure, Letter::Whole)),
        };
        Delivery {
            shared: shared.clone(),
            worker_id: self.worker.worker_id,
            offset,
            source: record,
            sent,
            kind,
            _counted: counted,
        }
    }

    pub(super) async fn dead_letter(&self, record: &Record, failure: &dlq::Failure) -> Sent {
        dead_letter(&self.shared, record, failure, self.worker.worker_id, Letter::Whole).await
    }
}

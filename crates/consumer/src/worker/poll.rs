//! The poll thread: takes records from librdkafka and hands each
//! partition's share to its task in batches.

use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use futures::stream::StreamExt;
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tokio::sync::mpsc;

use super::context::{commit_stored, Member, PartitionHandle};
use super::partition::PartitionTask;
use super::record::Record;
use super::shared::Shared;
use crate::processor::{Processor, WorkerInfo};

/// Most records the poll thread hands to a partition task at once: it
/// takes every record librdkafka already has (up to this many) and passes
/// each partition's share as one batch, so a busy partition costs one
/// channel hop and at most one task wake-up per batch, not per record.
pub(super) const HANDOFF_BATCH: usize = 128;

/// Batches buffered between the poll thread and a partition task (at most
/// `HANDOFF_BATCH` records each). Small: librdkafka already prefetches,
/// this only smooths hand-over.
pub(super) const PARTITION_QUEUE: usize = 4;

/// Polls `consumer` until the run stops, handing each record to the task
/// of its partition. Runs on a dedicated thread (see the module docs).
pub(crate) fn poll_loop<P: Processor>(shared: Arc<Shared<P>>, consumer: Arc<Member>, worker_id: u32) {
    let context = consumer.context().clone();
    futures::executor::block_on(async {
        let mut error_logged: Option<Instant> = None;
        // One stream for the whole loop: `recv()` would register and drop a
        // waker slot for every record.
        let mut stream = consumer.stream();
        let mut batches: Vec<(i32, Vec<Record>)> = Vec::new();
        'poll: loop {
            let received = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => break,
                received = stream.next() => received.expect("a consumer stream never ends"),
            };
            // Nothing is held yet, so a revoke served by that poll concerns
            // no record here.
            context.revoked.lock().unwrap().clear();
            // The first record is waited for; the ones librdkafka has
            // already fetched behind it are taken without waiting.
            let mut received = Some(received);
            let mut taken = 0;
            while let Some(next) = received.take() {
                match next {
                    Ok(record) => {
                        let partition = record.partition();
                        let record = Record::new(record, &consumer);
                        match batches.iter_mut().find(|(p, _)| *p == partition) {
                            Some((_, records)) => records.push(record),
                            None => batches.push((partition, vec![record])),
                        }
                    }
                    Err(error) => {
                        metrics::counter!("consumer_poll_errors_total").increment(1);
                        // librdkafka keeps retrying by itself; one line every
                        // few seconds tells the operator without flooding.
                        if error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(worker = worker_id, %error, "consumer error (librdkafka retries)");
                            error_logged = Some(Instant::now());
                        }
                        break;
                    }
                }
                taken += 1;
                if taken < HANDOFF_BATCH {
                    received = stream.next().now_or_never().map(|r| r.expect("a consumer stream never ends"));
                }
                // A revoke served by that poll: records taken before it from
                // a revoked partition are dropped (the record the poll just
                // returned is not among them).
                let revoked = std::mem::take(&mut *context.revoked.lock().unwrap());
                if !revoked.is_empty() {
                    batches.retain(|(partition, _)| !revoked.contains(partition));
                }
            }
            for (partition, records) in batches.drain(..) {
                let sender = {
                    let mut map = context.partitions.lock().unwrap();
                    map.entry(partition)
                        .or_insert_with(|| {
                            spawn_partition(&shared, &consumer, records[0].topic().to_string(), partition, worker_id)
                        })
                        .records
                        .clone()
                };
                tokio::select! {
                    biased;
                    _ = shared.stop.cancelled() => break 'poll,
                    sent = sender.send(records) => if sent.is_err() {
                        // A task only ends early when the run is failing (the
                        // reason is already recorded) or when it panicked.
                        if !shared.stop.is_cancelled() {
                            shared.fail(anyhow::anyhow!("worker {worker_id}: the task of partition {partition} ended unexpectedly"));
                        }
                        break 'poll;
                    }
                }
            }
        }
    });
    let finished = context.finish_partitions(None);
    if commit_stored(consumer.as_ref(), worker_id, "shutdown") {
        tracing::info!(worker = worker_id, tasks = finished, "worker stopped; finished work committed");
    } else {
        tracing::warn!(
            worker = worker_id,
            tasks = finished,
            "worker stopped; its finished work is not committed, so the group processes it again after its last commit"
        );
    }
}

pub(super) fn spawn_partition<P: Processor>(
    shared: &Arc<Shared<P>>,
    consumer: &Arc<Member>,
    topic: String,
    partition: i32,
    worker_id: u32,
) -> PartitionHandle {
    let (records, rx) = mpsc::channel(PARTITION_QUEUE);
    let (done_tx, done) = std_mpsc::channel();
    let stop = shared.stop.child_token();
    let task = PartitionTask {
        shared: shared.clone(),
        consumer: consumer.clone(),
        topic,
        partition,
        worker: WorkerInfo { worker_id },
        stop: stop.clone(),
        _done: done_tx,
    };
    shared.runtime.spawn(task.run(rx));
    PartitionHandle { records, stop, done }
}

//! One partition's results awaiting their acks, settled in offset order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use stream_core::kafka::canceled;
use tokio::time::{Instant, Sleep};

use super::delivery::{Delivery, Outcome};
use crate::processor::Processor;

/// What [`Acks`] needs of a record's delivery: a trait so that the order of
/// settling can be tested without a broker.
pub(super) trait Pending: Send {
    /// Refused at send: its retries start at once.
    fn refused(&self) -> bool;
    /// Its first delivery report: `true` acknowledged, `false` failed (the
    /// failure is kept for [`recover`](Self::recover)). Only for records
    /// not refused.
    fn poll_report(&mut self, cx: &mut Context<'_>) -> Poll<bool>;
    /// What an acknowledged record comes to.
    fn acknowledged(&self) -> Outcome;
    /// Its retries, or its dead letter, after a failure.
    fn recover(self) -> impl Future<Output = Outcome> + Send + 'static;
}

impl<P: Processor> Pending for Delivery<P> {
    fn refused(&self) -> bool {
        self.sent.is_err()
    }

    fn poll_report(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Ok(report) = &mut self.sent else { unreachable!("refused sends are recovering from the start") };
        let Poll::Ready(report) = Pin::new(report).poll(cx) else { return Poll::Pending };
        match report {
            Ok(Ok(_)) => Poll::Ready(true),
            Ok(Err(failed)) => {
                self.sent = Err(failed);
                Poll::Ready(false)
            }
            Err(_gone) => {
                self.sent = Err(canceled());
                Poll::Ready(false)
            }
        }
    }

    fn acknowledged(&self) -> Outcome {
        Delivery::acknowledged(self)
    }

    fn recover(self) -> impl Future<Output = Outcome> + Send + 'static {
        self.run()
    }
}

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
/// What that costs: a record's report is looked at once every record
/// before it is settled or recovering, or once the same record has been
/// the oldest still waiting for [`PROBE_AFTER`]: then a probe looks at the
/// reports behind it, so a failure there (a result refused for good while
/// an older one waits on a slow partition) starts its retries or dead
/// letter then, not when the older one reports or times out
/// (`message.timeout.ms`). The clock restarts for each new oldest record,
/// so a run of records that each settle just within it still holds a
/// failure back. The counters and end-to-end latency of a record are taken
/// when its report is looked at, by a probe too: a record counted that way
/// whose offset a drain then gives up on is processed, and counted, again.
/// Nothing is stored early: a record's offset is stored only once it and
/// every record before it are acknowledged, as before. Once looked at, a
/// failure goes into its retries or dead letter beside the others.
pub(super) struct Acks<D> {
    slots: VecDeque<Slot<D>>,
    /// Sequence number of the front slot.
    front: u64,
    /// How many slots at the front are past waiting (settled or
    /// recovering): the next one to look at.
    looked: usize,
    /// Deliveries whose first report was a failure, by sequence number.
    recovering: FuturesUnordered<BoxFuture<'static, (u64, Outcome)>>,
    /// The oldest record still waiting, and when the reports behind it are
    /// due to be probed.
    probing: Option<(u64, Instant)>,
    /// Wakes the task for that probe; made when first needed.
    probe: Option<Pin<Box<Sleep>>>,
}

/// How long the oldest record may wait before the reports behind it are
/// looked at anyway.
pub(super) const PROBE_AFTER: Duration = Duration::from_secs(1);

// Nearly every slot is waiting, so boxing that variant would only add an
// allocation per record.
#[allow(clippy::large_enum_variant)]
enum Slot<D> {
    /// Waiting for its first delivery report.
    Waiting(D),
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

impl<D: Pending> Acks<D> {
    pub(super) fn new() -> Self {
        Self {
            slots: VecDeque::new(),
            front: 0,
            looked: 0,
            recovering: FuturesUnordered::new(),
            probing: None,
            probe: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds the newest record's delivery.
    pub(super) fn push(&mut self, delivery: D) {
        let seq = self.front + self.slots.len() as u64;
        if delivery.refused() {
            // Refused at once: straight to its retries.
            self.recover(seq, delivery);
            self.slots.push_back(Slot::Recovering);
        } else {
            self.slots.push_back(Slot::Waiting(delivery));
        }
    }

    fn recover(&mut self, seq: u64, delivery: D) {
        let recovery = delivery.recover();
        self.recovering.push(Box::pin(async move { (seq, recovery.await) }));
    }

    /// Settles what can be settled, in offset order; pending while the
    /// oldest record is not settled yet. `None` when there is nothing left.
    pub(super) fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<Option<Settled>> {
        // Reports that came in, oldest first, up to the first record still
        // waiting, which keeps the waker.
        while self.looked < self.slots.len() {
            let Slot::Waiting(delivery) = &mut self.slots[self.looked] else {
                self.looked += 1;
                continue;
            };
            let Poll::Ready(acknowledged) = delivery.poll_report(cx) else { break };
            self.take_report(self.looked, acknowledged);
            self.looked += 1;
        }
        if self.looked < self.slots.len() {
            self.watch_oldest(cx);
        } else {
            self.probing = None;
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

    /// Times how long the oldest record still waiting has been the oldest,
    /// and once that is [`PROBE_AFTER`], probes the reports behind it (again
    /// every `PROBE_AFTER` while it stays the oldest). A new oldest only notes
    /// its due time (one clock read); the timer keeps its deadline and, if
    /// it fires for an older record that settled since, moves to the new
    /// one. So a partition whose records settle steadily never resets it.
    fn watch_oldest(&mut self, cx: &mut Context<'_>) {
        let seq = self.front + self.looked as u64;
        let due = match self.probing {
            Some((probed, due)) if probed == seq => due,
            _ => {
                let due = Instant::now() + PROBE_AFTER;
                self.probing = Some((seq, due));
                due
            }
        };
        let mut probe = self.probe.take().unwrap_or_else(|| Box::pin(tokio::time::sleep_until(due)));
        while probe.as_mut().poll(cx).is_ready() {
            // Set for this record, or for an older one settled since.
            let now = Instant::now();
            let next = if now >= due {
                self.probe_behind();
                let next = now + PROBE_AFTER;
                self.probing = Some((seq, next));
                next
            } else {
                due
            };
            probe.as_mut().reset(next);
        }
        self.probe = Some(probe);
    }

    /// Looks at the reports behind the oldest record still waiting, without
    /// registering for them: a failure starts its recovery, an ack settles
    /// its record (stored later, in order).
    ///
    /// Outside Tokio's task budget: every report taken spends a unit of it,
    /// and once it is spent a report that is in reads as pending, with the
    /// wake-up going to this probe's no-op waker, so a probe would stop
    /// after about 128 reports and reach a failure further back seconds
    /// later. A probe takes at most `--max-in-flight` reports a second.
    fn probe_behind(&mut self) {
        let probe = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            for index in self.looked + 1..self.slots.len() {
                let Slot::Waiting(delivery) = &mut self.slots[index] else { continue };
                let Poll::Ready(acknowledged) = delivery.poll_report(cx) else { continue };
                self.take_report(index, acknowledged);
            }
            Poll::Ready(())
        }));
        // Ready at its first poll.
        let _ = std::pin::pin!(probe).poll(&mut Context::from_waker(futures::task::noop_waker_ref()));
    }

    /// The waiting record at `index` has its first report: settled if it
    /// was acknowledged, into its retries or dead letter if not.
    fn take_report(&mut self, index: usize, acknowledged: bool) {
        let Slot::Waiting(delivery) = std::mem::replace(&mut self.slots[index], Slot::Recovering) else {
            unreachable!("the slot was waiting")
        };
        if acknowledged {
            self.slots[index] = Slot::Settled(delivery.acknowledged());
        } else {
            self.recover(self.front + index as u64, delivery);
        }
    }

    /// [`poll_settled`](Self::poll_settled) as a future.
    pub(super) async fn settled(&mut self) -> Option<Settled> {
        std::future::poll_fn(|cx| self.poll_settled(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures::task::{waker, ArcWake};
    use tokio::sync::oneshot;

    use super::*;

    /// A record whose first report and recovery the test sends by hand.
    struct Fake {
        offset: i64,
        /// `None`: refused at send.
        report: Option<oneshot::Receiver<bool>>,
        /// Whether its recovery wrote something (`Done`) or gave up.
        recovery: oneshot::Receiver<bool>,
        /// Set when its recovery first runs.
        recovering: Arc<AtomicBool>,
    }

    impl Pending for Fake {
        fn refused(&self) -> bool {
            self.report.is_none()
        }

        fn poll_report(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
            let report = self.report.as_mut().expect("looked at only when not refused");
            Pin::new(report).poll(cx).map(|acked| acked.unwrap_or(false))
        }

        fn acknowledged(&self) -> Outcome {
            Outcome::Done(self.offset)
        }

        async fn recover(self) -> Outcome {
            self.recovering.store(true, Ordering::SeqCst);
            match self.recovery.await {
                Ok(true) => Outcome::Done(self.offset),
                _ => Outcome::Abandoned,
            }
        }
    }

    /// The test's ends of one record.
    struct Ends {
        report: Option<oneshot::Sender<bool>>,
        recovery: Option<oneshot::Sender<bool>>,
        recovering: Arc<AtomicBool>,
    }

    impl Ends {
        fn report(&mut self, acked: bool) {
            self.report.take().expect("one report").send(acked).unwrap();
        }

        /// The delivery's sender goes away without a report.
        fn drop_report(&mut self) {
            drop(self.report.take().expect("one report"));
        }

        fn recovered(&mut self, wrote: bool) {
            self.recovery.take().expect("one recovery").send(wrote).unwrap();
        }

        fn recovering(&self) -> bool {
            self.recovering.load(Ordering::SeqCst)
        }
    }

    fn record(acks: &mut Acks<Fake>, offset: i64, refused: bool) -> Ends {
        let (report_tx, report_rx) = oneshot::channel();
        let (recovery_tx, recovery_rx) = oneshot::channel();
        let recovering = Arc::new(AtomicBool::new(false));
        let report = (!refused).then_some(report_rx);
        acks.push(Fake { offset, report, recovery: recovery_rx, recovering: recovering.clone() });
        Ends { report: (!refused).then_some(report_tx), recovery: Some(recovery_tx), recovering }
    }

    /// Records at `offsets`, each waiting for its report, and a count of
    /// the task's wake-ups.
    fn waiting(offsets: std::ops::Range<i64>) -> (Arc<Wakes>, Acks<Fake>, Vec<Ends>) {
        let mut acks = Acks::new();
        let ends = offsets.map(|offset| record(&mut acks, offset, false)).collect();
        (Arc::new(Wakes::default()), acks, ends)
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn look(acks: &mut Acks<Fake>, wakes: &Arc<Wakes>) -> Poll<Option<Settled>> {
        let waker = waker(wakes.clone());
        acks.poll_settled(&mut Context::from_waker(&waker))
    }

    fn up_to(poll: Poll<Option<Settled>>) -> Option<i64> {
        match poll {
            Poll::Ready(Some(Settled::UpTo(offset))) => Some(offset),
            Poll::Pending => None,
            other => panic!("expected UpTo or Pending, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn offsets_are_settled_in_order_whatever_order_the_acks_come_in() {
        let (wakes, mut acks, mut ends) = waiting(10..15);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        ends[4].report(true);
        ends[2].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), None, "the oldest is still waiting");
        ends[0].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(10), "up to the next one still waiting");
        ends[1].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(12));
        ends[3].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(14));
        assert!(acks.is_empty());
        assert!(matches!(look(&mut acks, &wakes), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn only_the_oldest_waiting_record_wakes_the_task() {
        let (wakes, mut acks, mut ends) = waiting(0..3);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        ends[2].report(true);
        ends[1].report(true);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "reports behind the oldest wake nobody");
        ends[0].report(true);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake-up for the oldest");
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(2), "which settles all three");
    }

    #[tokio::test]
    async fn a_failure_is_retried_before_the_records_after_it_are_stored() {
        let (wakes, mut acks, mut ends) = waiting(0..3);
        ends[0].report(true);
        ends[1].report(false);
        ends[2].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(0), "stops before the failed record");
        assert_eq!(up_to(look(&mut acks, &wakes)), None, "its recovery is under way");
        ends[1].recovered(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(2), "then it and the one after it");
    }

    #[tokio::test]
    async fn a_failure_behind_a_waiting_record_recovers_once_that_one_reports() {
        let (wakes, mut acks, mut ends) = waiting(0..2);
        ends[1].report(false);
        ends[1].recovered(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), None, "the older record still waits");
        assert!(!ends[1].recovering(), "not looked at behind a waiting record");
        ends[0].report(true);
        assert_eq!(
            up_to(look(&mut acks, &wakes)),
            Some(1),
            "the older record's report starts the failure's recovery, here done at once"
        );
        assert!(ends[1].recovering());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_behind_a_record_that_waits_too_long_is_probed() {
        let (wakes, mut acks, mut ends) = waiting(0..4);
        ends[1].report(true);
        ends[2].report(false);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        tokio::time::advance(PROBE_AFTER - Duration::from_millis(10)).await;
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        assert!(!ends[2].recovering(), "not before the probe is due");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the probe's timer wakes the task");
        assert_eq!(up_to(look(&mut acks, &wakes)), None, "the oldest still waits: nothing is stored");
        assert!(ends[2].recovering(), "the failure behind it recovers");
        // A report that comes in after a probe is found by the next one.
        ends[3].report(false);
        tokio::time::advance(PROBE_AFTER).await;
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        assert!(ends[3].recovering());
        ends[2].recovered(true);
        ends[3].recovered(true);
        ends[0].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(3), "in order once the oldest reports");
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_reaches_every_report_behind_the_oldest() {
        // More reports than Tokio's task budget (128) lets one poll take.
        let n = 1000;
        let (wakes, mut acks, mut ends) = waiting(0..n);
        for end in &mut ends[1..n as usize - 1] {
            end.report(true);
        }
        ends[n as usize - 1].report(false);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        tokio::time::advance(PROBE_AFTER + Duration::from_millis(10)).await;
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        assert!(ends[n as usize - 1].recovering(), "the failure 998 records back, in the first probe");
        ends[n as usize - 1].recovered(true);
        ends[0].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(n - 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probed_record_wakes_the_task_once_it_is_the_oldest() {
        let (wakes, mut acks, mut ends) = waiting(0..3);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        tokio::time::advance(PROBE_AFTER + Duration::from_millis(10)).await;
        // The probe polls records 1 and 2 with a waker that does nothing.
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        let woken = wakes.0.load(Ordering::SeqCst);
        ends[0].report(true);
        assert_eq!(wakes.0.load(Ordering::SeqCst), woken + 1);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(0));
        ends[1].report(true);
        assert_eq!(wakes.0.load(Ordering::SeqCst), woken + 2, "record 1 holds the task's waker again");
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_moves_to_a_new_oldest_record() {
        let (wakes, mut acks, mut ends) = waiting(0..3);
        ends[2].report(false);
        assert_eq!(up_to(look(&mut acks, &wakes)), None, "record 0 due for a probe at 1.0 s");
        tokio::time::advance(PROBE_AFTER * 3 / 4).await;
        ends[0].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(0), "record 1 due at 1.75 s");
        tokio::time::advance(PROBE_AFTER / 2).await;
        let woken = wakes.0.load(Ordering::SeqCst);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        assert!(!ends[2].recovering(), "the timer fired for record 0: it moves, no probe");
        tokio::time::advance(PROBE_AFTER / 2 + Duration::from_millis(10)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), woken + 1);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        assert!(ends[2].recovering(), "probed at 1.75 s");
    }

    #[tokio::test(start_paused = true)]
    async fn records_that_settle_steadily_are_never_probed() {
        let (wakes, mut acks, mut ends) = waiting(0..3);
        ends[2].report(false);
        for index in 0..2 {
            // Each oldest waits less than PROBE_AFTER, two together more.
            tokio::time::advance(PROBE_AFTER * 3 / 4).await;
            assert_eq!(up_to(look(&mut acks, &wakes)), if index == 0 { None } else { Some(0) });
            assert!(!ends[2].recovering(), "not probed while the oldest keeps settling");
            ends[index].report(true);
        }
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(1));
        assert!(ends[2].recovering(), "reached in order");
    }

    #[tokio::test]
    async fn a_report_that_never_comes_is_a_failure_to_recover_from() {
        let (wakes, mut acks, mut ends) = waiting(0..2);
        ends[0].drop_report();
        ends[1].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), None, "recovering, not settled");
        assert!(ends[0].recovering());
        ends[0].recovered(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(1));
    }

    #[tokio::test]
    async fn a_record_refused_at_send_recovers_at_once() {
        let wakes = Arc::new(Wakes::default());
        let mut acks = Acks::new();
        let mut refused = record(&mut acks, 0, true);
        let mut after = record(&mut acks, 1, false);
        after.report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        assert!(refused.recovering(), "its recovery runs without a report");
        refused.recovered(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(1));
    }

    #[tokio::test]
    async fn nothing_from_an_abandoned_record_on_is_stored() {
        let (wakes, mut acks, mut ends) = waiting(5..8);
        ends[0].report(true);
        ends[1].report(false);
        ends[2].report(true);
        assert_eq!(up_to(look(&mut acks, &wakes)), Some(5));
        ends[1].recovered(false);
        match look(&mut acks, &wakes) {
            Poll::Ready(Some(Settled::Abandoned(None))) => {}
            other => panic!("expected Abandoned(None), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_abandoned_record_carries_what_was_settled_before_it_in_the_same_look() {
        let (wakes, mut acks, mut ends) = waiting(5..8);
        ends[1].report(false);
        ends[1].recovered(false);
        assert_eq!(up_to(look(&mut acks, &wakes)), None);
        ends[0].report(true);
        match look(&mut acks, &wakes) {
            Poll::Ready(Some(Settled::Abandoned(Some(5)))) => {}
            other => panic!("expected Abandoned(Some(5)), got {other:?}"),
        }
    }
}

//! The real binary, killed with SIGKILL mid-run and started again: every
//! event still gets a result, the only duplicates are work the first
//! process did but had not committed, and a SIGTERM afterwards exits
//! cleanly with everything committed.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use stream_core::schema::Timestamp;
use stream_core::testing::{create_project_topics, kafka_args, unique_name, ScratchDir};
use tokio::process::Child;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing_and_restart_finishes_the_work() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let events = json_events(20_000, 50);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let group = unique_name("crash-test");
    // The two processes' logs, kept if the test fails.
    let logs = ScratchDir::new("crash-test");
    // Events arrive over about four seconds instead of all before the start:
    // the kill below must land while there is work left, however quickly
    // the first process gets through what is there.
    let feeder = publish_paced(&args, events);

    let mut first = start_binary(&args, &group, &logs.join("1.log"));
    results.wait_for_len(500, "the first process to produce some results").await;
    wait_for_commit_above(&args, &group, &args.topics.events, 0).await;
    first.kill().await.expect("SIGKILL");
    // Every result the first process wrote was stamped before this instant,
    // every result of the second one after it.
    let killed_at = Timestamp::now();
    let committed_at_kill = committed_total(&args, &group, &args.topics.events).await;
    let at_kill = results.len();
    assert!(at_kill < ids.len(), "the kill must land mid-run ({at_kill} results already)");

    let second = start_binary(&args, &group, &logs.join("2.log"));
    feeder.await.expect("every event published");
    let got = results.wait_for_ids(&ids).await;

    // A graceful stop of the second process commits everything.
    let pid = nix::unistd::Pid::from_raw(second.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let exit = tokio::time::timeout(DEADLINE, wait(second)).await.expect("exits after SIGTERM");
    assert!(exit.success(), "consumer exited with {exit}");
    let (committed, end) = committed_and_end(&args, &group, &args.topics.events).await;
    assert_eq!(committed, end, "after SIGTERM the group has committed every partition to its end");

    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        *per_id.entry(r.event_id.as_str()).or_default() += 1;
    }
    let by_first: HashSet<&str> =
        got.iter().filter(|r| r.processed_at < killed_at).map(|r| r.event_id.as_str()).collect();
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "events {}, results {}, duplicates {duplicates} (processed by the first process: {}, seen at the kill: {at_kill})",
        ids.len(),
        got.len(),
        by_first.len()
    );
    assert_eq!(per_id.len(), ids.len());
    // Replays come only from work the first process did but had not
    // committed when it died: an event is processed at most twice, only if
    // the first process had processed it, and no more of them than it had
    // processed above its committed offsets.
    for (id, n) in &per_id {
        assert!(*n <= 2, "event {id} processed {n} times after a single kill");
        assert!(*n == 1 || by_first.contains(id), "event {id} replayed but the first process never processed it");
    }
    let replayed = per_id.values().filter(|n| **n > 1).count();
    check_replays(1, by_first.len(), committed_at_kill, replayed);
    // A replayed event's result has the first one's id, so a reader that
    // drops repeated ids sees each result once.
    let repeated = results.assert_one_result_id_per_event();
    eprintln!("{repeated} events with more than one result, each under one id");
    assert!(by_first.len() < ids.len(), "the first process finished everything: the kill landed too late");
}

async fn wait(mut child: Child) -> std::process::ExitStatus {
    child.wait().await.expect("wait for the consumer")
}

//! The real binary SIGKILLed five times at random points of one run of
//! 100,000 events, restarted each time: every event gets a result, each
//! process commits as it goes (the committed offsets grow from kill to
//! kill), and the only duplicates are work a killed process did but had not
//! committed.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use common::*;
use stream_core::schema::Timestamp;
use stream_core::testing::{create_project_topics, kafka_args, unique_name, ScratchDir};

const EVENTS: usize = 100_000;
const KILLS: usize = 5;

/// A kill point in `(low, high)`, different on every run.
fn random_between(low: usize, high: usize) -> usize {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as usize;
    low + nanos % (high - low).max(1)
}

/// Waits until `target` events have a result, looking every 5 ms: at the
/// speed a restarted consumer works off its backlog, a slower look lets it
/// run thousands of events past the kill point.
async fn wait_for_answered(results: &Collector, target: usize, kill: usize) {
    let deadline = Instant::now() + DEADLINE;
    while results.answered() < target {
        assert!(Instant::now() < deadline, "timed out waiting for {target} events with results before kill {kill}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_in_one_run_lose_nothing_and_replay_only_uncommitted_work() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let events = json_events(EVENTS, 100);
    publish(&args, &events).await;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let group = unique_name("kill5");
    // Each process's log, kept if the test fails.
    let logs = ScratchDir::new("kill5");
    let started = Instant::now();

    // Kill points spread over the run: the i-th lands once the events with a
    // result reach a point somewhere in the i-th of KILLS + 2 equal slices of
    // the events, never at the same place, and the last well before the end.
    // Counted in distinct events, not in results: the results hold every
    // replay too, so a kill timed by their count could land after the last
    // event (it did, on a fast run).
    let slice = EVENTS / (KILLS + 2);
    let mut kills = Vec::new();
    // Results stamped between two kill instants come from one process.
    let mut kill_times = Vec::new();
    // The group's committed total right after each kill.
    let mut committed = Vec::new();
    for n in 0..KILLS {
        let mut process = start_binary(&args, &group, &logs.join(format!("{n}.log")));
        // This process must have committed work of its own before it dies.
        // Waited for first, so that the kill follows the kill point within
        // a look of `wait_for_answered`.
        let floor = committed.last().copied().unwrap_or(0);
        wait_for_commit_above(&args, &group, &args.topics.events, floor).await;
        let target = random_between(n * slice + slice / 4, (n + 1) * slice).max(results.answered() + 100);
        wait_for_answered(&results, target, n + 1).await;
        process.kill().await.expect("SIGKILL");
        kills.push(results.len());
        kill_times.push(Timestamp::now());
        committed.push(committed_total(&args, &group, &args.topics.events).await);
    }
    let last = start_binary(&args, &group, &logs.join("last.log"));
    let got = results.wait_for_ids(&ids).await;
    drop(last);

    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        *per_id.entry(r.event_id.as_str()).or_default() += 1;
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    let lost = ids.iter().filter(|id| !per_id.contains_key(id.as_str())).count();
    eprintln!(
        "consumer killed {KILLS} times (results seen at each kill: {kills:?}, committed: {committed:?}): \
         {} events, {} results, {duplicates} duplicates, {lost} lost, in {:?}",
        ids.len(),
        got.len(),
        started.elapsed()
    );
    assert_eq!(lost, 0);
    // A replayed event's result has the first one's id (five kills, each
    // with work above the committed offsets, always leave replays).
    let repeated = results.assert_one_result_id_per_event();
    assert!(repeated > 0, "no event was replayed: the id check above saw no repeat");
    assert!(kills.windows(2).all(|w| w[0] < w[1]), "every kill landed mid-run: {kills:?}");
    // Counted in events, not results: the results seen include replays.
    let before_last: HashSet<&str> =
        got.iter().filter(|r| r.processed_at < *kill_times.last().unwrap()).map(|r| r.event_id.as_str()).collect();
    assert!(
        before_last.len() < ids.len(),
        "the last kill landed before the end ({} of {} events had results)",
        before_last.len(),
        ids.len()
    );
    assert!(committed.windows(2).all(|w| w[0] < w[1]), "commits grow from kill to kill: {committed:?}");
    // A duplicate is a replay of work a killed process did but had not
    // committed: bounded, kill by kill, by the events that had results but
    // were above the committed offsets.
    for (n, (killed, committed)) in kill_times.iter().zip(&committed).enumerate() {
        let before: HashSet<&str> =
            got.iter().filter(|r| r.processed_at < *killed).map(|r| r.event_id.as_str()).collect();
        let replayed: HashSet<&str> = got
            .iter()
            .filter(|r| r.processed_at > *killed && before.contains(r.event_id.as_str()))
            .map(|r| r.event_id.as_str())
            .collect();
        check_replays(n + 1, before.len(), *committed, replayed.len());
    }
    // No process ever handles one event twice.
    let mut per_process: HashMap<(&str, usize), usize> = HashMap::new();
    for r in &got {
        let process = kill_times.partition_point(|killed| *killed < r.processed_at);
        *per_process.entry((r.event_id.as_str(), process)).or_default() += 1;
    }
    for ((id, process), n) in per_process {
        assert_eq!(n, 1, "process {process} produced {n} results for event {id}");
    }
}

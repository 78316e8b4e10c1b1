//! Restarts during rebalances: the real binary, three processes in one
//! group. One is SIGKILLed and started again at once, so the group
//! rebalances while the dead member still holds its partitions (until its
//! session times out); a third joins during that rebalance and is killed
//! in turn. Nothing is lost, a replayed event's results share one id, and
//! per key the events' first results come in the order they were sent.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use stream_core::testing::{create_project_topics, eventually, kafka_args, unique_name, ScratchDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_killed_and_restarted_during_rebalances_lose_nothing_and_keep_order() {
    let args = kafka_args();
    create_project_topics(&args).await;
    let results = Collector::start(&args, &args.topics.results).await;
    let keys = 40;
    let events = json_events(30_000, keys);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let group = unique_name("rebalance");
    let logs = ScratchDir::new("rebalance");
    // Events arrive over about six seconds, so that every kill and join
    // below lands while there is work left.
    let feeder = publish_paced(&args, events);

    let a = start_binary(&args, &group, &logs.join("a.log"));
    let mut b = start_binary(&args, &group, &logs.join("b.log"));
    results.wait_for_len(1_000, "the first results").await;
    wait_for_commit_above(&args, &group, &args.topics.events, 0).await;

    b.kill().await.expect("SIGKILL b");
    // Joins while b's partitions are still b's: the group rebalances
    // without it, and again when its session runs out.
    let b_again = start_binary(&args, &group, &logs.join("b-again.log"));
    let mut c = start_binary(&args, &group, &logs.join("c.log"));
    let target = results.answered() + 1_000;
    eventually(DEADLINE, "1,000 more events with results", || async { (results.answered() >= target).then_some(()) })
        .await;
    c.kill().await.expect("SIGKILL c");
    let at_kill = results.answered();
    assert!(at_kill < ids.len(), "the kills must land mid-run ({at_kill} events already had results)");

    feeder.await.expect("every event published");
    let got = results.wait_for_ids(&ids).await;
    drop((a, b_again));

    let answered: HashSet<&str> = got.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(answered.len(), ids.len(), "every event has a result");
    let repeated = results.assert_one_result_id_per_event();
    // Per key, the first result of each event in the order the results
    // topic holds them (one key, one partition): one owner at a time, each
    // starting after what the last one committed, so the order is the
    // events'.
    let mut first_seqs: HashMap<String, Vec<u64>> = HashMap::new();
    let mut counted = HashSet::new();
    for result in &got {
        if counted.insert(result.event_id.as_str()) {
            let key = result.stream_id.clone().expect("a keyed result");
            first_seqs.entry(key).or_default().push(result.output["seq"].as_u64().expect("the event's seq"));
        }
    }
    assert_eq!(first_seqs.len(), keys);
    for (key, seqs) in &first_seqs {
        let expected: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "first results of {key} in the order its events were sent");
    }
    eprintln!("{} events, {} results, {repeated} events with more than one result", ids.len(), got.len());
}

//! The real binary killed with SIGKILL under concurrent load: no shutdown,
//! no flush, and still every event it answered 2xx for is in the topic.

use crate::child;
use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use stream_core::testing::eventually;

const KEY: &str = "kill-test-key";
const CLIENTS: u64 = 16;

#[tokio::test]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let kafka = stream_core::testing::kafka_args();
    let mut gateway = child::Gateway::start(&kafka, KEY, &[]).await;
    let acked_count = Arc::new(AtomicUsize::new(0));
    let url = gateway.url("/publish");
    let mut clients = Vec::new();
    for client_no in 0..CLIENTS {
        let url = url.clone();
        let acked_count = acked_count.clone();
        clients.push(tokio::spawn(async move {
            let client = common::client();
            let (mut acked, mut refused) = (Vec::new(), 0usize);
            for n in 0u64.. {
                let body = json!({"message": {"client": client_no, "n": n}});
                match client.post(&url).header("X-API-Key", KEY).json(&body).send().await {
                    Ok(response) if response.status().is_success() => {
                        // A 2xx whose body is cut off by the kill was never
                        // seen by the client: it does not count as acked.
                        let Ok(ack) = response.json::<Value>().await else { break };
                        acked.push(ack["id"].as_str().expect("ack has an id").to_owned());
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        assert!(response.status().as_u16() == 503 || response.status().as_u16() == 429);
                        refused += 1;
                    }
                    // Connection refused or reset: the process is gone.
                    Err(_) => break,
                }
            }
            (acked, refused)
        }));
    }
    eventually(Duration::from_secs(40), "500 acknowledged publishes before the kill", || async {
        (acked_count.load(Ordering::Relaxed) >= 500).then_some(())
    })
    .await;
    gateway.kill();

    let mut acked = HashSet::new();
    let mut refused = 0;
    for client in clients {
        let (ids, r) = client.await.unwrap();
        acked.extend(ids);
        refused += r;
    }
    let written: Vec<String> = common::read_all(&kafka, &kafka.topics.events).await.into_iter().map(|e| e.id).collect();
    let unique: HashSet<&String> = written.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    eprintln!(
        "killed under load: {} acknowledged, {} in the topic ({} written but not acknowledged, {} duplicates), \
         {refused} refused, {} lost",
        acked.len(),
        written.len(),
        unique.len() - acked.len().min(unique.len()),
        written.len() - unique.len(),
        lost.len()
    );
    assert!(acked.len() >= 500);
    assert!(lost.is_empty(), "{} acknowledged events are not in the topic: {lost:?}", lost.len());
    assert_eq!(written.len(), unique.len(), "the events topic holds duplicates");
}

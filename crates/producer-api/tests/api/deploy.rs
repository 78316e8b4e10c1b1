//! Checks of what `compose/` and the Grafana dashboard promise, since no
//! Docker engine runs here to try them: the compose files parse and point
//! only at files and ports that exist, and every dashboard query names a
//! metric that producer-api or the consumer really exports.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use serde_yaml::Value as Yaml;
use stream_core::schema::Event;
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn compose_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("compose"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected redpanda, cluster, monitoring and app compose files, found {files:?}");
    files
}

fn load(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap();
    let mut doc: Yaml =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    doc.apply_merge().unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
    doc
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no port in {address}"))
}

/// Ports a service listens on inside its container, from what it is told.
fn listening_ports(service: &Yaml) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    let text = |v: &Yaml| v.as_str().map(str::to_owned).unwrap_or_default();
    for arg in service["command"].as_sequence().into_iter().flatten().map(text) {
        // Redpanda: --kafka-addr=internal://0.0.0.0:9092,external://0.0.0.0:19092
        if let Some(list) = arg.strip_prefix("--kafka-addr=").or_else(|| arg.strip_prefix("--pandaproxy-addr=")) {
            ports.extend(list.split(',').map(port_of));
        }
        if let Some(list) = arg.strip_prefix("--schema-registry-addr=") {
            ports.extend(list.split(',').map(port_of));
        }
    }
    if let Some(env) = service["environment"].as_mapping() {
        for key in ["LISTEN_ADDR", "METRICS_ADDR"] {
            if let Some(addr) = env.get(key).and_then(Yaml::as_str) {
                ports.insert(port_of(addr));
            }
        }
    }
    let image = text(&service["image"]);
    // Ports fixed by the images themselves.
    if image.contains("redpandadata/redpanda:") {
        ports.insert(9644); // admin API and metrics
    }
    if image.contains("redpandadata/console:") {
        ports.insert(8080);
    }
    if image.contains("prometheus") {
        ports.insert(9090);
    }
    if image.contains("grafana") {
        ports.insert(3000);
    }
    ports
}

#[test]
fn compose_files_parse_and_reference_only_files_and_ports_that_exist() {
    let compose = repo().join("compose");
    let mut host_ports = BTreeSet::new();
    for file in compose_files() {
        let doc = load(&file);
        let services = doc["services"].as_mapping().unwrap_or_else(|| panic!("{} has no services", file.display()));
        for (name, service) in services {
            let name = name.as_str().unwrap();
            let at = format!("{}: service {name}", file.display());
            assert!(
                service["image"].is_string() || service["build"].is_mapping(),
                "{at} has neither an image nor a build"
            );
            if let Some(build) = service["build"].as_mapping() {
                let context = compose.join(build.get("context").and_then(Yaml::as_str).unwrap_or("."));
                let dockerfile = build.get("dockerfile").and_then(Yaml::as_str).unwrap_or("Dockerfile");
                assert!(context.join(dockerfile).is_file(), "{at}: no {dockerfile} in {}", context.display());
            }
            for volume in service["volumes"].as_sequence().into_iter().flatten() {
                let spec = volume.as_str().unwrap();
                let source = spec.split(':').next().unwrap();
                if source.starts_with('.') || source.starts_with('/') {
                    assert!(compose.join(source).exists(), "{at}: mounts {source}, which does not exist");
                } else {
                    let named = doc["volumes"].as_mapping().is_some_and(|v| v.contains_key(source));
                    assert!(named, "{at}: volume {source} is not declared");
                }
            }
            let listening = listening_ports(service);
            for mapping in service["ports"].as_sequence().into_iter().flatten() {
                let mapping = mapping.as_str().unwrap_or_else(|| panic!("{at}: write ports as \"host:container\""));
                let (host, container) = mapping.split_once(':').unwrap_or_else(|| panic!("{at}: {mapping}"));
                let container: u16 = container.parse().unwrap();
                assert!(listening.contains(&container), "{at}: publishes {container}, but it listens on {listening:?}");
                let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
                // app.yml runs beside cluster.yml, redpanda.yml instead of it.
                let stack = if file_name == "app.yml" { "cluster.yml".into() } else { file_name };
                assert!(host_ports.insert((stack, host.to_owned())), "{at}: host port {host} used twice");
            }
            for dependency in service["depends_on"]
                .as_sequence()
                .map(|s| s.iter().filter_map(Yaml::as_str).map(str::to_owned).collect::<Vec<_>>())
                .or_else(|| {
                    service["depends_on"]
                        .as_mapping()
                        .map(|m| m.keys().filter_map(Yaml::as_str).map(str::to_owned).collect())
                })
                .unwrap_or_default()
            {
                let in_file = services.contains_key(dependency.as_str());
                let in_cluster = file.ends_with("app.yml")
                    && load(&compose.join("cluster.yml"))["services"]
                        .as_mapping()
                        .unwrap()
                        .contains_key(dependency.as_str());
                assert!(in_file || in_cluster, "{at}: depends on unknown service {dependency}");
            }
        }
    }

    // Prometheus scrapes the ports the services are documented to use.
    let prometheus = load(&compose.join("monitoring/prometheus.yml"));
    let mut targets = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_sequence().unwrap() {
        for config in job["static_configs"].as_sequence().unwrap() {
            for target in config["targets"].as_sequence().unwrap() {
                targets.insert((job["job_name"].as_str().unwrap().to_owned(), port_of(target.as_str().unwrap())));
            }
        }
    }
    #[derive(clap::Parser)]
    struct Api {
        #[command(flatten)]
        config: producer_api::Config,
    }
    let api_default = <Api as clap::Parser>::try_parse_from(["producer-api"]).unwrap().config.listen_addr.port();
    let demo_metrics = std::fs::read_to_string(repo().join("scripts/demo.sh")).unwrap();
    let consumer_port = demo_metrics
        .split("METRICS_ADDR:-")
        .nth(1)
        .map(|rest| port_of(rest.split('}').next().unwrap()))
        .expect("demo.sh sets the consumer's METRICS_ADDR");
    assert!(
        targets.contains(&("producer-api".into(), api_default)),
        "Prometheus does not scrape producer-api on {api_default}: {targets:?}"
    );
    assert!(
        targets.contains(&("consumer".into(), consumer_port)),
        "Prometheus does not scrape the consumer on {consumer_port}: {targets:?}"
    );
    assert!(
        targets.contains(&("redpanda".into(), 19644)),
        "Prometheus does not scrape Redpanda's admin port: {targets:?}"
    );

    // The Dockerfile copies only what exists.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(repo().join(source).exists(), "Dockerfile copies {source}, which does not exist");
        }
    }
}

/// Metric names in a PromQL expression: what is left after removing label
/// matchers `{...}` and grouping clauses `by (...)`, minus PromQL's own
/// functions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const PROMQL: &[&str] = &["sum", "rate", "irate", "increase", "histogram_quantile", "avg", "max", "min", "by"];
    let mut stripped = String::new();
    let mut rest = expr;
    while let Some(open) = rest.find(['{', 'b']) {
        let (before, from) = rest.split_at(open);
        stripped.push_str(before);
        let close = if from.starts_with('{') {
            from.find('}')
        } else if from.starts_with("by (") {
            from.find(')')
        } else {
            stripped.push_str(&from[..1]);
            rest = &from[1..];
            continue;
        };
        rest = &from[close.expect("balanced expression") + 1..];
    }
    stripped.push_str(rest);
    stripped
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.contains('_') && !PROMQL.contains(w) && !w.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{job=\"a_b\"}[1m])))",
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["http_request_duration_seconds_bucket"]);
}

#[tokio::test]
async fn every_dashboard_query_names_a_metric_the_services_export() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("compose/monitoring/grafana/dashboards/streamkit.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut wanted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let names = metric_names(target["expr"].as_str().unwrap());
            wanted.extend(names.into_iter().map(|n| n.trim_end_matches("_bucket").to_owned()));
        }
    }
    assert!(wanted.len() >= 8, "too few metrics found in the dashboard: {wanted:?}");

    // Run the gateway and the consumer in this process (one metrics
    // registry), through the good paths and the failure paths the
    // dashboard shows, then scrape.
    let (kafka, app) = common::spawn_app().await;
    let stop = CancellationToken::new();
    let mut consumer_config = consumer::Config::for_tests(kafka.clone(), 1);
    consumer_config.stats_interval = Duration::from_millis(500);
    let consumer = tokio::spawn(consumer::run(consumer_config, stop.clone()));
    let http = common::client();
    let (status, started) = common::start_stream(&app, common::KEY_A, None).await;
    assert_eq!(status, 201, "{started}");
    let stream = started["stream_id"].as_str().unwrap();
    let _socket = common::connect(&app, common::KEY_A, stream).await;
    let sent = http
        .post(app.url(&format!("/stream/{stream}/send")))
        .header("X-API-Key", common::KEY_A)
        .json(&serde_json::json!({ "data": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let missing = http.get(app.url("/stream/nope/results")).header("X-API-Key", common::KEY_A).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // A poison event for the failure and dead-letter counters.
    let producer = stream_core::kafka::producer(&kafka, &Default::default()).unwrap();
    let poison = Event::with_bytes("/test", None, Some("application/json".into()), b"{not json".to_vec());
    stream_core::kafka::delivered(stream_core::kafka::enqueue(&producer, &kafka.topics.events, &poison).unwrap())
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let ours: BTreeSet<String> = wanted.iter().filter(|m| !m.starts_with("redpanda_")).cloned().collect();
    let scrape = || async {
        let text = http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let name = l.split(['{', ' ']).next().unwrap();
                ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n)).to_owned()
            })
            .collect::<BTreeSet<String>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    let exported = loop {
        poll.tick().await;
        let names = scrape().await;
        let missing: Vec<&String> = ours.iter().filter(|m| !names.contains(*m)).collect();
        if missing.is_empty() {
            break names;
        }
        assert!(std::time::Instant::now() < deadline, "the dashboard queries metrics nobody exports: {missing:?}");
    };
    for metric in wanted.iter().filter(|m| m.starts_with("redpanda_")) {
        // Redpanda's own metrics cannot be scraped here; they are named after
        // its public_metrics endpoint.
        assert!(metric.starts_with("redpanda_kafka_"), "unexpected Redpanda metric {metric}");
    }
    assert!(exported.contains("http_requests_total"));

    stop.cancel();
    consumer.await.unwrap().unwrap();
    app.stop().await;
}

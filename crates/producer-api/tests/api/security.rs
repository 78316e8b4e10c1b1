//! Security properties: API keys never reach logs or metrics, CORS is off
//! unless configured, and broker TLS/SASL settings reach librdkafka.

use crate::child;
use crate::common;

use futures::SinkExt;
use serde_json::json;
use stream_core::config::{SaslMechanism, SecurityProtocol};
use stream_core::KafkaArgs;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Keys distinctive enough that any appearance in a log line is a leak.
const SECRET_A: &str = "sk-live-Zq81-never-log-me-A";
const SECRET_B: &str = "sk-live-Wm27-never-log-me-B";
/// A key that is not configured: it must not be logged either.
const WRONG: &str = "sk-live-Xx00-wrong-key-never-log";

#[tokio::test]
async fn keys_never_appear_in_logs_or_metric_labels() {
    let kafka = stream_core::testing::kafka_args();
    let keys = format!("{SECRET_A},{SECRET_B}");
    // Everything logged at every level, librdkafka included, as JSON and
    // as text in two runs would double the cost; trace-level text covers
    // every field a handler or library might print.
    let env = [("RUST_LOG", "trace"), ("CORS_ORIGINS", "https://app.example")];
    let gateway = child::Gateway::start(&kafka, &keys, &env).await;
    let client = common::client();

    // The key in every place it may be presented, right and wrong.
    let publish = client.post(gateway.url("/publish")).json(&json!({"message": {"n": 1}}));
    assert_eq!(publish.try_clone().unwrap().header("X-API-Key", SECRET_A).send().await.unwrap().status(), 200);
    assert_eq!(publish.try_clone().unwrap().bearer_auth(SECRET_B).send().await.unwrap().status(), 200);
    assert_eq!(publish.try_clone().unwrap().header("X-API-Key", WRONG).send().await.unwrap().status(), 401);
    assert_eq!(publish.try_clone().unwrap().bearer_auth(WRONG).send().await.unwrap().status(), 401);
    let started = client
        .post(gateway.url("/stream/start"))
        .header("X-API-Key", SECRET_A)
        .json(&json!({"stream_id": "sec"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    let probe = client.get(gateway.url("/stream/sec/results")).header("X-API-Key", SECRET_B).send().await.unwrap();
    assert_eq!(probe.status(), 403);
    let query = client.get(gateway.url(&format!("/stream/sec/results?api_key={WRONG}"))).send().await.unwrap();
    assert_eq!(query.status(), 401);
    let mut request =
        format!("ws://{}/stream/sec/results?api_key={SECRET_A}", gateway.addr).into_client_request().unwrap();
    request.headers_mut().insert("X-API-Key", SECRET_A.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("WebSocket with the key");
    socket.send(Message::Text(r#"{"data": {"over": "ws"}}"#.into())).await.unwrap();
    socket.close(None).await.unwrap();

    // CORS_ORIGINS reaches the binary: a preflight from the allowed origin
    // is answered, one from elsewhere is not.
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, gateway.url("/publish"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "x-api-key,content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"), "{:?}", other.headers());

    let metrics = client.get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("http_requests_total"), "metrics were scraped");
    let log = gateway.log_text();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "the log captured debug output:\n{log}");
    for secret in [SECRET_A, SECRET_B, WRONG] {
        for (what, text) in [("metrics", &metrics), ("log", &log)] {
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
            assert!(lines.is_empty(), "the key {secret:?} appears in the {what}:\n{}", lines.join("\n"));
        }
    }
}

/// With no flags the gateway starts, but never open: it makes up one key for
/// the run, writes it to a file only its user can read, names the file (not
/// the key) in the log, and refuses every other key.
#[tokio::test]
async fn without_configured_keys_the_gateway_generates_one_and_requires_it() {
    use std::os::unix::fs::PermissionsExt;
    let kafka = stream_core::testing::kafka_args();
    let gateway = child::Gateway::start(&kafka, "", &[("RUST_LOG", "trace")]).await;
    let log = gateway.log_text();
    let path = log
        .split("key_file=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the startup log names no key file:\n{log}"))
        .to_string();
    let key = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert!(key.starts_with("dev-") && key.len() > 30, "{key}");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(path.ends_with(&format!("producer-api-{}.key", gateway.addr.rsplit(':').next().unwrap())), "{path}");

    let client = common::client();
    let publish = |key: Option<&str>| {
        let mut request = client.post(gateway.url("/publish")).json(&json!({"message": {"n": 1}}));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send()
    };
    assert_eq!(publish(None).await.unwrap().status(), 401);
    assert_eq!(publish(Some("")).await.unwrap().status(), 401);
    assert_eq!(publish(Some("dev-")).await.unwrap().status(), 401);
    assert_eq!(publish(Some(&key)).await.unwrap().status(), 200);
    let log = gateway.log_text();
    assert!(!log.contains(&key), "the generated key reached the log:\n{log}");

    // A clean stop removes the file: the key dies with the process.
    let mut gateway = gateway;
    let pid = nix::unistd::Pid::from_raw(gateway.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    stream_core::testing::eventually(std::time::Duration::from_secs(30), "producer-api to exit on SIGTERM", || {
        let exited = gateway.child.try_wait().unwrap().is_some();
        async move { exited.then_some(()) }
    })
    .await;
    assert!(!std::path::Path::new(&path).exists(), "{path} outlived the process");
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let kafka = stream_core::testing::kafka_args();
    let app = common::start(common::config(kafka)).await;
    let preflight = common::client()
        .request(reqwest::Method::OPTIONS, app.url("/publish"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!preflight.headers().contains_key("access-control-allow-origin"), "{:?}", preflight.headers());
    let publish = common::client()
        .post(app.url("/publish"))
        .header("Origin", "https://app.example")
        .header("X-API-Key", common::KEY_A)
        .json(&json!({"message": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 200);
    assert!(!publish.headers().contains_key("access-control-allow-origin"));
    app.stop().await;
}

#[test]
fn cors_origins_are_parsed_and_checked() {
    let mut config = producer_api::Config::for_tests(KafkaArgs::for_brokers("127.0.0.1:1"), vec!["k".into()]);
    assert!(producer_api::cors(&config).is_none());
    config.cors_origins = vec![" https://a.example".into(), "".into(), "https://b.example ".into()];
    assert_eq!(config.cors_origins(), ["https://a.example", "https://b.example"]);
    assert!(producer_api::cors(&config).is_some());
    config.validate().unwrap();
    config.cors_origins = vec!["https://bad\nexample".into()];
    assert!(config.validate().is_err());
}

#[test]
fn tls_and_sasl_settings_reach_librdkafka() {
    for (protocol, mechanism, expected_protocol, expected_mechanism) in [
        (SecurityProtocol::SaslSsl, SaslMechanism::Plain, "sasl_ssl", "PLAIN"),
        (SecurityProtocol::SaslSsl, SaslMechanism::ScramSha256, "sasl_ssl", "SCRAM-SHA-256"),
        (SecurityProtocol::SaslPlaintext, SaslMechanism::ScramSha512, "sasl_plaintext", "SCRAM-SHA-512"),
    ] {
        let mut args = KafkaArgs::for_brokers("broker.example:9093");
        args.security_protocol = protocol;
        args.sasl_mechanism = Some(mechanism);
        args.sasl_username = Some("svc-user".into());
        args.sasl_password = Some("svc-pass".into());
        args.ssl_ca_location = Some("/etc/ssl/ca.pem".into());
        args.validate().unwrap();
        let config = stream_core::kafka::base_config(&args);
        assert_eq!(config.get("bootstrap.servers"), Some("broker.example:9093"));
        assert_eq!(config.get("security.protocol"), Some(expected_protocol));
        assert_eq!(config.get("sasl.mechanism"), Some(expected_mechanism));
        assert_eq!(config.get("sasl.username"), Some("svc-user"));
        assert_eq!(config.get("sasl.password"), Some("svc-pass"));
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/ssl/ca.pem"));
    }
    // Mutual TLS without SASL.
    let mut args = KafkaArgs::for_brokers("broker.example:9093");
    args.security_protocol = SecurityProtocol::Ssl;
    args.ssl_certificate_location = Some("/etc/ssl/client.pem".into());
    args.ssl_key_location = Some("/etc/ssl/client.key".into());
    let config = stream_core::kafka::base_config(&args);
    assert_eq!(config.get("security.protocol"), Some("ssl"));
    assert_eq!(config.get("ssl.certificate.location"), Some("/etc/ssl/client.pem"));
    assert_eq!(config.get("ssl.key.location"), Some("/etc/ssl/client.key"));
    assert_eq!(config.get("sasl.mechanism"), None);
    // The default stays plaintext, with no credentials set.
    let config = stream_core::kafka::base_config(&KafkaArgs::for_brokers("b:9092"));
    assert_eq!(config.get("security.protocol"), Some("plaintext"));
    assert_eq!(config.get("sasl.username"), None);
}

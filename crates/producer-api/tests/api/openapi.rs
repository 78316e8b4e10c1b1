//! `/openapi.json` describes every route the router serves.

use producer_api::{openapi, routes, Config};
use stream_core::KafkaArgs;

#[tokio::test]
async fn every_route_is_documented_with_its_errors() {
    let config = Config::for_tests(KafkaArgs::for_brokers("127.0.0.1:1"), vec!["k".into()]);
    let axum::Json(doc) = openapi::serve().await;
    assert_eq!(doc, openapi::document());
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = routes(&config);
    assert!(routes.len() >= 10);
    for route in &routes {
        let method = route.method.as_str().to_ascii_lowercase();
        let operation = &doc["paths"][route.path][&method];
        assert!(operation.is_object(), "{} {} is not in /openapi.json", route.method, route.path);
        let responses = operation["responses"].as_object().expect("responses");
        let secured = operation["security"].as_array().is_some_and(|s| !s.is_empty());
        if secured {
            assert!(responses.contains_key("401"), "{} {} lacks 401", route.method, route.path);
            assert!(responses.contains_key("503"), "{} {} lacks 503", route.method, route.path);
            assert!(responses.contains_key("500"), "{} {} lacks 500", route.method, route.path);
        }
        if operation.get("requestBody").is_some() {
            // A body that trickles in past --body-read-timeout.
            assert!(responses.contains_key("408"), "{} {} lacks 408", route.method, route.path);
        }
    }
    // And nothing is documented that the router does not serve.
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|ops| ops.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len());
    // Every error response points at the one error schema.
    let text = doc.to_string();
    assert!(text.contains("#/components/schemas/Error"));
    for status in ["400", "401", "403", "404", "408", "413", "415", "422", "426", "429", "500", "503"] {
        assert!(text.contains(&format!("\"{status}\"")), "no route documents {status}");
    }
}

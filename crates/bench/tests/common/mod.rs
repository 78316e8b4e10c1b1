//! Helpers shared by the bench integration tests.

/// Rows equal up to float parsing (serde_json may be one ulp off).
pub fn assert_same_rows(a: &[bench::output::Row], b: &[bench::output::Row]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.name, x.errors, x.latency.count, &x.hgrm), (&y.name, y.errors, y.latency.count, &y.hgrm));
        let close = |p: f64, q: f64| (p - q).abs() <= 1e-9 * p.abs().max(1.0);
        assert!(close(x.rate, y.rate) && close(x.latency.p99_ms, y.latency.p99_ms), "{x:?} != {y:?}");
    }
}

//! The process's tracer provider is made once: a second `init` returns it, and one naming a
//! different endpoint changes nothing. (Its own test binary: the singleton is process-wide.)

use wayfinder_trace::{TracingConfig, init, process_telemetry};

#[test]
fn a_second_init_returns_the_first_provider_and_a_different_endpoint_changes_nothing() {
    assert!(
        process_telemetry().is_none(),
        "nothing before the first init"
    );
    let first_config = TracingConfig {
        endpoint: Some("http://127.0.0.1:4317".into()),
        protocol: Some("grpc".into()),
        ..TracingConfig::default()
    };
    let first = init(&first_config).expect("the provider is made");
    let again = init(&first_config).expect("the same provider");
    assert!(first.same_provider(&again));

    let other = init(&TracingConfig {
        endpoint: Some("http://127.0.0.1:9999/v1/traces".into()),
        protocol: Some("http/protobuf".into()),
        ..TracingConfig::default()
    })
    .expect("still the same provider");
    assert!(first.same_provider(&other));
    let target = other.target().expect("an OTLP target");
    assert_eq!(
        target.endpoint, "http://127.0.0.1:4317",
        "the first endpoint stays"
    );

    let process = process_telemetry().expect("made");
    assert!(process.same_provider(&first));

    // A bad setting is refused and leaves the provider as it was.
    let bad = init(&TracingConfig {
        sample_rate: 2.0,
        ..TracingConfig::default()
    });
    assert!(bad.is_err());
    assert!(process_telemetry().expect("made").same_provider(&first));
}

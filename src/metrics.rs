//! Prometheus metrics, served as text at `/metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

struct Metrics {
    registry: Registry,
    node_tip_height: IntGauge,
    synced_tip_height: IntGauge,
    last_position: IntGauge,
    blocks_processed: IntCounter,
    events_appended: IntCounter,
    append_seconds: Histogram,
    deliveries: IntCounterVec,
    delivery_seconds: Histogram,
    zmq_mode: IntGauge,
    zmq_connected: IntGauge,
    leader: IntGauge,
    leader_epoch: IntGauge,
    zmq_gaps: IntCounter,
    replica_lag: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str| {
        let g = IntGauge::new(name, help).expect("valid metric");
        registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    };
    let counter = |name: &str, help: &str| {
        let c = IntCounter::new(name, help).expect("valid metric");
        registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
        c
    };
    let node_tip_height = gauge(
        "chainledger_node_tip_height",
        "Height of the node's best block",
    );
    let synced_tip_height = gauge(
        "chainledger_synced_tip_height",
        "Height of the last block the follower processed",
    );
    let last_position = gauge(
        "chainledger_last_position",
        "Position of the last event this process appended",
    );
    let blocks_processed = counter(
        "chainledger_blocks_processed_total",
        "Blocks connected by the follower",
    );
    let events_appended = counter(
        "chainledger_events_appended_total",
        "Events appended by this process",
    );
    let append_seconds = Histogram::with_opts(
        HistogramOpts::new("chainledger_append_seconds", "Latency of one batch append").buckets(
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        ),
    )
    .expect("valid histogram");
    registry
        .register(Box::new(append_seconds.clone()))
        .expect("unique metric");
    let deliveries = IntCounterVec::new(
        Opts::new(
            "chainledger_webhook_deliveries_total",
            "Webhook attempts by outcome (delivered, failed, gone)",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(deliveries.clone()))
        .expect("unique metric");
    let delivery_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "chainledger_webhook_request_seconds",
            "Latency of one webhook request",
        )
        .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0]),
    )
    .expect("valid histogram");
    registry
        .register(Box::new(delivery_seconds.clone()))
        .expect("unique metric");
    let zmq_mode = gauge(
        "chainledger_zmq_enabled",
        "1 when BITCOIND_ZMQ is auto and the node publishes what the follower uses, else 0",
    );
    let zmq_connected = gauge(
        "chainledger_zmq_connected",
        "1 while a ZMQ socket to the node is connected",
    );
    let leader = gauge(
        "chainledger_leader",
        "1 while this instance holds the chain leader lease, else 0",
    );
    let leader_epoch = gauge(
        "chainledger_leader_epoch",
        "the lease epoch this instance leads with (0 when it does not lead)",
    );
    let zmq_gaps = counter(
        "chainledger_zmq_gaps_total",
        "ZMQ messages found missing (counters that skipped, reconnects, a full queue)",
    );
    let replica_lag = gauge(
        "chainledger_replica_lag_positions",
        "Positions the read replica (DATABASE_READ_URL) trails the primary's head by, polled in the background",
    );
    Metrics {
        replica_lag,
        registry,
        zmq_mode,
        zmq_connected,
        leader,
        leader_epoch,
        zmq_gaps,
        node_tip_height,
        synced_tip_height,
        last_position,
        blocks_processed,
        events_appended,
        append_seconds,
        deliveries,
        delivery_seconds,
    }
});

pub fn record_delivery(outcome: &str, took: Duration) {
    METRICS.deliveries.with_label_values(&[outcome]).inc();
    METRICS.delivery_seconds.observe(took.as_secs_f64());
}

pub fn record_append(events: usize, last_position: i64, took: Duration) {
    METRICS.events_appended.inc_by(events as u64);
    METRICS.last_position.set(last_position);
    METRICS.append_seconds.observe(took.as_secs_f64());
}

pub fn record_blocks(connected: usize, synced_tip: u32) {
    METRICS.blocks_processed.inc_by(connected as u64);
    METRICS.synced_tip_height.set(i64::from(synced_tip));
}

pub fn record_node_tip(height: u64) {
    METRICS.node_tip_height.set(height as i64);
}

pub fn record_zmq_enabled(enabled: bool) {
    METRICS.zmq_mode.set(i64::from(enabled));
}

pub fn record_leader(leading: bool, epoch: i64) {
    METRICS.leader.set(i64::from(leading));
    METRICS.leader_epoch.set(epoch);
}

pub fn record_zmq_connected(up: bool) {
    METRICS.zmq_connected.set(i64::from(up));
}

pub fn record_zmq_gap() {
    METRICS.zmq_gaps.inc();
}

pub fn record_replica_lag(positions: i64) {
    METRICS.replica_lag.set(positions);
}

pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut out)
        .expect("text encoding cannot fail");
    String::from_utf8(out).expect("prometheus text is utf-8")
}

/// The registry `/metrics` renders, for metrics defined elsewhere ([`crate::gauges`]).
pub(crate) fn registry() -> &'static Registry {
    &METRICS.registry
}

// Prometheus `/metrics` (docs/http.md, "Prometheus"). The coordinator instruments itself through swift-metrics
// (shard durations, writer batch sizes and commit latency, recorded where they happen); the counters its state
// machine keeps are mirrored into swift-metrics counters at each scrape, and queue depth is read from PostgreSQL
// then. swift-prometheus renders the lot. Labels are bounded (a state, never a job id or a worker name).

import Foundation
import Metrics
import Prometheus
import Synchronization
import TesseraCoordinator
import TesseraCoordinatorCore
import TesseraProtocol
import TesseraJSON
import TesseraModel

/// The metrics backend: swift-prometheus behind swift-metrics, bootstrapped once per process, before any metric
/// is created (the coordinator's are created when it starts).
public enum MetricsBackend {
    private static let shared: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            "tessera_shard_duration_seconds": [
                .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
                .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300),
                .seconds(900), .seconds(3600),
            ],
            "tessera_writer_commit_seconds": [
                .microseconds(500), .milliseconds(1), .microseconds(2500), .milliseconds(5), .milliseconds(10),
                .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
            ],
        ]
        factory.valueHistogramBuckets = ["tessera_writer_batch_commands": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]]
        MetricsSystem.bootstrap(factory)
        return registry
    }()

    /// The registry `/metrics` renders; the first call bootstraps swift-metrics with it.
    public static func bootstrap() -> PrometheusCollectorRegistry { shared }
}

final class PrometheusExporter: Sendable {
    let coordinator: Coordinator
    let registry: PrometheusCollectorRegistry
    private let mirror: Mutex<CounterMirror>

    init(coordinator: Coordinator, registry: PrometheusCollectorRegistry) {
        self.coordinator = coordinator
        self.registry = registry
        self.mirror = Mutex(CounterMirror())
    }

    /// The exposition text, with every counter and gauge brought up to date first.
    func scrape() async -> String {
        let status = coordinator.statusSnapshot
        let active = coordinator.isActive
        mirror.withLock { $0.sync(status, active: active) }
        if let reply = await coordinator.request("queue"), reply.status == 0, let depth = try? JSONValue.parse(reply.body) {
            mirror.withLock { $0.syncQueue(depth) }
        }
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return Self.withHelp(String(decoding: buffer, as: UTF8.self))
    }

    /// What each metric measures, as a `# HELP` line (docs/http.md's table says the same). swift-metrics has no place
    /// for it (the factory registers every metric with empty help), so the lines go in ahead of each `# TYPE`.
    static let help: [String: String] = [
        "tessera_shards": "Shards waiting for a worker (queued) and running (leased), read from PostgreSQL at each scrape.",
        "tessera_jobs": "Jobs by state.",
        "tessera_shards_dispatched_total": "DISPATCHes sent (every lease, retries included).",
        "tessera_shards_succeeded_total": "SHARD_DONE messages committed.",
        "tessera_shards_failed_total": "SHARD_FAILED messages committed (a failure may be retried).",
        "tessera_shard_duration_seconds": "DISPATCH to SHARD_DONE, per shard that succeeded.",
        "tessera_lease_expiries_total": "Leases that ran out without renewal and were requeued.",
        "tessera_workers_lost_total": "Workers declared lost (missed heartbeats); their shards went back to the queue.",
        "tessera_messages_fenced_total": "Messages of a superseded attempt or a non-holder, refused.",
        "tessera_messages_received_total": "Worker and client messages received.",
        "tessera_malformed_frames_total": "Messages received that did not decode.",
        "tessera_metric_points_written_total": "Metric points committed to PostgreSQL.",
        "tessera_blob_bytes_written_total": "Checkpoint, sample and result bytes stored (verified, fsynced, renamed).",
        "tessera_workers_connected": "Worker sessions now.",
        "tessera_writer_commits_total": "Transactions of the group-committing writer.",
        "tessera_writer_batch_commands": "Store commands per writer transaction.",
        "tessera_writer_commit_seconds": "Time per writer transaction, COMMIT included.",
        "tessera_storage_full": "1 while the data dir is out of space and blob transfers are deferred.",
        "tessera_storage_full_seconds": "How long the data dir has been out of space (0 when it is not).",
        "tessera_chunks_deferred_total": "CHUNKs answered deferred (the data dir was full).",
        "tessera_blob_transfers_open": "Blob transfers under way.",
        "tessera_handshakes_denied_total": "CURVE handshakes refused (key not on the allow-list).",
        "tessera_sessions_revoked_total": "Worker sessions ended because their key was revoked.",
        "tessera_replies_too_large_total": "Client replies refused as over the frame limit.",
        "tessera_coordinator_active": "1 on the active coordinator, 0 on a standby.",
    ]

    /// `text` with a `# HELP NAME …` line before each `# TYPE NAME …` that has a help text and none already.
    static func withHelp(_ text: String) -> String {
        var out: [Substring] = []
        var previous: Substring = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE "), !previous.hasPrefix("# HELP ") {
                let name = line.dropFirst("# TYPE ".count).prefix { $0 != " " }
                if let h = help[String(name)] { out.append("# HELP \(name) \(h)") }
            }
            out.append(line)
            previous = line
        }
        return out.joined(separator: "\n")
    }
}

/// The state machine's counters as swift-metrics counters: each scrape adds what grew since the last one.
struct CounterMirror {
    private var last: [String: Int] = [:]
    private var counters: [String: Metrics.Counter] = [:]
    private let workers = Metrics.Gauge(label: "tessera_workers_connected")
    private let activeGauge = Metrics.Gauge(label: "tessera_coordinator_active")
    private let storageFull = Metrics.Gauge(label: "tessera_storage_full")
    private let storageFullSeconds = Metrics.Gauge(label: "tessera_storage_full_seconds")
    private let transfersOpen = Metrics.Gauge(label: "tessera_blob_transfers_open")
    private let shardStates: [String: Metrics.Gauge] = Dictionary(
        uniqueKeysWithValues: ["queued", "leased"].map { ($0, Metrics.Gauge(label: "tessera_shards", dimensions: [("state", $0)])) })
    private let jobStates: [String: Metrics.Gauge] = Dictionary(
        uniqueKeysWithValues: JobState.allCases.map { ($0.rawValue, Metrics.Gauge(label: "tessera_jobs", dimensions: [("state", $0.rawValue)])) })

    init() {}

    mutating func sync(_ s: CoordinatorStatus, active: Bool) {
        let c = s.counters
        let values: [(String, Int)] = [
            ("tessera_shards_dispatched_total", c.dispatched),
            ("tessera_shards_succeeded_total", c.shardsSucceeded),
            ("tessera_shards_failed_total", c.shardsFailed),
            ("tessera_lease_expiries_total", c.leasesExpired),
            ("tessera_workers_lost_total", c.workersLost),
            ("tessera_messages_fenced_total", c.staleDropped),
            ("tessera_messages_received_total", c.messagesIn),
            ("tessera_malformed_frames_total", c.malformedFrames),
            ("tessera_metric_points_written_total", c.metricPoints),
            ("tessera_writer_commits_total", c.commits),
            ("tessera_chunks_deferred_total", c.chunksDeferred),
            ("tessera_blob_bytes_written_total", s.blobBytesStored),
            ("tessera_sessions_revoked_total", c.sessionsRevoked),
            ("tessera_handshakes_denied_total", s.handshakesDenied),
            ("tessera_replies_too_large_total", s.repliesTooLarge),
        ]
        for (name, value) in values {
            let counter = counters[name] ?? Metrics.Counter(label: name)
            counters[name] = counter
            let before = last[name] ?? 0
            // A standby that took over starts its own counts at 0 again (a new process would too).
            if value > before { counter.increment(by: value - before) }
            last[name] = value
        }
        workers.record(s.connectedWorkers)
        activeGauge.record(active ? 1 : 0)
        storageFull.record(s.storage.fullSince == nil ? 0 : 1)
        storageFullSeconds.record(s.storage.fullSince.map { max(0, -$0.timeIntervalSinceNow) } ?? 0)
        transfersOpen.record(s.storage.transfersOpen)
    }

    func syncQueue(_ depth: JSONValue) {
        for (state, gauge) in shardStates { gauge.record(depth["shards"]?[state]?.intValue ?? 0) }
        for (state, gauge) in jobStates { gauge.record(depth["jobs"]?[state]?.intValue ?? 0) }
    }
}

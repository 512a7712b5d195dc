// `tessera-bench dispatch`: the job system's own speed, measured against a running coordinator and its workers
// (ops/bench dispatch starts them on a durable PostgreSQL and runs the peers in the same invocation).
//  - throughput: one noop job of --shards shards, from the submit request to the job observed succeeded;
//  - latency: --latency-jobs single-shard noop jobs one after another, each from submit to observed succeeded,
//    with this in-process client polling `result` every 0.1 ms (a poll costs one round trip to a read thread);
//  - metric streaming: one noop job of --stream-shards shards (one per slot) each emitting --stream-points points as
//    fast as it can, from submit to succeeded: every point durably committed before its shard's DONE is accepted.
// Prints a JSON document on stdout.

import ArgumentParser
import Foundation
import TesseraCore
import TesseraProtocol
import ZeroMQ

struct DispatchBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispatch", abstract: "Dispatch throughput and submit→succeeded latency of noop shards.")

    @Option(help: "Coordinator endpoint.") var coordinator: String
    @Option(help: "Shards of the throughput job.") var shards: Int = 20_000
    @Option(help: "Single-shard jobs for the latency figure.") var latencyJobs: Int = 1_000
    @Option(help: "Metric points each throughput shard emits (0: none).") var metrics: Int = 0
    @Option(help: "Shards of the metric-streaming job (0: skip that phase).") var streamShards: Int = 8
    @Option(help: "Metric points each streaming shard emits.") var streamPoints: Int = 250_000
    @Option(help: "Give up after this many seconds per phase.") var timeout: Double = 300

    func run() throws {
        let client = try BenchClient(endpoint: coordinator)
        // Warm-up: connections, prepared statements, worker threads.
        _ = try client.runJob(shards: 64, metrics: 0, timeout: timeout)
        for _ in 0..<20 { _ = try client.runJob(shards: 1, metrics: 0, timeout: timeout) }

        var latencies: [Double] = []
        latencies.reserveCapacity(latencyJobs)
        for _ in 0..<latencyJobs { latencies.append(try client.runJob(shards: 1, metrics: 0, timeout: timeout)) }
        latencies.sort()
        func quantile(_ q: Double) -> Double { latencies[min(latencies.count - 1, Int(q * Double(latencies.count)))] }

        let seconds = try client.runJob(shards: shards, metrics: metrics, timeout: timeout)
        var streamSeconds = 0.0
        if streamShards > 0 { streamSeconds = try client.runJob(shards: streamShards, metrics: streamPoints, timeout: timeout) }
        let out: JSONObject = [
            "stream_shards": .int(streamShards), "stream_points": .int(streamShards * streamPoints),
            "stream_seconds": .number(streamSeconds),
            "stream_points_per_s": .number(streamSeconds > 0 ? Double(streamShards * streamPoints) / streamSeconds : 0),
            "shards": .int(shards), "throughput_seconds": .number(seconds),
            "throughput_shards_per_s": .number(Double(shards) / seconds),
            "metric_points_per_s": .number(Double(shards * metrics) / seconds),
            "latency_jobs": .int(latencyJobs), "latency_p50_ms": .number(quantile(0.5) * 1000),
            "latency_p99_ms": .number(quantile(0.99) * 1000),
        ]
        print(JSONValue.object(out).render())
    }
}

/// A DEALER speaking the client methods, one request at a time.
final class BenchClient {
    let context: ZMQContext
    let socket: ZMQSocket
    var nextID: UInt64 = 1

    init(endpoint: String) throws {
        context = try ZMQContext(ioThreads: 1)
        socket = try ZMQSocket(context: context, type: .dealer)
        try socket.setLinger(milliseconds: 0)
        try socket.setMaxMessageSize(Int64(WireCodec.limits.maxMessageBytes))
        try socket.connect(endpoint)
    }

    deinit {
        socket.close()
        context.terminate()
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    func call(_ method: String, _ body: JSONObject) throws -> JSONValue {
        let id = nextID
        nextID += 1
        let request = ClientRequest(requestID: id, method: method, body: JSONValue.object(body).utf8Bytes)
        _ = try socket.send(WireCodec.encodeForDealer(.request(request)))
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            guard try ZMQ.poll([ZMQPollItem(socket: socket)], timeoutMilliseconds: 200)[0],
                let frames = try socket.receive(dontWait: true)
            else { continue }
            guard case .reply(let r) = try WireCodec.decode(WireCodec.splitDealerEnvelope(frames)), r.requestID == id else {
                continue
            }
            let json = try JSONValue.parse(r.body)
            guard r.status == 0 else { throw Failure(description: "\(method): \(json["error"]?.stringValue ?? "status \(r.status)")") }
            return json
        }
        throw Failure(description: "\(method): no reply within 30 s")
    }

    /// Submits a noop job and waits until it succeeded; returns the seconds from sending the submit to seeing it.
    func runJob(shards: Int, metrics: Int, timeout: Double) throws -> Double {
        let spec = try JobSpec.parse(
            "name: bench\nkind: rl\nalgorithm: noop\nseed: 1\nshards: \(shards)\nparams: {metrics: \(metrics)}\n",
            file: "bench.yaml")
        return try runSpec(spec, timeout: timeout, poll: shards > 1 ? 2000 : 100).seconds
    }
}

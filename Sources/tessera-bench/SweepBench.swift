// `tessera-bench sweep`: a sweep of --points points (`seed: 1..N` over a noop, one shard per point) against its
// baseline in the same invocation, an unswept noop job of as many shards, on a running coordinator and its workers
// (ops/bench sweep starts them on a durable PostgreSQL). Figures: the plan alone (in this process, as `tessera submit`
// checks it), submit → succeeded for both jobs, and fetching the swept job's result (its size), and picking the best
// point from it. Prints a JSON document on stdout.

import ArgumentParser
import Foundation
import TesseraCore
import TesseraWorkloads

struct SweepBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep", abstract: "A sweep of N points against an unswept job of N shards: plan, run, merge, result.")

    @Option(help: "Coordinator endpoint.") var coordinator: String
    @Option(help: "Sweep points (= shards of the baseline job).") var points: Int = 100_000
    @Option(help: "Give up after this many seconds per job.") var timeout: Double = 900

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18 }

    func run() throws {
        let client = try BenchClient(endpoint: coordinator)
        _ = try client.runJob(shards: 64, metrics: 0, timeout: timeout)  // warm-up

        let swept = try JobSpec.parse(
            "name: sweep-bench\nkind: rl\nalgorithm: noop\nseed: 1\n", file: "sweep.yaml", overrides: [],
            sweeps: ["seed=1..\(points)"])
        var t = ContinuousClock.now
        let (_, slices) = try Workloads.catalogue.validate(swept)
        let planSeconds = Self.seconds(ContinuousClock.now - t)
        guard slices.count == points else { throw BenchClient.Failure(description: "planned \(slices.count) shards") }

        let baselineSeconds = try client.runJob(shards: points, metrics: 0, timeout: timeout)
        let (job, sweptSeconds) = try client.runSpec(swept, timeout: timeout)

        t = ContinuousClock.now
        let reply = try client.call("result", ["job": .int(job)])
        let resultSeconds = Self.seconds(ContinuousClock.now - t)
        let bytes = reply.utf8Bytes.count
        guard let result = reply["result"], let rows = result["rows"]?.arrayValue, rows.count == points,
            let columns = result["columns"]?.arrayValue?.compactMap(\.stringValue), let seedColumn = columns.firstIndex(of: "seed")
        else { throw BenchClient.Failure(description: "the swept job's result is not a table of \(points) points") }
        // Every row is its own point, in order.
        for (p, row) in rows.enumerated() where row.arrayValue?.first?.intValue != p || row.arrayValue?[seedColumn].intValue != p + 1 {
            throw BenchClient.Failure(description: "row \(p) is \(row.render())")
        }
        t = ContinuousClock.now
        var best = 0
        for (i, row) in rows.enumerated() where (row.arrayValue?[seedColumn].doubleValue ?? 0) > (rows[best].arrayValue?[seedColumn].doubleValue ?? 0) { best = i }
        let bestSeconds = Self.seconds(ContinuousClock.now - t)
        guard best == points - 1 else { throw BenchClient.Failure(description: "best seed at row \(best)") }

        let out: JSONObject = [
            "points": .int(points), "plan_seconds": .number(planSeconds),
            "baseline_seconds": .number(baselineSeconds), "baseline_shards_per_s": .number(Double(points) / baselineSeconds),
            "sweep_seconds": .number(sweptSeconds), "sweep_shards_per_s": .number(Double(points) / sweptSeconds),
            "sweep_over_baseline": .number(sweptSeconds / baselineSeconds),
            "result_seconds": .number(resultSeconds), "result_bytes": .int(bytes), "best_seconds": .number(bestSeconds),
        ]
        print(JSONValue.object(out).render())
    }
}

extension BenchClient {
    /// Submits `spec` and waits until it succeeded, polling `result` every `poll` µs: its id and the seconds from
    /// sending the submit to seeing it succeeded.
    func runSpec(_ spec: JobSpec, timeout: Double, poll: UInt32 = 20_000) throws -> (job: Int, seconds: Double) {
        let start = ContinuousClock.now
        let submitted = try call("submit", ["spec": spec.json])
        guard let job = submitted["job_id"]?.intValue else { throw Failure(description: "submit gave no job id") }
        let deadline = start + .seconds(timeout)
        while ContinuousClock.now < deadline {
            let r = try call("result", ["job": .int(job)])
            switch r["state"]?.stringValue {
            case "succeeded": return (job, SweepBench.seconds(ContinuousClock.now - start))
            case "failed", "cancelled":
                throw Failure(description: "job \(job) \(r["state"]!.stringValue!): \(r["error"]?.stringValue ?? "")")
            default: usleep(poll)
            }
        }
        throw Failure(description: "job \(job) not done within \(timeout) s")
    }
}

// `tessera logs JOB [--shard N] [--follow]` and `tessera metrics JOB --follow`: reading what a job's shards stream
// to the coordinator, page by page, by insertion-ordered keyset cursors (protocol/SPEC.md §7 `logs`, and `metrics`
// with `order: "commit"`). Following polls with the last cursor until the job is finished; the reply says the job's
// state as read before its rows, and a shard's rows commit before its SHARD_DONE, so the page after which the job is
// finished is the last one.

import ArgumentParser
import Foundation
import TesseraCore

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the log lines of a job's shards, as their workers wrote them.",
        discussion: """
            Each shard attempt's worker streams its log to the coordinator, which stores it: the lease, resuming \
            from a checkpoint, the algorithm's milestones (phases, evaluations), blob transfers deferred, the \
            failure or the end of the computation. Lines of every attempt are kept, oldest first; the coordinator \
            keeps the newest 2,000 lines of each shard (docs/operations.md, "Shard logs").

            Plain output, one line each:  shard S attempt A  TIME  LEVEL  message  (TIME in UTC, by the worker's \
            clock). --follow keeps printing new lines until the job is finished (succeeded, failed or cancelled), \
            then exits 0. Workers that predate logs send none; their shards simply have no lines.
            """)
    @Argument(help: "The job id.") var job: Int
    @Option(help: "Only this shard.") var shard: Int?
    @Flag(help: "Keep printing new lines until the job is finished, then exit 0.") var follow = false
    @Option(help: ArgumentHelp("With --follow: seconds between polls.", valueName: "SECONDS")) var interval: Double = 1
    @Flag(help: "One JSON document on stdout: {\"job\", \"state\", \"logs\": [{id, shard, attempt, time, level, message}]}.")
    var json = false
    @Flag(help: "JSON Lines: one {\"id\", \"shard\", \"attempt\", \"time\", \"level\", \"message\"} object per line.")
    var jsonl = false
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if json && jsonl { throw ValidationError("--json and --jsonl exclude each other") }
        if json && follow { throw ValidationError("--follow streams: use --jsonl (one object per line) rather than --json") }
        if let shard, shard < 0 { throw ValidationError("--shard must be a shard index (0, 1, ...), not \(shard)") }
        if !(interval > 0) { throw ValidationError("--interval must be positive") }
    }

    func run() throws {
        try runCLI {
            let c = try client.client()
            var after = 0
            var all: [JSONValue] = []
            var state = ""
            while true {
                var body: JSONObject = ["job": .int(job), "after": .int(after)]
                if let shard { body["shard"] = .int(shard) }
                let (reply, _) = try c.call("logs", body, timeout: max(client.requestTimeout, 60))
                let lines = reply["logs"]?.arrayValue ?? []
                after = reply["next"]?.intValue ?? after
                state = reply["state"]?.stringValue ?? state
                if json {
                    all += lines
                } else {
                    emit(lines)
                }
                if reply["more"]?.boolValue == true { continue }
                if !follow || reply["finished"]?.boolValue == true { break }
                Thread.sleep(forTimeInterval: interval)
            }
            if json {
                printOut(JSONValue.object(["job": .int(job), "state": .string(state), "logs": .array(all)]).render())
            } else if !follow && !jsonl && after == 0 {
                printErr("job \(job) has no log lines\(shard.map { " for shard \($0)" } ?? "") yet")
            }
        }
    }

    private func emit(_ lines: [JSONValue]) {
        guard !lines.isEmpty else { return }
        var out = ""
        for l in lines { out += (jsonl ? l.render() : Self.plain(l)) + "\n" }
        FileHandle.standardOutput.write(Data(out.utf8))
    }

    /// `shard S attempt A  TIME  LEVEL  message`, TIME as ISO 8601 UTC with milliseconds, LEVEL padded to 7.
    static func plain(_ l: JSONValue) -> String {
        let time = Date(timeIntervalSince1970: l["time"]?.doubleValue ?? 0)
        let level = l["level"]?.stringValue ?? "info"
        return "shard \(l["shard"]?.intValue ?? 0) attempt \(l["attempt"]?.intValue ?? 0)  \(Self.timestamp(time))  "
            + level.padding(toLength: max(7, level.count), withPad: " ", startingAt: 0) + "  " + (l["message"]?.stringValue ?? "")
    }

    static func timestamp(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        f.timeZone = TimeZone(identifier: "UTC")
        return f.string(from: date)
    }
}

/// `tessera metrics JOB --follow`: every point of the job, in commit order, as it is stored, until the job is finished.
struct MetricsFollower {
    var job: Int
    var shard: Int?
    var name: String?
    var interval: Double
    /// `csv`, `jsonl` or the plain table-like lines.
    enum Output { case plain, csv, jsonl }
    var output: Output
    var client: ClientOptions

    func run() throws {
        let c = try client.client()
        var since: JSONValue?
        var header = output == .csv
        while true {
            var body: JSONObject = ["job": .int(job), "order": .string("commit"), "limit": .int(100_000)]
            if let shard { body["shard"] = .int(shard) }
            if let name { body["name"] = .string(name) }
            if let since { body["since"] = since }
            let (reply, _) = try c.call("metrics", body, timeout: max(client.requestTimeout, 60))
            let rows = reply["metrics"]?.arrayValue ?? []
            if let cursor = reply["cursor"] { since = cursor }
            var out = ""
            if header {
                out += "shard,name,step,value\n"
                header = false
            }
            for r in rows {
                let shard = r["shard"]?.intValue ?? 0, name = r["name"]?.stringValue ?? "", step = r["step"]?.intValue ?? 0
                switch output {
                case .jsonl:
                    // The objects `metrics --jsonl` prints (the commit number is the cursor's business).
                    var o = r.objectValue ?? [:]
                    o["seq"] = nil
                    out += JSONValue.object(o).render() + "\n"
                case .csv:
                    out += "\(shard),\(Format.csvField(name)),\(step),\(r["value"].map { JSONValue.formatNumber($0.doubleValue ?? .nan) } ?? "")\n"
                case .plain:
                    out += "shard \(shard)  \(name)  step \(step)  \(Format.number(r["value"]))\n"
                }
            }
            if !out.isEmpty { FileHandle.standardOutput.write(Data(out.utf8)) }
            if reply["more"]?.boolValue == true { continue }
            if reply["finished"]?.boolValue == true { return }
            Thread.sleep(forTimeInterval: interval)
        }
    }
}

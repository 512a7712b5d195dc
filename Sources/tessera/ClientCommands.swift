// Client subcommands: submit, status, wait, cancel, workers, metrics, checkpoint pull, result.

import ArgumentParser
import Foundation
import TesseraCoordinator
import TesseraCore
import TesseraWorkloads

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a job spec; prints the job id.",
        discussion: """
            The spec is checked before anything is stored: an error prints `file:line: message` and exits 1.
            See docs/jobspec.md for every key, and examples/ for one spec per algorithm.

            Files the spec names under `files:` (paths relative to the spec file) are read and checked by the \
            algorithm first (every malformed line is reported with its line number, and nothing is uploaded for a \
            bad file), then uploaded to the coordinator's content-addressed store (a file it has already is not \
            sent again), and the stored spec records each one's path, sha256 and size.
            """
    )
    @Argument(help: "Job spec file (YAML or JSON); - reads standard input.") var file: String
    @Flag(help: "Print {\"job_id\": N}.") var json = false
    @Flag(help: "Only check the spec; store nothing.") var dryRun = false
    @Option(
        name: .customLong("set"),
        help: ArgumentHelp(
            "Override one key of the spec, e.g. --set params.model.from_job=7 --set depends_on=[7] (repeatable).",
            discussion: "PATH is a key path (params.sweep.beta[1] for a list element); VALUE is YAML.",
            valueName: "PATH=VALUE")) var overrides: [String] = []
    @Option(
        name: .customLong("sweep"),
        help: ArgumentHelp(
            "Run the job once per value of a key, e.g. --sweep params.eta=0,0.5,1 --sweep seed=1..4 (repeatable).",
            discussion: """
                Several --sweep options (and the spec's own sweep: keys) make a grid: one point per combination, \
                the first key varying slowest. Each point runs with its values set, `shards:` shards per point, and \
                computes exactly what the same spec without the sweep computes. The result is a table, one row per \
                point (`tessera result JOB --best METRIC` names the best one). PATH is `seed` or a key under \
                params.; VALUES is v1,v2,… (YAML scalars), an integer range A..B, or a YAML list [v1, v2]. At most \
                100,000 points.
                """,
            valueName: "PATH=VALUES")) var sweeps: [String] = []
    @OptionGroup var client: ClientOptions

    func run() throws {
        try runCLI {
            let text: String
            let name: String
            // Never more than one byte past the spec size limit is read (JobSpec.parse names the limit).
            if file == "-" {
                let data = try FileHandle.standardInput.read(upToCount: SpecLimits.maxBytes + 1) ?? Data()
                text = String(decoding: data, as: UTF8.self)
                name = "<stdin>"
            } else {
                if let size = (try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int, size > SpecLimits.maxBytes {
                    throw CLIError("\(file): the spec is \(size) bytes; a job spec may be at most \(SpecLimits.maxBytes) bytes (1 MiB)")
                }
                guard let data = FileManager.default.contents(atPath: file) else {
                    throw CLIError("\(file): cannot read the file")
                }
                text = String(decoding: data, as: UTF8.self)
                name = file
            }
            let spec: JobSpec
            let slices: [ShardSlice]
            // Job references (`@last`, `@NAME`) are resolved against the coordinator, once each.
            var resolved: [String: Int64] = [:]
            let resolve = { (ref: String) throws -> Int64 in
                if let id = resolved[ref] { return id }
                var body: JSONObject = ["limit": .int(1)]
                if ref != "last" {
                    guard !ref.contains("*") && !ref.contains("?") else {
                        throw JobSpec.JobReferenceError("a job reference names one job; '*' and '?' are not allowed in it")
                    }
                    body["name"] = .string(ref)
                }
                let (reply, _) = try client.client().call("status", body)
                guard let id = reply["jobs"]?.arrayValue?.first?["id"]?.intValue else {
                    throw JobSpec.JobReferenceError(ref == "last" ? "there is no job yet" : "there is no job named '\(ref)'")
                }
                resolved[ref] = Int64(id)
                return Int64(id)
            }
            do {
                spec = try JobSpec.parse(text, file: name, overrides: overrides, sweeps: sweeps, resolve: resolve)
                    .loadingFiles(JobFileUpload.reader(specFile: file), sha256: BlobStore.sha256Hex)
                // The algorithm checks the files' contents here too: a bad file is reported (every malformed line)
                // before anything is uploaded.
                (_, slices) = try Workloads.catalogue.validate(spec)
            } catch let e as SpecError {
                throw CLIError(e.description)
            }
            if dryRun {
                printOut(json ? JSONValue.object(["valid": .bool(true), "shards": .int(slices.count), "spec": spec.json]).render()
                              : "\(name): valid \(spec.kind.rawValue)/\(spec.algorithm) job, \(slices.count) shard(s)")
                return
            }
            // The stored source is what was submitted: the file, and the overrides applied to it.
            let options = overrides.map { "--set \($0)" } + sweeps.map { "--sweep \($0)" }
            let source = options.isEmpty ? text : text + (text.hasSuffix("\n") ? "" : "\n")
                + options.map { "# tessera submit \($0)\n" }.joined()
            let connection = try client.client()
            for f in spec.files {
                try JobFileUpload.upload(f, bytes: spec.fileContents[f.name]!, over: connection, quiet: json)
            }
            let (reply, _) = try connection.call("submit", ["spec": spec.json, "source": .string(source), "file": .string(name)])
            guard let id = reply["job_id"]?.intValue else { throw CLIError("the coordinator did not return a job id") }
            printOut(json ? JSONValue.object(["job_id": .int(id)]).render() : String(id))
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show jobs, or one job with its shards.",
        discussion: "Answered by the coordinator from one SQL query per call; workers are never asked."
    )
    @Argument(help: "A job id; without it, recent jobs are listed.") var job: Int?
    @Flag(help: "One JSON document on stdout.") var json = false
    @Flag(help: "With JOB: include the job's event log.") var events = false
    @Option(help: "How many jobs to list (1 to 10000).") var limit = 50
    @Option(help: "List only jobs in this state (queued, running, succeeded, failed, cancelled).") var state: String?
    @Option(help: ArgumentHelp("List only jobs whose name matches this glob (* and ?).", valueName: "GLOB")) var name: String?
    @Option(help: "List only jobs of this kind (sampling, rl, preference).") var kind: String?
    @Option(help: "List only jobs of this algorithm (e.g. ddim, rloo, dpo).") var algorithm: String?
    @Option(
        help: ArgumentHelp(
            "List only jobs created since then: an age (90s, 30m, 2h, 7d) or a date (2026-12-01, 2026-12-01T09:30:00Z).",
            valueName: "WHEN"))
    var since: String?
    @Flag(help: "Show it again every --interval seconds (on a terminal, redrawn in place) until Ctrl-C; with JOB, until the job is finished.")
    var watch = false
    @Option(help: "Seconds between --watch refreshes (0.2 to 3600).") var interval: Double = 2
    @OptionGroup var client: ClientOptions

    /// `--since` as seconds since 1970.
    static func sinceTime(_ text: String, now: Date = Date()) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        if let unit = text.last.flatMap({ units[$0] }), let n = Double(text.dropLast()), n >= 0, n.isFinite {
            return now.timeIntervalSince1970 - n * unit
        }
        let iso = ISO8601DateFormatter()
        if let d = iso.date(from: text) { return d.timeIntervalSince1970 }
        iso.formatOptions = [.withFullDate]
        if let d = iso.date(from: text) { return d.timeIntervalSince1970 }
        return nil
    }

    func validate() throws {
        if job != nil && (name != nil || kind != nil || algorithm != nil || since != nil || state != nil) {
            throw ValidationError("--name, --kind, --algorithm, --since and --state filter the job list; they do not go with JOB")
        }
        if let kind, JobKind(rawValue: kind) == nil {
            throw ValidationError("unknown kind '\(kind)'; known: \(JobKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let algorithm {
            let known = Set(Workloads.catalogue.algorithms.filter { kind == nil || $0.kind.rawValue == kind }.map(\.name))
            guard known.contains(algorithm) else {
                throw ValidationError(
                    "unknown algorithm '\(algorithm)'\(kind.map { " of kind \($0)" } ?? ""); known: \(known.sorted().joined(separator: ", "))")
            }
        }
        guard (0.2...3600).contains(interval) else { throw ValidationError("--interval must be from 0.2 to 3600 seconds") }
        if watch && json { throw ValidationError("--watch and --json exclude each other (poll with --json instead)") }
        if let since, Self.sinceTime(since) == nil {
            throw ValidationError("--since must be an age such as 90s, 30m, 2h or 7d, or a date such as 2026-12-01 or 2026-12-01T09:30:00Z (got '\(since)')")
        }
        guard (1...10_000).contains(limit) else { throw ValidationError("--limit must be from 1 to 10000 (got \(limit))") }
        if let state, JobState(rawValue: state) == nil {
            throw ValidationError(
                "unknown state '\(state)'; known: \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        try runCLI {
            guard watch else {
                try show(try client.client())
                return
            }
            let c = try client.client()
            let tty = isatty(1) == 1
            while true {
                // On a terminal: home the cursor and clear the screen, so the view is redrawn in place.
                if tty { FileHandle.standardOutput.write(Data("\u{1B}[H\u{1B}[2J".utf8)) }
                let finished = try show(c)
                if finished { return }
                if !tty { printOut("") }
                Thread.sleep(forTimeInterval: interval)
            }
        }
    }

    /// One status view; true when it showed a job that is finished (a watch of it ends).
    @discardableResult
    func show(_ c: CoordinatorClient) throws -> Bool {
        if let job {
            let (reply, _) = try c.call("status", ["job": .int(job), "events": .bool(events)])
            guard let j = reply["job"] else { throw CLIError("malformed status reply") }
            if json {
                printOut(j.render())
                return true
            }
            printOut(Format.job(j, events: events))
            if let w = Format.storageWarning(reply["storage"]) { printErr(w) }
            return j["state"]?.stringValue.flatMap(JobState.init(rawValue:))?.isTerminal ?? false
        } else {
            var body: JSONObject = ["limit": .int(limit)]
            if let state { body["state"] = .string(state) }
            if let name { body["name"] = .string(name) }
            if let kind { body["kind"] = .string(kind) }
            if let algorithm { body["algorithm"] = .string(algorithm) }
            if let since, let t = Self.sinceTime(since) { body["since"] = .number(t) }
            let (reply, _) = try c.call("status", body)
            if json {
                printOut(reply.render())
                return true
            }
            printOut(Format.jobList(reply["jobs"]?.arrayValue ?? []))
            if let w = Format.storageWarning(reply["storage"]) { printErr(w) }
            return false
        }
    }
}

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Block until a job is finished.",
        discussion: "Exit status: 0 succeeded, 1 failed or cancelled, 2 timed out. On a terminal, a progress line on stderr (percent of steps, shards done, rate, ETA and the job's loss or first metric, fitted to the terminal's width); otherwise a plain progress line on stderr every 10 s."
    )
    @Argument(help: "The job id.") var job: Int
    @Option(help: "Give up after this many seconds (exit 2).") var timeout: Double?
    @Option(help: "Seconds between status queries.") var interval: Double = 0.25
    @OptionGroup var client: ClientOptions

    func run() throws {
        try runCLI {
            let c = try client.client()
            let start = Date()
            let tty = isatty(2) == 1
            var progress = ProgressRenderer(tty: tty)
            var warned = false
            while true {
                let (reply, _) = try c.call("status", ["job": .int(job)])
                guard let j = reply["job"], let state = j["state"]?.stringValue.flatMap(JobState.init(rawValue:)) else {
                    throw CLIError("malformed status reply")
                }
                // Once per run of a full data dir: the job may sit still, and this says why.
                if let w = Format.storageWarning(reply["storage"]) {
                    if !warned {
                        if tty { FileHandle.standardError.write(Data("\n".utf8)) }
                        printErr(w)
                    }
                    warned = true
                } else {
                    warned = false
                }
                if let line = progress.render(j, now: Date().timeIntervalSince(start), width: tty ? Format.terminalWidth() : 0) {
                    FileHandle.standardError.write(Data(line.utf8))
                }
                if state.isTerminal {
                    if tty { FileHandle.standardError.write(Data("\n".utf8)) }
                    let elapsed = j["elapsed_seconds"]?.doubleValue ?? Date().timeIntervalSince(start)
                    printOut("job \(job) \(state.rawValue) after \(Format.seconds(elapsed))")
                    if state != .succeeded, let e = j["error"]?.stringValue { printErr("error: \(e)") }
                    throw ExitCode(state == .succeeded ? 0 : 1)
                }
                if let timeout, Date().timeIntervalSince(start) >= timeout {
                    if tty { FileHandle.standardError.write(Data("\n".utf8)) }
                    printErr("timed out after \(Format.seconds(timeout)); job \(job) is \(state.rawValue)")
                    throw ExitCode(2)
                }
                Thread.sleep(forTimeInterval: interval)
            }
        }
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a job: its running shards are stopped.")
    @Argument(help: "The job id.") var job: Int
    @Flag(help: "One JSON document on stdout.") var json = false
    @OptionGroup var client: ClientOptions

    func run() throws {
        try runCLI {
            let (reply, _) = try client.client().call("cancel", ["job": .int(job)])
            if json { return printOut(reply.render()) }
            printOut("job \(job) \(reply["state"]?.stringValue ?? "?")")
        }
    }
}

struct Retry: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a failed or cancelled job again: its failed and cancelled shards are queued again.",
        discussion: """
            Succeeded shards keep their output; the others start over (from their latest checkpoint) with their \
            failure count reset. Refused for a job that is not failed or cancelled, for one whose depends_on job \
            failed or was cancelled (retry that one first), and for one whose shards all succeeded but whose merge \
            failed. Jobs that failed because this one did are not retried with it.
            """)
    @Argument(help: "The job id.") var job: Int
    @Flag(help: "One JSON document on stdout.") var json = false
    @OptionGroup var client: ClientOptions

    func run() throws {
        try runCLI {
            let (reply, _) = try client.client().call("retry", ["job": .int(job)])
            if json { return printOut(reply.render()) }
            printOut("job \(job) queued again (\(reply["requeued_shards"]?.intValue ?? 0) shard(s)); it is \(reply["state"]?.stringValue ?? "queued")")
        }
    }
}

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show jobs side by side: their results and latest metrics, one column per job.",
        discussion: """
            Rows: name, kind/algorithm, state, run time, then each scalar (or short vector) key of the merged results \
            (headline numbers first), then each metric's latest value (the mean over the job's shards). A value a job \
            does not have shows as -. --json prints {"jobs": [{"id", "name", "algorithm", "state", "result", \
            "metrics"}]}.
            """)
    @Argument(help: "Two or more job ids.") var jobs: [Int]
    @Flag(help: "One JSON document on stdout.") var json = false
    @OptionGroup var client: ClientOptions

    func validate() throws {
        guard jobs.count >= 2 else { throw ValidationError("give two or more job ids to compare") }
        guard Set(jobs).count == jobs.count else { throw ValidationError("a job id is given twice") }
    }

    func run() throws {
        try runCLI {
            let c = try client.client()
            var columns: [(status: JSONValue, result: JSONValue?, metrics: [String: Double])] = []
            for id in jobs {
                let (st, _) = try c.call("status", ["job": .int(id)])
                guard let j = st["job"] else { throw CLIError("malformed status reply for job \(id)") }
                let (res, _) = try c.call("result", ["job": .int(id)])
                columns.append((j, res["result"], Format.latestMetricMeans(j)))
            }
            if json {
                let docs: [JSONValue] = columns.map { col in
                    var o: JSONObject = [
                        "id": col.status["id"] ?? .null, "name": col.status["name"] ?? .null,
                        "algorithm": .string("\(col.status["kind"]?.stringValue ?? "?")/\(col.status["algorithm"]?.stringValue ?? "?")"),
                        "state": col.status["state"] ?? .null,
                        "metrics": .object(JSONObject(col.metrics.sorted { $0.key < $1.key }.map { ($0.key, .number($0.value)) })),
                    ]
                    o["result"] = col.result ?? .null
                    return .object(o)
                }
                return printOut(JSONValue.object(["jobs": .array(docs)]).render())
            }
            var rows: [[String]] = [["JOB"] + jobs.map(String.init)]
            rows.append(["name"] + columns.map { $0.status["name"]?.stringValue ?? "-" })
            rows.append(["algorithm"] + columns.map { "\($0.status["kind"]?.stringValue ?? "?")/\($0.status["algorithm"]?.stringValue ?? "?")" })
            rows.append(["state"] + columns.map { $0.status["state"]?.stringValue ?? "-" })
            rows.append(["run time"] + columns.map { col in col.status["run_seconds"]?.doubleValue.map(Format.seconds) ?? "-" })
            // Result keys: scalars and short vectors, headline ones first, then in the first job's order.
            var keys: [String] = []
            for col in columns {
                for (k, v) in col.result?.objectValue?.pairs ?? [] where !keys.contains(k) {
                    switch v {
                    case .object: continue
                    case .array(let a) where a.count > 8 || a.contains(where: { $0.objectValue != nil || $0.arrayValue != nil }): continue
                    default: keys.append(k)
                    }
                }
            }
            let headline = Format.headlineResultKeys
            keys = headline.filter(keys.contains) + keys.filter { !headline.contains($0) }
            for k in keys {
                rows.append([k] + columns.map { col in col.result?[k].map(Format.short) ?? "-" })
            }
            let metricNames = Set(columns.flatMap(\.metrics.keys)).sorted()
            for name in metricNames {
                rows.append(["metric \(name)"] + columns.map { col in col.metrics[name].map { Format.short(.number($0)) } ?? "-" })
            }
            printOut(Format.table(rows))
        }
    }
}

struct Workers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List workers, their slots and what they run.")
    @Flag(help: "One JSON document on stdout.") var json = false
    @OptionGroup var client: ClientOptions

    func run() throws {
        try runCLI {
            let (reply, _) = try client.client().call("workers")
            if json { return printOut(reply.render()) }
            printOut(Format.workers(reply["workers"]?.arrayValue ?? []))
            if let w = Format.storageWarning(reply["coordinator"]?["storage"]) { printErr(w) }
        }
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a job's metric series.")
    @Argument(help: "The job id.") var job: Int
    @Option(help: "Only this shard.") var shard: Int?
    @Option(help: "Only this metric name.") var name: String?
    @Option(help: ArgumentHelp(
        "At most N points, the first in (shard, name, step) order.",
        discussion: "A reply is capped at 16 MiB; a longer series is refused with a hint to narrow it.",
        valueName: "N")) var limit: Int?
    @Flag(help: "One JSON document on stdout.") var json = false
    @Flag(help: "CSV with a header: shard,name,step,value.") var csv = false
    @Flag(help: "JSON Lines: one {\"shard\", \"name\", \"step\", \"value\", \"attempt\"} object per point (pandas.read_json(..., lines=True)).")
    var jsonl = false
    @Flag(help: "List the job's metric series (name, shards, points, first and last step) instead of the points.")
    var list = false
    @Option(help: ArgumentHelp(
        "Write a chart of one metric to FILE.svg or FILE.png: a line per shard (--mean: the mean with a min–max band).",
        discussion: "Needs --name when the job has more than one metric. The file's extension picks the format; both have the same layout.",
        valueName: "FILE.svg|FILE.png")) var plot: String?
    @Flag(help: "With --plot: one line, the mean over shards at each step, and a band from their min to their max.")
    var mean = false
    @Flag(help: "A sparkline per shard and metric in the terminal (first and last value, min and max beside it).")
    var spark = false
    @Option(help: ArgumentHelp(
        "Write the metrics as TensorBoard event files, one run per shard: DIR/shard-N/events.out.tfevents.*",
        discussion: "Then `tensorboard --logdir DIR`. Every point of the job (or of --shard, --name), read page by page; values are float32, TensorBoard's scalar type; all points carry the job's creation time as wall time. Exporting again overwrites the same files.",
        valueName: "DIR")) var tensorboard: String?
    @Flag(help: ArgumentHelp(
        "Print every point as it is stored, in commit order, until the job is finished (then exit 0).",
        discussion: "Each point once, whichever shard it comes from; with --csv or --jsonl in those formats. Polls every --interval seconds; docs/cli.md says how each point is printed once."))
    var follow = false
    @Option(help: ArgumentHelp("With --follow: seconds between polls.", valueName: "SECONDS")) var interval: Double = 1
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if [json, csv, jsonl, plot != nil, spark, tensorboard != nil].filter({ $0 }).count > 1 {
            throw ValidationError("--json, --csv, --jsonl, --plot, --spark and --tensorboard exclude each other")
        }
        if tensorboard != nil && (list || follow || limit != nil) {
            throw ValidationError("--tensorboard exports every point: it takes --shard and --name (not --list, --follow, --limit)")
        }
        if mean && plot == nil { throw ValidationError("--mean goes with --plot") }
        if let plot, !plot.lowercased().hasSuffix(".svg") && !plot.lowercased().hasSuffix(".png") {
            throw ValidationError("--plot writes SVG or PNG: give a FILE.svg or a FILE.png (got '\(plot)')")
        }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1 (got \(limit))") }
        if list && (csv || jsonl || name != nil || limit != nil || plot != nil || spark) { throw ValidationError("--list takes only --shard and --json") }
        if follow && (json || list || limit != nil || plot != nil || spark) {
            throw ValidationError("--follow streams points: it takes --shard, --name, --csv, --jsonl and --interval (not --json, --list, --limit, --plot, --spark)")
        }
        if follow && !(interval > 0) { throw ValidationError("--interval must be positive") }
    }

    func run() throws {
        try runCLI {
            if follow {
                return try MetricsFollower(
                    job: job, shard: shard, name: name, interval: interval, output: csv ? .csv : jsonl ? .jsonl : .plain,
                    client: client
                ).run()
            }
            if list {
                var body: JSONObject = ["job": .int(job), "list": .bool(true)]
                if let shard { body["shard"] = .int(shard) }
                let (reply, _) = try client.client().call("metrics", body, timeout: max(client.requestTimeout, 60))
                if json { return printOut(reply.render()) }
                let series = reply["series"]?.arrayValue ?? []
                if series.isEmpty { return printErr("job \(job) has no metric points\(shard.map { " for shard \($0)" } ?? "") yet") }
                var rows = [["NAME", "SHARDS", "POINTS", "STEPS"]]
                for s in series {
                    rows.append([
                        s["name"]?.stringValue ?? "", Format.number(s["shards"]), Format.number(s["points"]),
                        "\(Format.number(s["first_step"]))–\(Format.number(s["last_step"]))",
                    ])
                }
                return printOut(Format.table(rows))
            }
            if let tensorboard { return try exportTensorBoard(to: tensorboard) }
            var body: JSONObject = ["job": .int(job)]
            if let shard { body["shard"] = .int(shard) }
            if let name { body["name"] = .string(name) }
            if let limit { body["limit"] = .int(limit) }
            let (reply, _) = try client.client().call("metrics", body, timeout: max(client.requestTimeout, 60))
            let rows = reply["metrics"]?.arrayValue ?? []
            if json { return printOut(reply.render()) }
            if rows.isEmpty, let available = reply["available"] {
                let names = available["names"]?.arrayValue?.compactMap(\.stringValue) ?? []
                let shards = available["shards"]?.intValue ?? 0
                if let shard, shard < 0 || shard >= shards {
                    throw CLIError("job \(job) has no shard \(shard); its shards are 0 to \(shards - 1)")
                }
                if let name, !names.contains(name) {
                    throw CLIError(
                        "job \(job) has no metric '\(name)'; "
                            + (names.isEmpty ? "it has no metric points yet" : "its metrics: \(names.joined(separator: ", "))"))
                }
                if names.isEmpty { return printErr("job \(job) has no metric points yet") }
            }
            if plot != nil || spark { return try chart(rows) }
            if jsonl {
                var out = ""
                for r in rows { out += r.render() + "\n" }
                FileHandle.standardOutput.write(Data(out.utf8))
                return
            }
            if csv {
                var out = "shard,name,step,value\n"
                for r in rows {
                    out += "\(r["shard"]?.intValue ?? 0),\(Format.csvField(r["name"]?.stringValue ?? "")),\(r["step"]?.intValue ?? 0),\(r["value"].map { JSONValue.formatNumber($0.doubleValue ?? .nan) } ?? "")\n"
                }
                FileHandle.standardOutput.write(Data(out.utf8))
                return
            }
            var table = [["SHARD", "NAME", "STEP", "VALUE"]]
            for r in rows {
                table.append([
                    "\(r["shard"]?.intValue ?? 0)", r["name"]?.stringValue ?? "", "\(r["step"]?.intValue ?? 0)",
                    Format.number(r["value"]),
                ])
            }
            printOut(Format.table(table))
        }
    }
}

extension Metrics {
    /// `--tensorboard DIR`: every point, 100,000 a request (the `next` cursor of each page), one event file per shard.
    func exportTensorBoard(to dir: String) throws {
        let c = try client.client()
        let (status, _) = try c.call("status", ["job": .int(job)])
        let wallTime = status["job"]?["created_at"]?.stringValue.flatMap(Self.epochSeconds) ?? Date().timeIntervalSince1970
        var files: [Int: TensorBoard.EventFile] = [:]
        var points = 0
        var after: JSONValue?
        repeat {
            var body: JSONObject = ["job": .int(job), "limit": .int(100_000)]
            if let shard { body["shard"] = .int(shard) }
            if let name { body["name"] = .string(name) }
            if let after { body["after"] = after }
            let (reply, _) = try c.call("metrics", body, timeout: max(client.requestTimeout, 60))
            for r in reply["metrics"]?.arrayValue ?? [] {
                guard let s = r["shard"]?.intValue, let n = r["name"]?.stringValue, let step = r["step"]?.intValue else { continue }
                files[s, default: TensorBoard.EventFile(wallTime: wallTime)]
                    .addScalar(tag: n, step: Int64(step), value: r["value"]?.doubleValue ?? .nan)
                points += 1
            }
            if points == 0, let available = reply["available"] {
                let names = available["names"]?.arrayValue?.compactMap(\.stringValue) ?? []
                if let name, !names.isEmpty, !names.contains(name) {
                    throw CLIError("job \(job) has no metric '\(name)'; its metrics: \(names.joined(separator: ", "))")
                }
            }
            after = reply["next"]
        } while after != nil
        if files.isEmpty { throw CLIError("job \(job) has no metric points\(shard.map { " for shard \($0)" } ?? "") to export") }
        // The file name carries the job's creation time and id, so exporting again replaces the files instead of adding
        // a second copy of every point that TensorBoard would also read.
        let fileName = "events.out.tfevents.\(Int(wallTime)).tessera-job\(job)"
        for (s, file) in files {
            let runDir = "\(dir)/shard-\(s)"
            do {
                try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
            } catch {
                throw CLIError("cannot create \(runDir): \(error.localizedDescription)")
            }
            let path = "\(runDir)/\(fileName)"
            guard FileManager.default.createFile(atPath: path + ".part", contents: Data(file.bytes)),
                rename(path + ".part", path) == 0
            else { throw CLIError("cannot write \(path)") }
        }
        printErr("wrote \(points) point(s) of \(files.count) shard(s) to \(dir)/shard-N/\(fileName); view them with: tensorboard --logdir \(dir)")
    }

    /// PostgreSQL's JSON timestamp ("2026-12-03T17:37:00.123456+00:00") as seconds since 1970.
    static func epochSeconds(_ text: String) -> Double? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) { return d.timeIntervalSince1970 }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: text)?.timeIntervalSince1970
    }

    /// `--plot` and `--spark`: the rows grouped into one series per (name, shard), in step order.
    func chart(_ rows: [JSONValue]) throws {
        var series: [String: [Int: [(x: Double, y: Double)]]] = [:]
        for r in rows {
            guard let n = r["name"]?.stringValue, let s = r["shard"]?.intValue, let step = r["step"]?.doubleValue else { continue }
            series[n, default: [:]][s, default: []].append((step, r["value"]?.doubleValue ?? .nan))
        }
        if series.isEmpty { throw CLIError("job \(job) has no metric points\(shard.map { " for shard \($0)" } ?? "") yet") }
        if let plot {
            guard series.count == 1, let (metric, byShard) = series.first else {
                throw CLIError("job \(job) has \(series.count) metrics; --plot draws one: add --name (\(series.keys.sorted().joined(separator: ", ")))")
            }
            let lines = byShard.keys.sorted().map { ChartSeries(label: "shard \($0)", points: byShard[$0]!) }
            var c = mean
                ? LineChart.meanWithBand(title: "job \(job): \(metric), mean over \(lines.count) shard(s), min–max band", of: lines)
                : LineChart(title: "job \(job): \(metric)", series: lines)
            c.yLabel = metric
            guard FileManager.default.createFile(atPath: plot, contents: plot.lowercased().hasSuffix(".png") ? Data(c.png()) : Data(c.svg().utf8)) else {
                throw CLIError("cannot write \(plot)")
            }
            return printErr("wrote \(plot): \(metric), \(lines.count) shard(s), \(rows.count) point(s)")
        }
        var table = [["SHARD", "NAME", "POINTS", "FIRST", "LAST", "MIN", "MAX", ""]]
        var sparks: [[Double]] = []
        for n in series.keys.sorted() {
            for s in series[n]!.keys.sorted() {
                let values = series[n]![s]!.map(\.y)
                let finite = values.filter(\.isFinite)
                table.append([
                    "\(s)", n, "\(values.count)", Format.number(values.first.map { JSONValue.number($0) }),
                    Format.number(values.last.map { JSONValue.number($0) }), Format.number(finite.min().map { JSONValue.number($0) }),
                    Format.number(finite.max().map { JSONValue.number($0) }), "",
                ])
                sparks.append(values)
            }
        }
        // The sparkline takes what the terminal has left after the other columns (40 characters off a terminal).
        let text = Format.table(table).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let used = text.map(\.count).max() ?? 0
        let width = max(10, (isatty(1) != 0 ? Format.terminalWidth() : used + 42) - used - 2)
        var out = text[0] + "\n"
        for (i, line) in text.dropFirst().enumerated() where i < sparks.count {
            out += line + Sparkline.render(sparks[i], width: width) + "\n"
        }
        FileHandle.standardOutput.write(Data(out.utf8))
    }
}

struct Checkpoint: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with stored checkpoints and sample files.", subcommands: [List.self, Pull.self]
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List a job's stored blobs: checkpoints, samples files and results, by shard.",
            discussion: "Any row can be downloaded with `checkpoint pull JOB --shard N --kind KIND --step S -o FILE`.")
        @Argument(help: "The job id.") var job: Int
        @Option(help: "Only this shard.") var shard: Int?
        @Flag(help: "One JSON document on stdout.") var json = false
        @OptionGroup var client: ClientOptions

        func run() throws {
            try runCLI {
                var body: JSONObject = ["job": .int(job)]
                if let shard { body["shard"] = .int(shard) }
                let (reply, _) = try client.client().call("blob.list", body)
                if json { return printOut(reply.render()) }
                let blobs = reply["blobs"]?.arrayValue ?? []
                if blobs.isEmpty { return printErr("job \(job) has no stored blobs\(shard.map { " in shard \($0)" } ?? "")") }
                var rows = [["SHARD", "KIND", "STEP", "SIZE", "ATTEMPT", "SHA256"]]
                for b in blobs {
                    rows.append([
                        Format.number(b["shard"]), b["kind"]?.stringValue ?? "", Format.number(b["step"]),
                        Format.bytes(b["size"]?.doubleValue ?? 0), Format.number(b["attempt"]),
                        String((b["sha256"]?.stringValue ?? "").prefix(16)),
                    ])
                }
                printOut(Format.table(rows))
            }
        }
    }

    struct Pull: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Download a shard's checkpoint (or samples file) as safetensors; --all-shards: every shard's.",
            discussion: """
                Without --kind, the newest checkpoint is taken, else the samples file. The SHA-256 is verified. \
                With --all-shards, -o names a directory (created if missing) that gets shard-N.safetensors for each \
                shard that has such a blob; shards without one are listed, and it is an error if none has one.
                """
        )
        @Argument(help: "The job id.") var job: Int
        @Option(help: "Shard index (default 0).") var shard: Int?
        @Flag(help: "Every shard's blob, into the directory -o DIR, as DIR/shard-N.safetensors.") var allShards = false
        @Option(help: "A specific step (default: the newest).") var step: Int?
        @Option(help: "checkpoint or samples.") var kind: String?
        @Option(name: .shortAndLong, help: "Output file (with --all-shards: a directory).") var output: String
        @OptionGroup var client: ClientOptions

        func validate() throws {
            if allShards && shard != nil { throw ValidationError("--all-shards and --shard exclude each other") }
        }

        func run() throws {
            try runCLI {
                let c = try client.client()
                guard allShards else { return try pull(c, shard: shard ?? 0, to: output) }
                let (status, _) = try c.call("status", ["job": .int(job)])
                let count = status["job"]?["shards"]?.arrayValue?.count ?? 0
                do { try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true) } catch {
                    throw CLIError("cannot create the directory \(output): \(error.localizedDescription)")
                }
                var written = 0
                var without: [Int] = []
                for i in 0..<count {
                    do {
                        try pull(c, shard: i, to: "\(output)/shard-\(i).safetensors")
                        written += 1
                    } catch let e as CLIError where e.exitCode == 4 {
                        without.append(i)
                    }
                }
                let missing = without.isEmpty ? "" : "; without one: shard(s) \(without.map(String.init).joined(separator: ", "))"
                guard written > 0 else {
                    throw CLIError("no shard of job \(job) has a \(kind ?? "checkpoint or samples file")\(step.map { " at step \($0)" } ?? "")", exitCode: 4)
                }
                printErr("wrote \(written) of \(count) shards to \(output)/\(missing)")
            }
        }

        /// One shard's blob to `path`, verified, written atomically.
        private func pull(_ c: CoordinatorClient, shard: Int, to path: String) throws {
            var body: JSONObject = ["job": .int(job), "shard": .int(shard)]
            if let step { body["step"] = .int(step) }
            if let kind { body["kind"] = .string(kind) }
            let (info, _) = try c.call("blob.info", body)
            guard let sha = info["sha256"]?.stringValue, let size = info["size"]?.intValue else {
                throw CLIError("malformed blob.info reply")
            }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(size)
            while bytes.count < size {
                let (r, blob) = try c.call("blob.read", ["sha256": .string(sha), "offset": .int(bytes.count), "length": .int(1 << 20)])
                guard !blob.isEmpty || r["total_size"]?.intValue == bytes.count else { throw CLIError("short read of blob \(sha)") }
                bytes += blob
            }
            guard BlobStore.sha256Hex(bytes) == sha else { throw CLIError("downloaded blob failed its SHA-256 check") }
            let tmp = path + ".tmp-\(getpid())"
            guard FileManager.default.createFile(atPath: tmp, contents: Data(bytes)) else {
                throw CLIError("cannot write \(path)")
            }
            guard rename(tmp, path) == 0 else { throw CLIError("cannot write \(path): errno \(errno)") }
            printErr("wrote \(path): \(info["kind"]?.stringValue ?? "blob") of job \(job) shard \(shard) step \(info["step"]?.intValue ?? 0), \(size) bytes, sha256 \(sha)")
        }
    }
}

struct Result: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a job's merged result.",
        discussion: """
            With --json, the result object itself (for sampling: n, mean, cov, mode_weights, sw1, mmd, noise_floor, …). \
            A sweep's result (submit --sweep, or a spec's sweep: keys) is a table, one row per point; the first \
            \(Format.sweepRowsShown) rows are printed, --json gives all. --best METRIC names the point with the lowest \
            METRIC (--maximize: the highest), also for the points of an RL or DPO β sweep. Exits 1 if the job has \
            not succeeded.
            """
    )
    @Argument(help: "The job id.") var job: Int
    @Flag(help: "One JSON document on stdout.") var json = false
    @Option(help: ArgumentHelp("Print the best point of a sweep by this column (lowest value; see --maximize).", valueName: "METRIC"))
    var best: String?
    @Flag(help: "With --best: the highest value is best.") var maximize = false
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if maximize && best == nil { throw ValidationError("--maximize goes with --best METRIC") }
    }

    func run() throws {
        try runCLI {
            let (reply, _) = try client.client().call("result", ["job": .int(job)])
            let state = reply["state"]?.stringValue ?? "?"
            guard state == "succeeded", let result = reply["result"] else {
                throw CLIError("job \(job) is \(state)\(reply["error"]?.stringValue.map { ": \($0)" } ?? "")")
            }
            if let best { return try printBest(result, metric: best) }
            printOut(json ? result.render() : Format.result(result))
        }
    }

    private func printBest(_ result: JSONValue, metric: String) throws {
        let o = result.objectValue ?? [:]
        guard let table = SweepTable(o) ?? SweepTable(records: o, having: metric) else {
            throw CLIError("job \(job)'s result has no table of points to pick from (--best needs a sweep: submit --sweep, or sweep: in the spec)")
        }
        guard let column = table.columns.firstIndex(of: metric) else {
            let figures = table.columns.filter { c in table.rows.contains { $0[table.columns.firstIndex(of: c)!].doubleValue != nil } }
            throw CLIError("job \(job)'s sweep has no column '\(metric)'; numeric columns: \(figures.joined(separator: ", "))")
        }
        guard let row = table.best(column, maximize: maximize) else {
            throw CLIError("no point of job \(job) has a number for '\(metric)'")
        }
        let goal = maximize ? "highest" : "lowest"
        let cells = zip(table.columns, table.rows[row])
        if json {
            printOut(JSONValue.object([
                "metric": .string(metric), "goal": .string(goal), "points": .int(table.rows.count), "row": .int(row),
                "best": .object(JSONObject(cells.map { ($0, $1) })),
            ]).render())
            return
        }
        var lines = ["best of \(table.rows.count) points by \(metric) (\(goal))" + (table.source == "rows" ? "" : ", from \(table.source)")]
        let width = table.columns.map(\.count).max() ?? 0
        for (c, v) in cells { lines.append("  " + c.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + Format.short(v)) }
        printOut(lines.joined(separator: "\n"))
    }
}

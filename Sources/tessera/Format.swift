// Human-readable output for the CLI (the JSON forms are the coordinator's replies as they are).

import Foundation
import TesseraCore

enum Format {
    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        var widths = [Int](repeating: 0, count: first.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func number(_ v: JSONValue?) -> String {
        guard let v else { return "-" }
        switch v {
        case .number(let n):
            let d = n.value
            if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
            return String(format: "%.6g", d)
        case .string(let s): return s
        case .null: return "-"
        default: return v.render()
        }
    }

    static func seconds(_ s: Double) -> String {
        if s < 60 { return String(format: "%.2f s", s) }
        if s < 3600 { return String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60) }
        return String(format: "%dh%02dm", Int(s) / 3600, (Int(s) % 3600) / 60)
    }

    /// A warning line when the coordinator's data dir is full (`storage` of a status or workers reply), else nil.
    static func storageWarning(_ storage: JSONValue?) -> String? {
        guard let storage, storage["state"]?.stringValue == "full" else { return nil }
        let since = storage["full_seconds"]?.doubleValue.map { " for \(seconds($0))" } ?? ""
        let error = storage["error"]?.stringValue.map { " (\($0))" } ?? ""
        return "warning: the coordinator's data dir is full\(since)\(error): finished shards wait to upload their outputs and "
            + "no new shard starts; free space on the coordinator's --data-dir and they go on, at no extra attempt"
    }

    /// 1536 -> "1.5 KiB".
    static func bytes(_ n: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = n
        var u = 0
        while v >= 1024 && u < units.count - 1 {
            v /= 1024
            u += 1
        }
        return u == 0 ? "\(Int(v)) B" : String(format: "%.1f %@", v, units[u])
    }

    static func csvField(_ s: String) -> String {
        s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
    }

    static func jobList(_ jobs: [JSONValue]) -> String {
        if jobs.isEmpty { return "no jobs" }
        var rows = [["ID", "NAME", "KIND", "ALGORITHM", "STATE", "SHARDS", "ELAPSED"]]
        for j in jobs {
            rows.append([
                number(j["id"]), j["name"]?.stringValue ?? "", j["kind"]?.stringValue ?? "",
                j["algorithm"]?.stringValue ?? "", j["state"]?.stringValue ?? "",
                "\(number(j["shards_succeeded"]))/\(number(j["shards"]))"
                    + ((j["shards_running"]?.intValue ?? 0) > 0 ? " (\(number(j["shards_running"])) running)" : ""),
                seconds(j["elapsed_seconds"]?.doubleValue ?? 0),
            ])
        }
        return table(rows)
    }

    static func job(_ j: JSONValue, events: Bool) -> String {
        var out = "job \(number(j["id"])) \(j["name"]?.stringValue ?? "") — \(j["kind"]?.stringValue ?? "")/\(j["algorithm"]?.stringValue ?? "")\n"
        out += "state:    \(j["state"]?.stringValue ?? "?")"
        out += "  (elapsed \(seconds(j["elapsed_seconds"]?.doubleValue ?? 0)))\n"
        out += "seed:     \(j["seed"]?.stringValue ?? "?")   priority: \(number(j["priority"]))   max_attempts: \(number(j["max_attempts"]))\n"
        out += "progress: \(number(j["steps_done"]))/\(number(j["steps_total"])) steps\n"
        if let e = j["error"]?.stringValue { out += "error:    \(e)\n" }
        var rows = [["SHARD", "SLICE", "STATE", "ATTEMPT", "WORKER", "STEP", "LAST METRICS"]]
        for s in j["shards"]?.arrayValue ?? [] {
            var metrics: [String] = []
            for (name, v) in s["last_metrics"]?.objectValue?.pairs ?? [] {
                metrics.append("\(name)=\(number(v["value"]))")
            }
            var state = s["state"]?.stringValue ?? ""
            if let e = s["error"]?.stringValue, state != "succeeded" { state += " (\(e.prefix(60)))" }
            rows.append([
                number(s["index"]), sliceLabel(s["slice"]), state, number(s["attempt"]), s["worker"]?.stringValue ?? "-",
                "\(number(s["step"]))/\(number(s["total"]))", metrics.prefix(4).joined(separator: " "),
            ])
        }
        out += table(rows)
        if events {
            out += "\n\nEVENTS\n"
            var ev = [["AT", "ACTOR", "KIND", "SHARD", "DETAIL"]]
            for e in j["events"]?.arrayValue ?? [] {
                ev.append([
                    e["at"]?.stringValue ?? "", e["actor"]?.stringValue ?? "", e["kind"]?.stringValue ?? "",
                    number(e["shard"]), e["detail"]?.render() ?? "",
                ])
            }
            out += table(ev)
        }
        return out
    }

    /// What a shard is, from its slice: its scalar keys as `key=value` (a sweep point's `beta=0.3 seed=1 point=2`, a
    /// sampling range's `start=0 end=25000`), at most 40 characters; `-` without any.
    static func sliceLabel(_ slice: JSONValue?) -> String {
        let label = ShardSliceLabel.text(slice, number: { number($0) })
        if label.isEmpty { return "-" }
        return label.count <= 40 ? label : String(label.prefix(39)) + "…"
    }

    /// The terminal's width in columns (stderr's, where progress goes), else $COLUMNS, else 80.
    static func terminalWidth() -> Int {
        var w = winsize()
        if ioctl(2, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 0 { return Int(w.ws_col) }
        if let c = ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init), c > 0 { return c }
        return 80
    }

    /// The metric a progress line shows: a loss if the job reports one, else the alphabetically first name, with
    /// the mean of the latest values over the shards that have it.
    static func headlineMetric(_ j: JSONValue) -> (name: String, value: Double)? {
        let means = latestMetricMeans(j)
        let names = means.keys.sorted()
        guard let name = names.first(where: { $0 == "loss" }) ?? names.first(where: { $0.hasSuffix("loss") }) ?? names.first,
            let mean = means[name]
        else { return nil }
        return (name, mean)
    }

    /// Each metric's latest value, averaged over the shards of a `status JOB` reply that report it (finite ones,
    /// in shard order).
    static func latestMetricMeans(_ j: JSONValue) -> [String: Double] {
        var values: [String: [Double]] = [:]
        for s in j["shards"]?.arrayValue ?? [] {
            for (name, m) in s["last_metrics"]?.objectValue?.pairs ?? [] {
                if let v = m["value"]?.doubleValue, v.isFinite { values[name, default: []].append(v) }
            }
        }
        return values.mapValues { $0.reduce(0, +) / Double($0.count) }
    }

    /// A merged result's headline keys, shown first by `result` and `compare`.
    static let headlineResultKeys = [
        "algorithm", "n", "mean", "cov", "mode_weights", "mode_weight_error", "sw1", "mmd", "noise_floor", "nan_count",
        "max_frontier_distance", "kl_to_optimum", "objective_gap", "best",
    ]
}

/// `tessera wait`'s progress: on a terminal one line redrawn in place, never wider than the terminal (parts are
/// dropped, least useful first, to fit); elsewhere a plain line every `plainInterval` seconds. The rate is steps per
/// second over the last polls (a moving window), the ETA the steps left at that rate.
struct ProgressRenderer {
    let tty: Bool
    var plainInterval: Double = 10
    private var samples: [(t: Double, done: Double)] = []
    private var lastPlain: Double?

    init(tty: Bool) { self.tty = tty }

    /// What to write to stderr for this status, or nil (off a terminal, between plain lines).
    mutating func render(_ j: JSONValue, now: Double, width: Int) -> String? {
        let done = j["steps_done"]?.doubleValue ?? 0
        let total = max(j["steps_total"]?.doubleValue ?? 1, 1)
        samples.append((now, done))
        samples.removeAll { now - $0.t > 15 }
        let rate: Double? = {
            guard let first = samples.first, now - first.t >= 1, done > first.done else { return nil }
            return (done - first.done) / (now - first.t)
        }()
        let frac = min(max(done / total, 0), 1)
        let shards = j["shards"]?.arrayValue ?? []
        let ok = shards.filter { $0["state"]?.stringValue == "succeeded" }.count
        var parts: [(text: String, keep: Int)] = []  // keep: lower is dropped first
        parts.append((String(format: "%3d%%", Int(frac * 100)), 9))
        parts.append(("shards \(ok)/\(shards.count)", 8))
        parts.append((j["state"]?.stringValue ?? "?", 7))
        parts.append((Format.seconds(j["elapsed_seconds"]?.doubleValue ?? 0), 4))
        let finished = j["state"]?.stringValue.flatMap(JobState.init(rawValue:))?.isTerminal ?? false
        if let rate, rate > 0, !finished {
            parts.append((Self.rate(rate), 3))
            let left = (total - done) / rate
            if left.isFinite, left >= 0 { parts.append(("ETA " + Format.seconds(left), 6)) }
        }
        if let (name, value) = Format.headlineMetric(j) { parts.append(("\(name) \(Self.value(value))", 5)) }
        if !tty {
            let state = j["state"]?.stringValue.flatMap(JobState.init(rawValue:))
            if let last = lastPlain, now - last < plainInterval, !(state?.isTerminal ?? false) { return nil }
            lastPlain = now
            return "job \(Format.number(j["id"])): " + parts.map(\.text).joined(separator: "  ") + "\n"
        }
        // Fit: drop the least useful parts, then shrink the bar (at least 10 wide, or none).
        var shown = parts
        func length(_ ps: [(text: String, keep: Int)], bar: Int) -> Int {
            ps.reduce(0) { $0 + $1.text.count + 2 } + (bar > 0 ? bar + 3 : 0)
        }
        let room = max(width - 1, 10)
        while length(shown, bar: 10) > room, let drop = shown.enumerated().min(by: { $0.element.keep < $1.element.keep }) {
            if shown.count == 1 { break }
            shown.remove(at: drop.offset)
        }
        let barWidth = min(30, room - length(shown, bar: 0) - 3)
        var line = ""
        if barWidth >= 10 {
            let filled = Int(frac * Double(barWidth))
            line = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: barWidth - filled) + "] "
        }
        line += shown.map(\.text).joined(separator: "  ")
        if line.count > room { line = String(line.prefix(room)) }
        // \r, the line, and a clear to the end of the line (no stale characters from a longer line before).
        return "\r" + line + "\u{1B}[K"
    }

    static func rate(_ r: Double) -> String {
        r >= 100 ? String(format: "%.0f steps/s", r) : r >= 1 ? String(format: "%.1f steps/s", r) : String(format: "%.2f steps/s", r)
    }

    static func value(_ v: Double) -> String {
        abs(v) < 1e-12 ? "0" : String(format: "%.4g", v)
    }
}

extension Format {
    static func workers(_ ws: [JSONValue]) -> String {
        if ws.isEmpty { return "no workers" }
        var rows = [["ID", "NAME", "HOST", "STATE", "SLOTS", "RUNNING", "LAST HEARTBEAT"]]
        for w in ws {
            let running = (w["running"]?.arrayValue ?? []).map { "\(number($0["job"]))/\(number($0["shard"]))" }
            rows.append([
                number(w["id"]), w["name"]?.stringValue ?? "", w["host"]?.stringValue ?? "", w["state"]?.stringValue ?? "",
                number(w["slots"]), running.isEmpty ? "-" : running.joined(separator: ","),
                String(format: "%.1f s ago", w["seconds_since_heartbeat"]?.doubleValue ?? 0),
            ])
        }
        return table(rows)
    }

    /// A merged result: scalars first, then vectors and matrices, nested objects indented.
    /// A merged result for reading: scalars first (headline numbers before the rest), then nested objects one line
    /// each, then lists of records as tables (one row per record, nested objects flattened to `a.b` columns, a
    /// statistic `{n, mean, std, ci95}` shown as `mean [lo, hi]`).
    static func result(_ r: JSONValue) -> String {
        guard let o = r.objectValue else { return r.render(pretty: true) }
        if let sweep = SweepTable(o) { return sweepResult(o, sweep) }
        // PostgreSQL's jsonb orders keys by length; show the headline numbers first.
        let first = headlineResultKeys
        let ordered = first.compactMap { k in o[k].map { (key: k, value: $0) } } + o.pairs.filter { !first.contains($0.key) }
        let isTable = { (v: JSONValue) -> Bool in
            if case .array(let items) = v, !items.isEmpty, items.allSatisfy({ $0.objectValue != nil }) { return true }
            return false
        }
        let scalars = ordered.filter { if case .object = $0.value { return false }; return !isTable($0.value) }
        let objects = ordered.filter { if case .object = $0.value { return true }; return false }
        let tables = ordered.filter { isTable($0.value) }
        var lines: [String] = []
        let width = (scalars + objects).map(\.key.count).max() ?? 0
        for (k, v) in scalars { lines.append(k.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + short(v)) }
        for (k, v) in objects {
            lines.append(k.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                + (v.objectValue?.pairs ?? []).map { "\($0.key)=\(short($0.value))" }.joined(separator: "  "))
        }
        for (k, v) in tables {
            let records = v.arrayValue ?? []
            lines.append("")
            lines.append("\(k) (\(records.count))")
            lines.append(recordTable(records).split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n"))
        }
        return lines.joined(separator: "\n")
    }

    /// The most rows `result` prints of a sweep table (the first ones); --json prints all, --best names the best.
    static let sweepRowsShown = 40

    /// A sweep's result: its scalars, then the table of points.
    static func sweepResult(_ o: JSONObject, _ t: SweepTable) -> String {
        var lines: [String] = []
        for key in ["algorithm", "points", "shards_per_point"] { if let v = o[key] { lines.append("\(key)  \(short(v))") } }
        if let swept = o["swept"]?.arrayValue { lines.append("swept  " + swept.compactMap(\.stringValue).joined(separator: ", ")) }
        lines.append("")
        let shown = t.rows.prefix(sweepRowsShown)
        lines.append(table([t.columns] + shown.map { $0.map(short) }))
        if t.rows.count > shown.count {
            lines.append("… \(t.rows.count - shown.count) more points (--json prints them all; --best METRIC names the best)")
        }
        if let seeds = o["across_seeds"]?.objectValue, let columns = seeds["columns"]?.arrayValue?.compactMap(\.stringValue),
            let rows = seeds["rows"]?.arrayValue
        {
            let by = seeds["by"]?.arrayValue?.compactMap(\.stringValue) ?? []
            lines.append("")
            lines.append("across seeds: mean [95% interval]" + (by.isEmpty ? "" : ", by \(by.joined(separator: ", "))"))
            let cells = rows.prefix(sweepRowsShown).map { row in
                (row.arrayValue ?? []).map { v -> String in
                    guard let m = v.objectValue, let mean = m["mean"] else { return short(v) }
                    // The same value for every seed (std 0) needs no interval.
                    guard let ci = m["ci95"]?.arrayValue, ci.count == 2, m["std"]?.doubleValue != 0 else { return short(mean) }
                    return "\(short(mean)) [\(short(ci[0])), \(short(ci[1]))]"
                }
            }
            lines.append(table([columns] + cells))
            if rows.count > cells.count { lines.append("… \(rows.count - cells.count) more groups (--json prints them all)") }
        }
        return lines.joined(separator: "\n")
    }

    /// Records as a table: columns in first-seen order, nested objects one level flattened.
    static func recordTable(_ records: [JSONValue]) -> String {
        func cells(_ o: JSONObject) -> [(String, String)] {
            o.pairs.flatMap { (k, v) -> [(String, String)] in
                guard case .object(let inner) = v else { return [(k, short(v))] }
                if let mean = inner["mean"], let ci = inner["ci95"]?.arrayValue, ci.count == 2 {
                    return [(k, "\(short(mean)) [\(short(ci[0])), \(short(ci[1]))]")]
                }
                return inner.pairs.map { ("\(k).\($0.key)", short($0.value)) }
            }
        }
        let rows = records.map { cells($0.objectValue ?? [:]) }
        var columns: [String] = []
        for r in rows { for (c, _) in r where !columns.contains(c) { columns.append(c) } }
        var table = [columns]
        for r in rows {
            let m = Dictionary(r, uniquingKeysWith: { a, _ in a })
            table.append(columns.map { m[$0] ?? "-" })
        }
        return Format.table(table)
    }

    static func short(_ v: JSONValue) -> String {
        switch v {
        case .number(let n) where n.value != 0 && abs(n.value) < 1e-12:
            return "0"  // floating-point noise (a result's exact zero computed in float64), not a value to read
        case .number: return number(v)
        case .array(let a):
            if a.count > 12 { return "[\(a.prefix(12).map(short).joined(separator: ", ")), … (\(a.count))]" }
            return "[" + a.map(short).joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.pairs.map { "\($0.key): \(short($0.value))" }.joined(separator: ", ") + "}"
        default: return number(v)
        }
    }
}

/// A table of points in a result: a sweep's `columns` and `rows` (Sweep.swift), or, for `--best`, a list of records
/// (an RL or DPO β sweep's `points`) flattened as `Format.recordTable` shows them.
struct SweepTable {
    var columns: [String]
    var rows: [[JSONValue]]
    /// Where the table came from ("rows", or the key of the list of records).
    var source: String

    init?(_ o: JSONObject) {
        guard let cols = o["columns"]?.arrayValue, let rows = o["rows"]?.arrayValue else { return nil }
        let names = cols.compactMap(\.stringValue)
        guard names.count == cols.count, !names.isEmpty else { return nil }
        var table: [[JSONValue]] = []
        table.reserveCapacity(rows.count)
        for r in rows {
            guard let cells = r.arrayValue, cells.count == names.count else { return nil }
            table.append(cells)
        }
        columns = names
        self.rows = table
        source = "rows"
    }

    /// The first list of records in `o` that has `metric` among its (one level flattened) fields.
    init?(records o: JSONObject, having metric: String) {
        for (key, value) in o.pairs {
            guard let items = value.arrayValue, !items.isEmpty, items.allSatisfy({ $0.objectValue != nil }) else { continue }
            let flat = items.map { Self.flatten($0.objectValue!) }
            var names: [String] = []
            for f in flat { for (c, _) in f where !names.contains(c) { names.append(c) } }
            guard names.contains(metric) else { continue }
            columns = names
            rows = flat.map { f in
                let m = Dictionary(f, uniquingKeysWith: { a, _ in a })
                return names.map { m[$0] ?? .null }
            }
            source = key
            return
        }
        return nil
    }

    /// Every field of a record, nested objects as `a.b` (an interval {mean, ci95, …} by its mean as `a`, too).
    static func flatten(_ o: JSONObject) -> [(String, JSONValue)] {
        o.pairs.flatMap { (k, v) -> [(String, JSONValue)] in
            guard case .object(let inner) = v else { return [(k, v)] }
            var out: [(String, JSONValue)] = []
            if let mean = inner["mean"] { out.append((k, mean)) }
            out += inner.pairs.map { ("\(k).\($0.key)", $0.value) }
            return out
        }
    }

    /// The row with the lowest (or highest) finite value of `column`, the first such on ties; nil when none has one.
    func best(_ column: Int, maximize: Bool) -> Int? {
        var best: (row: Int, value: Double)?
        for (i, r) in rows.enumerated() {
            guard let v = r[column].doubleValue, v.isFinite else { continue }
            if let b = best, maximize ? v <= b.value : v >= b.value { continue }
            best = (i, v)
        }
        return best?.row
    }
}

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
        var parts: [String] = []
        for (key, value) in slice?.objectValue?.pairs ?? [] where key != "depends_on" {
            switch value {
            case .number: parts.append("\(key)=\(number(value))")
            case .string(let s): parts.append("\(key)=\(s)")
            case .bool(let b): parts.append("\(key)=\(b)")
            default: continue
            }
        }
        let label = parts.joined(separator: " ")
        if label.isEmpty { return "-" }
        return label.count <= 40 ? label : String(label.prefix(39)) + "…"
    }

    static func progressLine(_ j: JSONValue) -> String {
        let done = j["steps_done"]?.doubleValue ?? 0
        let total = max(j["steps_total"]?.doubleValue ?? 1, 1)
        let frac = min(max(done / total, 0), 1)
        let width = 30
        let filled = Int(frac * Double(width))
        let shards = j["shards"]?.arrayValue ?? []
        let ok = shards.filter { $0["state"]?.stringValue == "succeeded" }.count
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        return String(
            format: "\r[%@] %3d%%  shards %d/%d  %@  %@   ", bar, Int(frac * 100), ok, shards.count,
            j["state"]?.stringValue ?? "?", seconds(j["elapsed_seconds"]?.doubleValue ?? 0)
        )
    }

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
    static func result(_ r: JSONValue) -> String {
        guard let o = r.objectValue else { return r.render(pretty: true) }
        var lines: [String] = []
        let width = o.keys.map(\.count).max() ?? 0
        // PostgreSQL's jsonb orders keys by length; show the headline numbers first.
        let first = ["n", "mean", "cov", "mode_weights", "mode_weight_error", "sw1", "mmd", "noise_floor", "nan_count"]
        let ordered = first.compactMap { k in o[k].map { (key: k, value: $0) } }
            + o.pairs.filter { !first.contains($0.key) }
        for (k, v) in ordered {
            let key = k.padding(toLength: width, withPad: " ", startingAt: 0)
            switch v {
            case .object(let inner):
                lines.append("\(key)  " + inner.pairs.map { "\($0.key)=\(short($0.value))" }.joined(separator: "  "))
            case .array(let items) where !items.isEmpty && items.allSatisfy({ $0.objectValue != nil }):
                // A list of records (e.g. per_mode): one line each.
                for (i, item) in items.enumerated() {
                    let label = i == 0 ? key : String(repeating: " ", count: width)
                    lines.append("\(label)  [\(i)] " + item.objectValue!.pairs.map { "\($0.key)=\(short($0.value))" }.joined(separator: "  "))
                }
            default:
                lines.append("\(key)  \(short(v))")
            }
        }
        return lines.joined(separator: "\n")
    }

    static func short(_ v: JSONValue) -> String {
        switch v {
        case .number: return number(v)
        case .array(let a):
            if a.count > 12 { return "[\(a.prefix(12).map(short).joined(separator: ", ")), … (\(a.count))]" }
            return "[" + a.map(short).joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.pairs.map { "\($0.key): \(short($0.value))" }.joined(separator: ", ") + "}"
        default: return number(v)
        }
    }
}

// The read-only dashboard (docs/http.md, "Dashboard"): server-rendered HTML with inline SVG charts, no JavaScript
// framework and no assets. Pages: `/` (jobs, with filters), `/jobs/ID` (progress, shards, live metric charts, the
// result, events), `/workers`. A page refreshes its `<main>` every 2 s from the server (fetch + DOMParser) until it
// shows something final (a finished job), so a state change appears without a reload.

import Foundation
import Hummingbird
import TesseraCore
import TesseraCoordinator
import TesseraJSON
import TesseraModel
import TesseraProtocol

struct Dashboard {
    let coordinator: Coordinator

    /// Metric names drawn on a job page (the first ones in name order), and points read per name.
    static let maxCharts = 6
    static let pointsPerChart = 50_000

    func register(on router: Router<BasicRequestContext>) {
        router.get("/") { request, _ -> Response in
            let q = request.uri.queryParameters
            var body: JSONObject = ["limit": .int(100)]
            for key in ["state", "kind", "algorithm", "name"] {
                if let v = q[Substring(key)], !v.isEmpty { body[key] = .string(String(v)) }
            }
            let filters = ["state", "kind", "algorithm", "name"].map { ($0, q[Substring($0)].map(String.init) ?? "") }
            guard let reply = await coordinator.request("status", body: body) else { return Self.standby() }
            let o = (try? JSONValue.parse(reply.body)) ?? .null
            guard reply.status == WireStatus.ok else {
                return Self.page("Jobs", Self.filterForm(filters) + "<p class=\"error\">\(Self.h(o["error"]?.stringValue ?? "request failed"))</p>", status: .badRequest)
            }
            return Self.page("Jobs", Self.filterForm(filters) + Self.jobsTable(o["jobs"]?.arrayValue ?? []))
        }
        router.get("/jobs/{id}") { _, context -> Response in
            guard let id = context.parameters.get("id", as: Int.self), id > 0 else {
                return Self.page("No such job", "<p class=\"error\">A job id is a positive whole number.</p>", status: .badRequest)
            }
            return await jobPage(id)
        }
        router.get("/workers") { _, _ -> Response in
            guard let reply = await coordinator.request("workers") else { return Self.standby() }
            let o = (try? JSONValue.parse(reply.body)) ?? .null
            return Self.page("Workers", Self.workersTable(o))
        }
    }

    private func jobPage(_ id: Int) async -> Response {
        guard let reply = await coordinator.request("status", body: ["job": .int(id), "events": .bool(true)]) else { return Self.standby() }
        guard reply.status == WireStatus.ok, let job = (try? JSONValue.parse(reply.body))?["job"] else {
            return Self.page("Job \(id)", "<p class=\"error\">No job \(id).</p>", status: .notFound)
        }
        let state = job["state"]?.stringValue ?? "?"
        let final = ["succeeded", "failed", "cancelled"].contains(state)
        var html = Self.jobHeader(job)
        // Live metric charts: one per metric name, a line per shard (the mean and a min–max band past 10 shards).
        if let list = await coordinator.request("metrics", body: ["job": .int(id), "list": .bool(true)]),
            let series = (try? JSONValue.parse(list.body))?["series"]?.arrayValue, !series.isEmpty
        {
            html += "<h2>Metrics</h2><div class=\"charts\">"
            let names = series.compactMap { $0["name"]?.stringValue }
            for name in names.prefix(Self.maxCharts) {
                guard let r = await coordinator.request("metrics", body: ["job": .int(id), "name": .string(name), "limit": .int(Self.pointsPerChart)]),
                    let rows = (try? JSONValue.parse(r.body))?["metrics"]?.arrayValue
                else { continue }
                var byShard: [Int: [(x: Double, y: Double)]] = [:]
                for row in rows {
                    guard let s = row["shard"]?.intValue, let step = row["step"]?.doubleValue else { continue }
                    byShard[s, default: []].append((step, row["value"]?.doubleValue ?? .nan))
                }
                let lines = byShard.keys.sorted().map { ChartSeries(label: "shard \($0)", points: byShard[$0]!) }
                var chart = lines.count > 10
                    ? LineChart.meanWithBand(title: "\(name) (mean of \(lines.count) shards, min–max band)", of: lines)
                    : LineChart(title: name, series: lines)
                chart.width = 560
                chart.height = 280
                html += "<figure class=\"chart\" data-metric=\"\(Self.h(name))\">\(chart.svg())</figure>"
            }
            html += "</div>"
            if names.count > Self.maxCharts {
                html += "<p class=\"note\">\(names.count - Self.maxCharts) more metric(s): <code>tessera metrics \(id) --list</code>.</p>"
            }
        }
        if state == "succeeded", let r = await coordinator.request("result", body: ["job": .int(id)]),
            let result = (try? JSONValue.parse(r.body))?["result"]
        {
            html += "<h2>Result</h2>" + Self.resultHTML(result)
        }
        html += "<h2>Shards</h2>" + Self.shardsTable(job["shards"]?.arrayValue ?? [])
        let events = job["events"]?.arrayValue ?? []
        if !events.isEmpty {
            html += "<h2>Events</h2><table><tr><th>at</th><th>actor</th><th>event</th><th>shard</th><th>detail</th></tr>"
            for e in events.suffix(30) {
                html += "<tr><td>\(Self.h(e["at"]?.stringValue ?? ""))</td><td>\(Self.h(e["actor"]?.stringValue ?? ""))</td>"
                html += "<td>\(Self.h(e["kind"]?.stringValue ?? ""))</td><td>\(e["shard"]?.intValue.map(String.init) ?? "")</td>"
                html += "<td><code>\(Self.h(e["detail"]?.render() ?? ""))</code></td></tr>"
            }
            html += "</table>"
            if events.count > 30 { html += "<p class=\"note\">The last 30 of \(events.count): <code>tessera status \(id) --events</code>.</p>" }
        }
        return Self.page("Job \(id): \(job["name"]?.stringValue ?? "")", html, final: final)
    }

    // MARK: Pieces

    static func h(_ s: String) -> String { LineChart.escape(s) }

    static func number(_ v: JSONValue?) -> String {
        guard let d = v?.doubleValue else { return v?.stringValue ?? "–" }
        if d == d.rounded() && abs(d) < 1e15 { return String(Int64(d)) }
        return String(format: "%.6g", d)
    }

    static func filterForm(_ filters: [(String, String)]) -> String {
        var html = "<form class=\"filters\" method=\"get\" action=\"/\">"
        for (key, value) in filters {
            if key == "state" {
                html += "<label>state <select name=\"state\"><option value=\"\">any</option>"
                for s in JobState.allCases.map(\.rawValue) {
                    html += "<option\(s == value ? " selected" : "")>\(s)</option>"
                }
                html += "</select></label> "
            } else {
                html += "<label>\(key) <input name=\"\(key)\" value=\"\(h(value))\" size=\"12\"\(key == "name" ? " placeholder=\"glob, e.g. rl-*\"" : "")></label> "
            }
        }
        return html + "<button>filter</button></form>"
    }

    static func progress(_ done: Int, _ total: Int) -> String {
        let pct = total > 0 ? Double(done) / Double(total) * 100 : 0
        return "<span class=\"bar\"><span style=\"width:\(String(format: "%.1f", pct))%\"></span></span> \(done)/\(total)"
    }

    static func jobsTable(_ jobs: [JSONValue]) -> String {
        guard !jobs.isEmpty else { return "<p id=\"empty\">No jobs match.</p>" }
        var html = "<table id=\"jobs\"><tr><th>id</th><th>name</th><th>kind / algorithm</th><th>state</th><th>shards</th><th>created</th><th>elapsed</th></tr>"
        for j in jobs {
            let id = j["id"]?.intValue ?? 0
            let state = j["state"]?.stringValue ?? "?"
            html += "<tr data-job=\"\(id)\"><td><a href=\"/jobs/\(id)\">\(id)</a></td><td>\(h(j["name"]?.stringValue ?? ""))</td>"
            html += "<td>\(h(j["kind"]?.stringValue ?? ""))/\(h(j["algorithm"]?.stringValue ?? ""))</td>"
            html += "<td class=\"state state-\(h(state))\">\(h(state))</td>"
            html += "<td>\(progress(j["shards_succeeded"]?.intValue ?? 0, j["shards"]?.intValue ?? 0))</td>"
            html += "<td>\(h(String((j["created_at"]?.stringValue ?? "").prefix(19)).replacingOccurrences(of: "T", with: " ")))</td>"
            html += "<td>\(j["elapsed_seconds"]?.doubleValue.map { String(format: "%.1f s", $0) } ?? "")</td></tr>"
        }
        return html + "</table>"
    }

    static func jobHeader(_ job: JSONValue) -> String {
        let state = job["state"]?.stringValue ?? "?"
        var html = "<p><span id=\"state\" class=\"state state-\(h(state))\">\(h(state))</span> "
        html += "\(h(job["kind"]?.stringValue ?? ""))/\(h(job["algorithm"]?.stringValue ?? "")) · "
        let shards = job["shards"]?.arrayValue ?? []
        let done = shards.filter { $0["state"]?.stringValue == "succeeded" }.count
        html += progress(done, job["shard_count"]?.intValue ?? shards.count) + " shards"
        if let d = job["steps_done"]?.doubleValue, let t = job["steps_total"]?.doubleValue, t > 0 {
            html += " · steps \(number(.number(d)))/\(number(.number(t))) (\(String(format: "%.0f", d / t * 100))%)"
        }
        if let e = job["elapsed_seconds"]?.doubleValue { html += " · \(String(format: "%.1f", e)) s" }
        html += "</p>"
        if let error = job["error"]?.stringValue { html += "<p class=\"error\">\(h(error))</p>" }
        return html
    }

    static func shardLabel(_ slice: JSONValue?) -> String {
        let label = ShardSliceLabel.text(slice, number: { number($0) })
        return label.isEmpty ? "–" : label
    }

    static func shardsTable(_ shards: [JSONValue]) -> String {
        var html = "<table id=\"shards\"><tr><th>shard</th><th>point</th><th>state</th><th>attempt</th><th>worker</th><th>step</th><th>last metrics</th></tr>"
        for s in shards.prefix(500) {
            let state = s["state"]?.stringValue ?? "?"
            var last: [String] = []
            for (k, v) in (s["last_metrics"]?.objectValue?.pairs ?? []).prefix(4) { last.append("\(h(k))=\(number(v["value"]))") }
            html += "<tr><td>\(s["index"]?.intValue ?? 0)</td><td>\(h(shardLabel(s["slice"])))</td>"
            html += "<td class=\"state state-\(h(state))\">\(h(state))</td><td>\(s["attempt"]?.intValue ?? 0)</td>"
            html += "<td>\(h(s["worker"]?.stringValue ?? "–"))</td><td>\(number(s["step"]))/\(number(s["total"]))</td>"
            html += "<td>\(last.joined(separator: " "))</td></tr>"
        }
        html += "</table>"
        if shards.count > 500 { html += "<p class=\"note\">The first 500 of \(shards.count) shards.</p>" }
        return html
    }

    /// A result: scalars as a key/value table; a list of objects (a sweep's points) as one row per point.
    static func resultHTML(_ result: JSONValue) -> String {
        var html = ""
        var scalars: [(String, String)] = []
        for (key, value) in result.objectValue?.pairs ?? [] {
            switch value {
            case .number, .string, .bool: scalars.append((key, value.stringValue ?? number(value)))
            case .array(let items) where items.allSatisfy({ $0.objectValue != nil }) && !items.isEmpty:
                let columns = items.flatMap { ($0.objectValue?.pairs ?? []).filter { if case .object = $0.1 { false } else if case .array = $0.1 { false } else { true } }.map(\.0) }
                var seen = Set<String>()
                let cols = columns.filter { seen.insert($0).inserted }.prefix(10)
                html += "<h3>\(h(key))</h3>" + frontier(items) + "<table class=\"points\"><tr>" + cols.map { "<th>\(h($0))</th>" }.joined() + "</tr>"
                for item in items.prefix(200) {
                    html += "<tr>" + cols.map { "<td>\(h(item[$0].map { $0.stringValue ?? number($0) } ?? ""))</td>" }.joined() + "</tr>"
                }
                html += "</table>"
            case .array(let rows) where key == "rows":
                // A sweep's table (Sweep.swift): its own columns, the first ones, a row per point.
                guard let columns = result["columns"]?.arrayValue?.compactMap(\.stringValue), !columns.isEmpty else { continue }
                let shown = min(columns.count, 14)
                html += "<h3>points (\(rows.count))</h3><table class=\"points\"><tr>"
                    + columns.prefix(shown).map { "<th>\(h($0))</th>" }.joined() + "</tr>"
                for row in rows.prefix(200) {
                    let cells = row.arrayValue ?? []
                    html += "<tr>" + (0..<shown).map { i in "<td>\(h(i < cells.count ? (cells[i].stringValue ?? number(cells[i])) : ""))</td>" }.joined() + "</tr>"
                }
                html += "</table>"
                if rows.count > 200 || columns.count > shown {
                    html += "<p class=\"note\">The first \(min(rows.count, 200)) points and \(shown) of \(columns.count) columns; "
                        + "<code>tessera result ID --json</code> has them all, <code>--best METRIC</code> names the best point.</p>"
                }
            case .array(let items) where key == "swept":
                scalars.append((key, items.compactMap(\.stringValue).joined(separator: ", ")))
            default: continue
            }
        }
        if !scalars.isEmpty {
            html = "<table class=\"result\">" + scalars.map { "<tr><th>\(h($0.0))</th><td>\(h($0.1))</td></tr>" }.joined() + "</table>" + html
        }
        return html + "<details><summary>the whole result (JSON)</summary><pre>\(h(result.render(pretty: true)))</pre></details>"
    }

    /// A sweep's reward–KL frontier, when its points carry both (the RL and preference sweeps): expected reward
    /// against KL(π‖π_ref), one line per seed, in KL order.
    static func frontier(_ points: [JSONValue]) -> String {
        var bySeed: [String: [(x: Double, y: Double)]] = [:]
        for p in points {
            guard let kl = p["kl_to_ref"]?.doubleValue, let reward = p["expected_reward"]?.doubleValue else { continue }
            bySeed[p["seed"].map { $0.stringValue ?? number($0) } ?? "", default: []].append((kl, reward))
        }
        guard bySeed.values.contains(where: { $0.count > 1 }) else { return "" }
        let series = bySeed.keys.sorted().map { seed in
            ChartSeries(label: seed.isEmpty ? "points" : "seed \(seed)", points: bySeed[seed]!.sorted { $0.x < $1.x })
        }
        var chart = LineChart(title: "reward–KL frontier: expected reward against KL(π‖π_ref)", series: series)
        chart.xLabel = "KL(π‖π_ref)"
        chart.yLabel = "expected reward"
        chart.width = 560
        chart.height = 300
        return "<figure class=\"frontier\">\(chart.svg())</figure>"
    }

    static func workersTable(_ o: JSONValue) -> String {
        let workers = o["workers"]?.arrayValue ?? []
        var html = "<table id=\"workers\"><tr><th>name</th><th>host</th><th>state</th><th>slots</th><th>running</th><th>last heartbeat</th></tr>"
        for w in workers {
            let running = (w["running"]?.arrayValue ?? []).map { "job \($0["job"]?.intValue ?? 0) shard \($0["shard"]?.intValue ?? 0)" }
            html += "<tr><td>\(h(w["name"]?.stringValue ?? ""))</td><td>\(h(w["host"]?.stringValue ?? ""))</td>"
            html += "<td class=\"state state-\(h(w["state"]?.stringValue ?? ""))\">\(h(w["state"]?.stringValue ?? ""))</td>"
            html += "<td>\(w["slots"]?.intValue ?? 0)</td><td>\(h(running.joined(separator: ", ")))</td>"
            html += "<td>\(w["seconds_since_heartbeat"]?.doubleValue.map { String(format: "%.1f s ago", $0) } ?? "")</td></tr>"
        }
        html += "</table>"
        if let c = o["coordinator"] {
            html += "<h2>Coordinator</h2><table class=\"result\">"
            for key in ["connected_workers", "dispatched", "workers_lost", "stale_dropped", "metric_points", "commits", "auth"] {
                html += "<tr><th>\(key)</th><td>\(h(c[key].map { $0.stringValue ?? number($0) } ?? ""))</td></tr>"
            }
            html += "<tr><th>storage</th><td>\(h(c["storage"]?["state"]?.stringValue ?? ""))</td></tr></table>"
        }
        return html
    }

    static func standby() -> Response {
        page("Standby", "<p class=\"error\">This coordinator is a standby (another one holds the database): open the active one.</p>", status: .serviceUnavailable)
    }

    static let style = """
        body{font-family:system-ui,sans-serif;margin:0;color:#222}header{background:#243447;color:#fff;padding:8px 16px}
        header a{color:#fff;margin-right:16px;text-decoration:none}main{padding:8px 16px}table{border-collapse:collapse;margin:8px 0}
        td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}th{background:#f4f4f4}
        .state{font-weight:600}.state-succeeded{color:#1a7f37}.state-failed{color:#c62828}.state-running,.state-leased{color:#1565c0}
        .state-queued{color:#777}.state-cancelled{color:#8d6e63}.error{color:#c62828}.note{color:#666;font-size:12px}
        .bar{display:inline-block;width:90px;height:8px;background:#e3e3e3;vertical-align:middle}.bar span{display:block;height:8px;background:#1a7f37}
        .charts{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}form.filters label{margin-right:8px;font-size:13px}
        """

    /// Refreshes `<main>` every 2 s until the page is final.
    static let script = """
        (function(){function tick(){if(document.querySelector('main').dataset.final==='true')return;
        fetch(location.href,{cache:'no-store'}).then(function(r){return r.text()}).then(function(t){
        var d=new DOMParser().parseFromString(t,'text/html');var m=d.querySelector('main');
        if(m){document.querySelector('main').replaceWith(m);document.title=d.title}}).catch(function(){}).then(function(){setTimeout(tick,2000)})}
        setTimeout(tick,2000)})();
        """

    static func page(_ title: String, _ body: String, final: Bool = false, status: HTTPResponse.Status = .ok) -> Response {
        let html = """
            <!doctype html><html lang="en"><head><meta charset="utf-8"><title>\(h(title)) · tessera</title>
            <style>\(style)</style></head><body><header><a href="/"><b>tessera</b></a><a href="/">jobs</a><a href="/workers">workers</a>
            <a href="/metrics">/metrics</a></header><main data-final="\(final)"><h1>\(h(title))</h1>\(body)</main>
            <script>\(script)</script></body></html>
            """
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: html)))
    }
}

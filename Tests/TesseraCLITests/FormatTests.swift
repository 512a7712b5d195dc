// The CLI's human output (Format.swift): progress lines that fit the terminal, `--since` parsing, result numbers.

import ArgumentParser
import Foundation
@testable import tessera
import TesseraCore
import Testing

func job(state: String, done: Double, total: Double, metrics: [String: Double] = [:], shards: Int = 2) -> JSONValue {
    var shardList: [JSONValue] = []
    for i in 0..<shards {
        var last: JSONObject = [:]
        for (k, v) in metrics { last[k] = .object(["step": .int(1), "value": .number(v + Double(i))]) }
        shardList.append(.object(["index": .int(i), "state": .string(i == 0 && state == "succeeded" ? "succeeded" : "leased"), "last_metrics": .object(last)]))
    }
    return .object([
        "id": .int(7), "state": .string(state), "steps_done": .number(done), "steps_total": .number(total),
        "elapsed_seconds": .number(12.3), "shards": .array(shardList),
    ])
}

@Suite("CLI formatting")
struct FormatTests {
    @Test("A terminal progress line never passes the terminal's width; narrow ones drop the least useful parts", arguments: [20, 40, 50, 80, 120, 200])
    func fitsTheWidth(width: Int) {
        var p = ProgressRenderer(tty: true)
        _ = p.render(job(state: "running", done: 100, total: 1000, metrics: ["loss": 0.25]), now: 0, width: width)
        let line = p.render(job(state: "running", done: 300, total: 1000, metrics: ["loss": 0.25]), now: 2, width: width)!
        #expect(line.hasPrefix("\r") && line.hasSuffix("\u{1B}[K"))
        let visible = line.dropFirst().dropLast(3)
        #expect(visible.count <= width - 1, "\(visible.count) > \(width): \(visible)")
        #expect(visible.contains("30%"))
        if width >= 120 {
            // Everything fits: the rate over the window (200 steps in 2 s), the ETA at that rate, the mean loss.
            #expect(visible.contains("100 steps/s") && visible.contains("ETA 7.00 s") && visible.contains("loss 0.75"), "\(visible)")
            #expect(visible.hasPrefix("[#########"))
        }
    }

    @Test("Off a terminal: a plain line at once, then one per interval, and the last when the job ends")
    func plainLines() {
        var p = ProgressRenderer(tty: false)
        #expect(p.render(job(state: "running", done: 0, total: 10), now: 0, width: 0) == "job 7:   0%  shards 0/2  running  12.30 s\n")
        #expect(p.render(job(state: "running", done: 5, total: 10), now: 5, width: 0) == nil)
        #expect(p.render(job(state: "running", done: 6, total: 10), now: 10.5, width: 0)?.contains("60%") == true)
        let end = p.render(job(state: "succeeded", done: 10, total: 10), now: 11, width: 0)
        #expect(end?.contains("100%") == true && end?.contains("ETA") == false, "\(end ?? "nil")")
    }

    @Test("The headline metric: a loss first, else the first name; the mean over shards")
    func headline() {
        #expect(Format.headlineMetric(job(state: "running", done: 1, total: 2, metrics: ["kl": 1, "loss": 2]))! == ("loss", 2.5))
        #expect(Format.headlineMetric(job(state: "running", done: 1, total: 2, metrics: ["zeta": 1, "kl": 3]))! == ("kl", 3.5))
        #expect(Format.headlineMetric(job(state: "running", done: 1, total: 2, metrics: ["dpo_loss": 4, "a": 0]))! == ("dpo_loss", 4.5))
        #expect(Format.headlineMetric(job(state: "running", done: 1, total: 2)) == nil)
    }

    @Test("--since: ages in s, m, h, d, w and ISO 8601 dates; anything else is refused")
    func since() {
        let now = Date(timeIntervalSince1970: 1_000_000)
        #expect(Status.sinceTime("90s", now: now) == 999_910)
        #expect(Status.sinceTime("30m", now: now) == 998_200)
        #expect(Status.sinceTime("2h", now: now) == 992_800)
        #expect(Status.sinceTime("1.5d", now: now) == 870_400)
        #expect(Status.sinceTime("1w", now: now) == 395_200)
        #expect(Status.sinceTime("2026-12-01") == 1_796_083_200)
        #expect(Status.sinceTime("2026-12-01T09:30:00Z") == 1_796_117_400)
        for bad in ["", "yesterday", "-3h", "3", "h", "2026-13-01"] { #expect(Status.sinceTime(bad, now: now) == nil, "\(bad)") }
    }

    @Test("Results: scalars (headline first), then objects, then lists of records as tables with flattened columns")
    func resultLayout() throws {
        let r = try JSONValue.parse(Array("""
            {"steps": 10, "points": [{"beta": 0.5, "frontier": {"kl": 1.25}, "kl": {"n": 2, "mean": 0.5, "std": 0, "ci95": [0.25, 0.75]}},
                                     {"beta": 1, "frontier": {"kl": 2}, "kl": {"n": 2, "mean": 3e-17, "std": 0, "ci95": [0, 1]}, "extra": 4}],
             "problem": {"seed": 7, "vocab": 16}, "algorithm": "rloo"}
            """.utf8))
        let lines = Format.result(r).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines == [
            "algorithm  rloo",
            "steps      10",
            "problem    seed=7  vocab=16",
            "",
            "points (2)",
            "  beta  frontier.kl  kl                extra",
            "  0.5   1.25         0.5 [0.25, 0.75]  -",
            "  1     2            0 [0, 1]          4",
        ])
    }

    @Test("A sweep's result: its scalars, then the table of points, at most the first rows; --best by a column")
    func sweepResult() throws {
        var rows: [String] = []
        for p in 0..<45 { rows.append("[\(p), \(p % 5), \(p == 7 ? "null" : String(Double((p * 37) % 45) / 10))]") }
        let text = """
            {"rows": [\(rows.joined(separator: ", "))], "swept": ["params.eta"], "points": 45, "columns": ["point", "params.eta", "sw1"], "algorithm": "ddim"}
            """
        let r = try JSONValue.parse(Array(text.utf8))
        let lines = Format.result(r).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.prefix(6) == ["algorithm  ddim", "points  45", "swept  params.eta", "", "point  params.eta  sw1", "0      0           0"])
        #expect(lines.count == 4 + 1 + Format.sweepRowsShown + 1)
        #expect(lines.last == "… 5 more points (--json prints them all; --best METRIC names the best)")
        let table = try #require(SweepTable(r.objectValue!))
        // (p * 37) % 45 is 0 at p = 0 only and 44 at p = 17 (37 * 17 = 629 = 13 * 45 + 44); p = 7 has no value.
        #expect(table.best(2, maximize: false) == 0)
        #expect(table.best(2, maximize: true) == 17)
        #expect(table.best(0, maximize: true) == 44)
        // Ties: the first row.
        #expect(table.best(1, maximize: true) == 4)
        let nothing = try JSONValue.parse(Array(#"{"rows": [[0, null]], "columns": ["point", "x"]}"#.utf8))
        #expect(SweepTable(nothing.objectValue!)!.best(1, maximize: false) == nil)
    }

    @Test("--best also picks from a list of records (a beta sweep's points), intervals by their mean")
    func bestFromRecords() throws {
        let r = try JSONValue.parse(Array("""
            {"points": [{"beta": 0.5, "kl": {"mean": 0.3, "n": 2}}, {"beta": 1, "kl": {"mean": 0.1, "n": 2}}, {"beta": 2, "kl": {"mean": 0.2, "n": 2}}]}
            """.utf8))
        let table = try #require(SweepTable(records: r.objectValue!, having: "kl"))
        #expect(table.source == "points" && table.columns == ["beta", "kl", "kl.mean", "kl.n"])
        #expect(table.best(1, maximize: false) == 1 && table.best(1, maximize: true) == 0)
        #expect(SweepTable(records: r.objectValue!, having: "nope") == nil)
    }

    @Test("Completion scripts name every subcommand", arguments: [CompletionShell.bash, .zsh, .fish])
    func completion(shell: CompletionShell) {
        let script = Tessera.completionScript(for: shell)
        for command in ["submit", "status", "wait", "cancel", "retry", "compare", "workers", "metrics", "checkpoint", "result", "keygen"] {
            #expect(script.contains(command), "\(shell) script lacks \(command)")
        }
        #expect(script.contains("watch") && script.contains("spool-memory"))
    }

    @Test("Results: noise below 1e-12 reads 0, other numbers as they are")
    func resultNumbers() {
        #expect(Format.short(.number(3e-17)) == "0" && Format.short(.number(-4e-13)) == "0")
        #expect(Format.short(.number(2e-12)) == "2e-12" && Format.short(.number(0)) == "0" && Format.short(.number(0.125)) == "0.125")
        #expect(Format.short(.array([.number(1e-15), .number(1)])) == "[0, 1]")
    }
}

@Suite("metrics --plot / --spark options")
struct MetricsChartOptionTests {
    @Test("--plot writes SVG or PNG, --mean needs --plot, and the output modes exclude each other")
    func validation() throws {
        #expect(throws: (any Error).self) { try Metrics.parse(["7", "--plot", "loss.jpg"]) }
        #expect(throws: (any Error).self) { try Metrics.parse(["7", "--plot", "loss"]) }
        #expect(try Metrics.parse(["7", "--plot", "loss.PNG"]).plot == "loss.PNG")
        #expect(throws: (any Error).self) { try Metrics.parse(["7", "--mean"]) }
        #expect(throws: (any Error).self) { try Metrics.parse(["7", "--plot", "a.svg", "--spark"]) }
        #expect(throws: (any Error).self) { try Metrics.parse(["7", "--spark", "--csv"]) }
        #expect(throws: (any Error).self) { try Metrics.parse(["7", "--list", "--spark"]) }
        let ok = try Metrics.parse(["7", "--plot", "Loss.SVG", "--mean", "--name", "loss"])
        #expect(ok.plot == "Loss.SVG" && ok.mean && ok.name == "loss")
        #expect(try Metrics.parse(["7", "--spark", "--shard", "1"]).spark)
    }
}

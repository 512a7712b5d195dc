// Metric charts without a plotting library: an SVG line chart (one line per series, or a mean line with a band)
// for `tessera metrics --plot` and the dashboard, and a terminal sparkline for `tessera metrics --spark`.

import Foundation
import TesseraJSON

public struct ChartSeries: Sendable {
    public var label: String
    /// (step, value) points; non-finite values are left out (a gap, not a spike).
    public var points: [(x: Double, y: Double)]

    public init(label: String, points: [(x: Double, y: Double)]) {
        self.label = label
        self.points = points
    }
}

public struct LineChart: Sendable {
    public var title: String
    public var xLabel = "step"
    public var yLabel = ""
    public var series: [ChartSeries]
    /// A shaded band (e.g. min–max across shards) drawn under the lines: lower and upper values at each x.
    public var band: [(x: Double, lower: Double, upper: Double)] = []
    public var width = 720
    public var height = 360

    public init(title: String, series: [ChartSeries]) {
        self.title = title
        self.series = series
    }

    /// The mean over series at each step that at least one series has, with the min–max band: one line for many
    /// shards of a sweep or a sharded run.
    public static func meanWithBand(title: String, of series: [ChartSeries]) -> LineChart {
        var byX: [Double: [Double]] = [:]
        for s in series { for p in s.points where p.y.isFinite { byX[p.x, default: []].append(p.y) } }
        let xs = byX.keys.sorted()
        var mean: [(x: Double, y: Double)] = []
        var band: [(x: Double, lower: Double, upper: Double)] = []
        for x in xs {
            let v = byX[x]!
            mean.append((x, v.reduce(0, +) / Double(v.count)))
            band.append((x, v.min()!, v.max()!))
        }
        var chart = LineChart(title: title, series: [ChartSeries(label: "mean of \(series.count)", points: mean)])
        chart.band = band
        return chart
    }

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    /// "Nice" tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `count` of them.
    public static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard lo.isFinite, hi.isFinite, hi > lo else { return lo.isFinite ? [lo] : [] }
        let raw = (hi - lo) / Double(max(1, count))
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= raw } ?? 10 * power
        var out: [Double] = []
        var t = ceil(lo / step) * step
        while t <= hi + step * 1e-9 {
            out.append(abs(t) < step * 1e-9 ? 0 : t)
            t += step
        }
        return out
    }

    static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        if a >= 1e5 || a < 1e-3 { return String(format: "%.2g", v) }
        var s = String(format: "%.4f", v)
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s
    }

    /// Text for XML and HTML (attribute values included).
    public static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// The chart as a standalone SVG document.
    public func svg() -> String {
        let left = 64.0, right = 16.0, top = 32.0, bottom = 44.0
        let legendRows = series.count > 1 ? min(series.count, 10) : 0
        let w = Double(width), h = Double(height) + Double(legendRows) * 16
        let plotW = w - left - right, plotH = Double(height) - top - bottom
        let finite = series.flatMap { $0.points.filter { $0.x.isFinite && $0.y.isFinite } }
        var xs = finite.map(\.x), ys = finite.map(\.y)
        xs += band.map(\.x)
        ys += band.flatMap { [$0.lower, $0.upper] }.filter(\.isFinite)
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(Int(h))" viewBox="0 0 \(width) \(Int(h))" font-family="sans-serif" font-size="11">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="18" font-size="13" font-weight="bold">\(Self.escape(title))</text>

            """
        guard let x0 = xs.min(), let x1 = xs.max(), let y0 = ys.min(), let y1 = ys.max() else {
            out += "<text x=\"\(left)\" y=\"\(top + plotH / 2)\">no points</text>\n</svg>\n"
            return out
        }
        // A flat series still gets a visible range.
        let (xlo, xhi) = x1 > x0 ? (x0, x1) : (x0 - 0.5, x0 + 0.5)
        let pad = (y1 - y0) * 0.05
        let (ylo, yhi) = y1 > y0 ? (y0 - pad, y1 + pad) : (y0 - max(abs(y0) * 0.1, 0.5), y0 + max(abs(y0) * 0.1, 0.5))
        func px(_ x: Double) -> Double { left + (x - xlo) / (xhi - xlo) * plotW }
        func py(_ y: Double) -> Double { top + (1 - (y - ylo) / (yhi - ylo)) * plotH }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }

        for t in Self.ticks(ylo, yhi) {
            out += "<line x1=\"\(f(left))\" x2=\"\(f(left + plotW))\" y1=\"\(f(py(t)))\" y2=\"\(f(py(t)))\" stroke=\"#e5e5e5\"/>"
            out += "<text x=\"\(f(left - 6))\" y=\"\(f(py(t) + 4))\" text-anchor=\"end\">\(Self.label(t))</text>\n"
        }
        for t in Self.ticks(xlo, xhi) {
            out += "<line x1=\"\(f(px(t)))\" x2=\"\(f(px(t)))\" y1=\"\(f(top + plotH))\" y2=\"\(f(top + plotH + 4))\" stroke=\"#555\"/>"
            out += "<text x=\"\(f(px(t)))\" y=\"\(f(top + plotH + 16))\" text-anchor=\"middle\">\(Self.label(t))</text>\n"
        }
        out += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#555\"/>\n"
        out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(top + plotH + 34))\" text-anchor=\"middle\">\(Self.escape(xLabel))</text>\n"
        if !yLabel.isEmpty {
            out += "<text transform=\"translate(14 \(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">\(Self.escape(yLabel))</text>\n"
        }
        let bandPoints = band.filter { $0.x.isFinite && $0.lower.isFinite && $0.upper.isFinite }
        if bandPoints.count > 1 {
            let upper = bandPoints.map { "\(f(px($0.x))),\(f(py($0.upper)))" }
            let lower = bandPoints.reversed().map { "\(f(px($0.x))),\(f(py($0.lower)))" }
            out += "<polygon class=\"band\" points=\"\((upper + lower).joined(separator: " "))\" fill=\"#1f77b4\" fill-opacity=\"0.18\" stroke=\"none\"/>\n"
        }
        for (i, s) in series.enumerated() {
            let color = Self.palette[i % Self.palette.count]
            // Runs of finite points; a NaN or infinity breaks the line.
            var runs: [[String]] = [[]]
            for p in s.points {
                if p.x.isFinite && p.y.isFinite { runs[runs.count - 1].append("\(f(px(p.x))),\(f(py(p.y)))") } else if !runs[runs.count - 1].isEmpty { runs.append([]) }
            }
            for run in runs where !run.isEmpty {
                if run.count == 1 {
                    let xy = run[0].split(separator: ",")
                    out += "<circle class=\"series\" data-label=\"\(Self.escape(s.label))\" cx=\"\(xy[0])\" cy=\"\(xy[1])\" r=\"2\" fill=\"\(color)\"/>\n"
                } else {
                    out += "<polyline class=\"series\" data-label=\"\(Self.escape(s.label))\" points=\"\(run.joined(separator: " "))\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\"/>\n"
                }
            }
        }
        for (i, s) in series.prefix(legendRows).enumerated() {
            let y = Double(height) + Double(i) * 16 - 4
            out += "<rect x=\"\(f(left))\" y=\"\(f(y - 9))\" width=\"10\" height=\"10\" fill=\"\(Self.palette[i % Self.palette.count])\"/>"
            out += "<text x=\"\(f(left + 16))\" y=\"\(f(y))\">\(Self.escape(s.label))</text>\n"
        }
        if series.count > legendRows && legendRows > 0 {
            out += "<text x=\"\(f(left + 200))\" y=\"\(f(Double(height) - 4))\">(\(series.count - legendRows) more not in the legend)</text>\n"
        }
        out += "</svg>\n"
        return out
    }
}

public enum Sparkline {
    static let bars: [Character] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]

    /// `values` as at most `width` block characters (each the mean of its share of the values), scaled from the
    /// smallest to the largest finite value; a non-finite bucket is a space.
    public static func render(_ values: [Double], width: Int) -> String {
        guard !values.isEmpty, width > 0 else { return "" }
        let n = min(width, values.count)
        var buckets: [Double] = []
        for b in 0..<n {
            let lo = b * values.count / n, hi = (b + 1) * values.count / n
            let part = values[lo..<max(hi, lo + 1)].filter(\.isFinite)
            buckets.append(part.isEmpty ? .nan : part.reduce(0, +) / Double(part.count))
        }
        let finite = buckets.filter(\.isFinite)
        guard let lo = finite.min(), let hi = finite.max() else { return String(repeating: " ", count: n) }
        return String(buckets.map { v -> Character in
            guard v.isFinite else { return " " }
            if hi == lo { return bars[3] }
            return bars[min(7, Int((v - lo) / (hi - lo) * 8))]
        })
    }
}

/// What a shard is, from its slice: its scalar keys as `key=value` (a sweep point's `beta=0.3 seed=1 point=2`, a
/// sampling range's `start=0 end=25000`), `depends_on` left out; empty when it has none. The CLI and the dashboard
/// format the numbers their own way.
public enum ShardSliceLabel {
    public static func text(_ slice: JSONValue?, number: (JSONValue) -> String) -> String {
        var parts: [String] = []
        for (key, value) in slice?.objectValue?.pairs ?? [] where key != "depends_on" {
            switch value {
            case .number: parts.append("\(key)=\(number(value))")
            case .string(let s): parts.append("\(key)=\(s)")
            case .bool(let b): parts.append("\(key)=\(b)")
            default: continue
            }
        }
        return parts.joined(separator: " ")
    }
}

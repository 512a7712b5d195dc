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

    /// Where everything goes, in pixels from the top left: the one layout both `svg()` and `png()` draw.
    public func layout() -> ChartLayout {
        let left = 64.0, right = 16.0, top = 32.0, bottom = 44.0
        let legendRows = series.count > 1 ? min(series.count, 10) : 0
        let w = Double(width), h = Double(height) + Double(legendRows) * 16
        let plotW = w - left - right, plotH = Double(height) - top - bottom
        let finite = series.flatMap { $0.points.filter { $0.x.isFinite && $0.y.isFinite } }
        var xs = finite.map(\.x), ys = finite.map(\.y)
        xs += band.map(\.x)
        ys += band.flatMap { [$0.lower, $0.upper] }.filter(\.isFinite)
        var out = ChartLayout(
            width: width, height: Int(h),
            title: .init(x: left, y: 18, text: title, anchor: .start, isTitle: true))
        guard let x0 = xs.min(), let x1 = xs.max(), let y0 = ys.min(), let y1 = ys.max() else {
            out.message = .init(x: left, y: top + plotH / 2, text: "no points")
            return out
        }
        // A flat series still gets a visible range.
        let (xlo, xhi) = x1 > x0 ? (x0, x1) : (x0 - 0.5, x0 + 0.5)
        let pad = (y1 - y0) * 0.05
        let (ylo, yhi) = y1 > y0 ? (y0 - pad, y1 + pad) : (y0 - max(abs(y0) * 0.1, 0.5), y0 + max(abs(y0) * 0.1, 0.5))
        func px(_ x: Double) -> Double { left + (x - xlo) / (xhi - xlo) * plotW }
        func py(_ y: Double) -> Double { top + (1 - (y - ylo) / (yhi - ylo)) * plotH }

        out.plot = .init(x: left, y: top, width: plotW, height: plotH)
        out.yTicks = Self.ticks(ylo, yhi).map {
            (py($0), ChartLayout.Text(x: left - 6, y: py($0) + 4, text: Self.label($0), anchor: .end))
        }
        out.xTicks = Self.ticks(xlo, xhi).map {
            (px($0), ChartLayout.Text(x: px($0), y: top + plotH + 16, text: Self.label($0), anchor: .middle))
        }
        out.xLabel = .init(x: left + plotW / 2, y: top + plotH + 34, text: xLabel, anchor: .middle)
        if !yLabel.isEmpty { out.yLabel = .init(x: 14, y: top + plotH / 2, text: yLabel, anchor: .middle, isRotated: true) }
        let bandPoints = band.filter { $0.x.isFinite && $0.lower.isFinite && $0.upper.isFinite }
        if bandPoints.count > 1 {
            out.band = bandPoints.map { (px($0.x), py($0.upper)) } + bandPoints.reversed().map { (px($0.x), py($0.lower)) }
        }
        for (i, s) in series.enumerated() {
            // Runs of finite points; a NaN or infinity breaks the line.
            var runs: [[(x: Double, y: Double)]] = [[]]
            for p in s.points {
                if p.x.isFinite && p.y.isFinite { runs[runs.count - 1].append((px(p.x), py(p.y))) } else if !runs[runs.count - 1].isEmpty { runs.append([]) }
            }
            out.lines.append(.init(label: s.label, color: Self.palette[i % Self.palette.count], runs: runs.filter { !$0.isEmpty }))
        }
        for (i, s) in series.prefix(legendRows).enumerated() {
            let y = Double(height) + Double(i) * 16 - 4
            out.legend.append((
                .init(x: left, y: y - 9, width: 10, height: 10), Self.palette[i % Self.palette.count],
                .init(x: left + 16, y: y, text: s.label)))
        }
        if series.count > legendRows && legendRows > 0 {
            out.legendMore = .init(x: left + 200, y: Double(height) - 4, text: "(\(series.count - legendRows) more not in the legend)")
        }
        return out
    }

    /// The chart as a standalone SVG document.
    public func svg() -> String {
        let l = layout()
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        func text(_ t: ChartLayout.Text) -> String {
            let anchor = t.anchor == .start ? "" : " text-anchor=\"\(t.anchor == .middle ? "middle" : "end")\""
            let at = t.isRotated ? "transform=\"translate(\(f(t.x)) \(f(t.y))) rotate(-90)\"" : "x=\"\(f(t.x))\" y=\"\(f(t.y))\""
            return "<text \(at)\(anchor)>\(Self.escape(t.text))</text>"
        }
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(l.width)" height="\(l.height)" viewBox="0 0 \(l.width) \(l.height)" font-family="sans-serif" font-size="11">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(l.title.x)" y="\(Int(l.title.y))" font-size="13" font-weight="bold">\(Self.escape(l.title.text))</text>

            """
        guard let plot = l.plot else {
            if let m = l.message { out += text(m) + "\n" }
            return out + "</svg>\n"
        }
        for (y, label) in l.yTicks {
            out += "<line x1=\"\(f(plot.x))\" x2=\"\(f(plot.x + plot.width))\" y1=\"\(f(y))\" y2=\"\(f(y))\" stroke=\"#e5e5e5\"/>"
            out += text(label) + "\n"
        }
        for (x, label) in l.xTicks {
            out += "<line x1=\"\(f(x))\" x2=\"\(f(x))\" y1=\"\(f(plot.y + plot.height))\" y2=\"\(f(plot.y + plot.height + 4))\" stroke=\"#555\"/>"
            out += text(label) + "\n"
        }
        out += "<rect x=\"\(f(plot.x))\" y=\"\(f(plot.y))\" width=\"\(f(plot.width))\" height=\"\(f(plot.height))\" fill=\"none\" stroke=\"#555\"/>\n"
        if let x = l.xLabel { out += text(x) + "\n" }
        if let y = l.yLabel { out += text(y) + "\n" }
        if !l.band.isEmpty {
            let points = l.band.map { "\(f($0.x)),\(f($0.y))" }.joined(separator: " ")
            out += "<polygon class=\"band\" points=\"\(points)\" fill=\"\(ChartLayout.bandColor)\" fill-opacity=\"\(ChartLayout.bandOpacity)\" stroke=\"none\"/>\n"
        }
        for line in l.lines {
            for run in line.runs {
                if run.count == 1 {
                    out += "<circle class=\"series\" data-label=\"\(Self.escape(line.label))\" cx=\"\(f(run[0].x))\" cy=\"\(f(run[0].y))\" r=\"2\" fill=\"\(line.color)\"/>\n"
                } else {
                    let points = run.map { "\(f($0.x)),\(f($0.y))" }.joined(separator: " ")
                    out += "<polyline class=\"series\" data-label=\"\(Self.escape(line.label))\" points=\"\(points)\" fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"1.5\"/>\n"
                }
            }
        }
        for (swatch, color, label) in l.legend {
            out += "<rect x=\"\(f(swatch.x))\" y=\"\(f(swatch.y))\" width=\"10\" height=\"10\" fill=\"\(color)\"/>"
            out += text(label) + "\n"
        }
        if let more = l.legendMore { out += text(more) + "\n" }
        out += "</svg>\n"
        return out
    }
}

/// A chart laid out in pixels (origin top left, y down): what `LineChart.svg()` writes as SVG elements and
/// `LineChart.png()` rasterizes. Text positions are SVG's: `y` is the baseline, `anchor` says which end of the text
/// `x` is; a rotated text (the y label) reads bottom to top, centred on (x, y).
public struct ChartLayout: Sendable {
    public enum Anchor: Sendable { case start, middle, end }
    public struct Text: Sendable {
        public var x: Double, y: Double
        public var text: String
        public var anchor: Anchor = .start
        /// The title: 13 px bold in the SVG, bold in the PNG.
        public var isTitle = false
        public var isRotated = false
    }
    public struct Rect: Sendable { public var x: Double, y: Double, width: Double, height: Double }
    public struct Line: Sendable {
        public var label: String
        public var color: String
        /// Runs of consecutive finite points; a run of one point is drawn as a dot.
        public var runs: [[(x: Double, y: Double)]]
    }
    /// The band's fill: the first palette colour at this opacity.
    public static let bandColor = "#1f77b4"
    public static let bandOpacity = 0.18

    public var width: Int, height: Int
    public var title: Text
    /// "no points" in place of the plot when there is nothing to draw (then `plot` is nil and the rest empty).
    public var message: Text?
    /// The plot area, framed; y ticks are grid lines across it, x ticks 4 px marks below it.
    public var plot: Rect?
    public var yTicks: [(y: Double, label: Text)] = []
    public var xTicks: [(x: Double, label: Text)] = []
    public var xLabel: Text?
    public var yLabel: Text?
    /// The band as one polygon: the upper edge left to right, then the lower edge right to left.
    public var band: [(x: Double, y: Double)] = []
    public var lines: [Line] = []
    public var legend: [(swatch: Rect, color: String, label: Text)] = []
    public var legendMore: Text?
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

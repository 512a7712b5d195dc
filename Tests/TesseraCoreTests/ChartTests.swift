// The SVG chart and the sparkline: pixel positions worked out by hand from the layout constants (64 px left, 16 right,
// 32 top, 44 bottom on a 720 x 360 canvas; y padded by 5% of its range), nice ticks, gaps at NaN, the mean band.

import Foundation
import TesseraCore
import Testing

@Suite("Charts (metrics --plot / --spark, the dashboard)")
struct ChartTests {
    @Test("Ticks are 1, 2 or 5 times a power of ten, inside the range")
    func ticks() {
        #expect(LineChart.ticks(0, 1) == [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1])
        #expect(LineChart.ticks(3, 97) == [20, 40, 60, 80])
        // 0.6 / 5 = 0.12 per tick: the next nice step is 0.2, so -0.2, 0, 0.2 (and 0 exactly, not -2.8e-17).
        #expect(LineChart.ticks(-0.3, 0.3) == [-0.2, 0, 0.2])
        #expect(LineChart.ticks(5, 5) == [5])
    }

    @Test("A line's points land where the layout puts them")
    func coordinates() {
        let chart = LineChart(title: "t", series: [ChartSeries(label: "a", points: [(0, 0), (10, 10)])])
        let svg = chart.svg()
        // x: 64 + x/10 * 640; y: range [-0.5, 10.5], 32 + (1 - (y + 0.5)/11) * 284.
        // (0, 0) -> (64.0, 303.09...), (10, 10) -> (704.0, 44.909...)
        #expect(svg.contains("points=\"64.0,303.1 704.0,44.9\""))
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"360\""))
        #expect(svg.hasSuffix("</svg>\n"))
    }

    @Test("NaN breaks a line into runs; a lone point is a dot; titles are escaped")
    func gapsAndEscaping() {
        let chart = LineChart(title: "<a&b>", series: [ChartSeries(label: "s\"1", points: [(0, 1), (1, 2), (2, .nan), (3, 1)])])
        let svg = chart.svg()
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 1)
        #expect(svg.components(separatedBy: "<circle").count - 1 == 1)
        #expect(svg.contains("&lt;a&amp;b&gt;") && !svg.contains("<a&b>"))
        #expect(svg.contains("data-label=\"s&quot;1\""))
        #expect(LineChart(title: "empty", series: []).svg().contains("no points"))
    }

    @Test("Mean with band: the mean at each step, the band from min to max")
    func meanBand() {
        let a = ChartSeries(label: "0", points: [(1, 1), (2, 4)])
        let b = ChartSeries(label: "1", points: [(1, 3), (2, 8), (3, 5)])
        let c = LineChart.meanWithBand(title: "m", of: [a, b])
        #expect(c.series.count == 1)
        #expect(c.series[0].points.map(\.x) == [1, 2, 3] && c.series[0].points.map(\.y) == [2, 6, 5])
        #expect(c.band.map(\.lower) == [1, 4, 5] && c.band.map(\.upper) == [3, 8, 5])
        #expect(c.svg().contains("class=\"band\""))
    }

    @Test("Sparkline: eight levels from min to max, buckets averaged, NaN a space")
    func sparkline() {
        #expect(Sparkline.render([1, 2, 3, 4, 5, 6, 7, 8], width: 8) == "▁▂▃▄▅▆▇█")
        // 16 values into 8 buckets: pair means 1.5, 3.5, ..., 15.5 scale the same way.
        #expect(Sparkline.render((1...16).map(Double.init), width: 8) == "▁▂▃▄▅▆▇█")
        #expect(Sparkline.render([2, 2, 2], width: 10) == "▄▄▄")
        #expect(Sparkline.render([0, .nan, 1], width: 3) == "▁ █")
        #expect(Sparkline.render([], width: 5) == "")
    }
}

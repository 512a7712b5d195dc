// `LineChart.png()`: the chart's layout (the same one `svg()` writes) drawn into an RGB image. Grid lines, ticks,
// the frame and legend swatches are crisp pixel rows and columns; series are antialiased 2-px polylines; the band is
// an antialiased polygon (nonzero winding, 4 sub-scanlines a row, exact coverage along each span); text uses the
// 5 x 7 BitmapFont (the title bold, the y label turned to read bottom to top).
//
// Pixel (i, j) covers [i, i+1) x [j, j+1). A 1-px SVG stroke at coordinate c covers [c - 0.5, c + 0.5], so its crisp
// version is the pixel nearest to that interval's centre, `round(c - 0.5)`.

extension LineChart {
    /// The chart as a PNG file (8-bit RGB), laid out exactly as `svg()` lays it out.
    public func png() -> [UInt8] { PNG.encode(raster()) }

    /// The chart drawn into an image of `width` x the layout's height (the legend rows included).
    public func raster() -> RGBImage { ChartRaster.draw(layout()) }
}

enum ChartRaster {
    struct Color: Equatable {
        var r: Double, g: Double, b: Double

        /// `#rrggbb`.
        init(hex: String) {
            let v = Int(hex.dropFirst(), radix: 16) ?? 0
            self.init(r: Double(v >> 16 & 0xFF), g: Double(v >> 8 & 0xFF), b: Double(v & 0xFF))
        }

        init(r: Double, g: Double, b: Double) {
            self.r = r
            self.g = g
            self.b = b
        }

        static let black = Color(r: 0, g: 0, b: 0)
        static let grid = Color(hex: "#e5e5e5")
        static let axis = Color(hex: "#555555")
    }

    /// The half width of a series' line (2 px wide, where the SVG's is 1.5: a bitmap needs the extra half pixel).
    static let lineHalfWidth = 1.0
    static let dotRadius = 2.0
    static let subScanlines = 4

    static func crisp(_ c: Double) -> Int { Int((c - 0.5).rounded()) }

    static func draw(_ l: ChartLayout) -> RGBImage {
        var canvas = Canvas(image: RGBImage(width: l.width, height: l.height))
        canvas.text(l.title, .black)
        guard let plot = l.plot else {
            if let m = l.message { canvas.text(m, .black) }
            return canvas.image
        }
        let left = crisp(plot.x), right = crisp(plot.x + plot.width)
        let top = crisp(plot.y), bottom = crisp(plot.y + plot.height)
        for (y, label) in l.yTicks {
            canvas.fill(x0: left, y0: crisp(y), x1: right + 1, y1: crisp(y) + 1, .grid)
            canvas.text(label, .black)
        }
        for (x, label) in l.xTicks {
            canvas.fill(x0: crisp(x), y0: bottom, x1: crisp(x) + 1, y1: crisp(plot.y + plot.height + 4) + 1, .axis)
            canvas.text(label, .black)
        }
        canvas.fill(x0: left, y0: top, x1: right + 1, y1: top + 1, .axis)
        canvas.fill(x0: left, y0: bottom, x1: right + 1, y1: bottom + 1, .axis)
        canvas.fill(x0: left, y0: top, x1: left + 1, y1: bottom + 1, .axis)
        canvas.fill(x0: right, y0: top, x1: right + 1, y1: bottom + 1, .axis)
        if let x = l.xLabel { canvas.text(x, .black) }
        if let y = l.yLabel { canvas.text(y, .black) }
        if !l.band.isEmpty { canvas.polygon(l.band, Color(hex: ChartLayout.bandColor), alpha: ChartLayout.bandOpacity) }
        for line in l.lines { canvas.line(line.runs, Color(hex: line.color)) }
        for (swatch, color, label) in l.legend {
            let x0 = Int(swatch.x.rounded()), y0 = Int(swatch.y.rounded())
            canvas.fill(
                x0: x0, y0: y0, x1: Int((swatch.x + swatch.width).rounded()), y1: Int((swatch.y + swatch.height).rounded()),
                Color(hex: color))
            canvas.text(label, .black)
        }
        if let more = l.legendMore { canvas.text(more, .black) }
        return canvas.image
    }

    struct Canvas {
        var image: RGBImage
        /// A line's coverage (0...1) per pixel, the maximum over its segments, so that joints are not drawn twice.
        var coverage: [Float]

        init(image: RGBImage) {
            self.image = image
            coverage = [Float](repeating: 0, count: image.width * image.height)
        }

        var width: Int { image.width }
        var height: Int { image.height }

        mutating func blend(_ x: Int, _ y: Int, _ c: Color, _ alpha: Double) {
            guard x >= 0, y >= 0, x < width, y < height, alpha > 0 else { return }
            let a = min(alpha, 1), i = (y * width + x) * 3
            func mix(_ old: UInt8, _ new: Double) -> UInt8 { UInt8((Double(old) * (1 - a) + new * a).rounded()) }
            image.pixels[i] = mix(image.pixels[i], c.r)
            image.pixels[i + 1] = mix(image.pixels[i + 1], c.g)
            image.pixels[i + 2] = mix(image.pixels[i + 2], c.b)
        }

        /// Pixels x0..<x1 by y0..<y1, opaque.
        mutating func fill(x0: Int, y0: Int, x1: Int, y1: Int, _ c: Color) {
            let lx = max(0, x0), hx = min(width, x1), ly = max(0, y0), hy = min(height, y1)
            guard lx < hx, ly < hy else { return }
            for y in ly..<hy {
                for x in lx..<hx { blend(x, y, c, 1) }
            }
        }

        mutating func text(_ t: ChartLayout.Text, _ c: Color) {
            let chars = Array(t.text)
            let bold = t.isTitle ? 1 : 0
            let w = Double(chars.count * BitmapFont.advance - 1 + bold)
            let shift = t.anchor == .start ? 0 : t.anchor == .middle ? -w / 2 : -w
            let baseline = Int(t.y.rounded())
            for (k, ch) in chars.enumerated() {
                for (gy, bits) in BitmapFont.glyph(ch).enumerated() {
                    for gx in 0..<BitmapFont.glyphWidth where bits & (1 << (BitmapFont.glyphWidth - 1 - gx)) != 0 {
                        let u = k * BitmapFont.advance + gx  // along the text
                        let v = gy - BitmapFont.ascent  // down from the baseline
                        for b in 0...bold {
                            if t.isRotated {
                                // rotate(-90) about (x, y): along the text is up the image, down is right.
                                blend(Int(t.x.rounded()) + v, Int((t.y - shift).rounded()) - 1 - u - b, c, 1)
                            } else {
                                blend(Int((t.x + shift).rounded()) + u + b, baseline + v, c, 1)
                            }
                        }
                    }
                }
            }
        }

        /// A filled polygon (nonzero winding), blended at `alpha` where it covers a pixel fully.
        mutating func polygon(_ points: [(x: Double, y: Double)], _ c: Color, alpha: Double) {
            struct Edge { var x0: Double, y0: Double, x1: Double, y1: Double, winding: Int }
            var edges: [Edge] = []
            for i in points.indices {
                let a = points[i], b = points[(i + 1) % points.count]
                if a.y == b.y { continue }
                edges.append(a.y < b.y ? Edge(x0: a.x, y0: a.y, x1: b.x, y1: b.y, winding: 1) : Edge(x0: b.x, y0: b.y, x1: a.x, y1: a.y, winding: -1))
            }
            edges.sort { $0.y0 < $1.y0 }
            guard let yMin = edges.first?.y0, let yMax = edges.map(\.y1).max() else { return }
            let firstRow = max(0, Int(yMin.rounded(.down))), lastRow = min(height - 1, Int(yMax.rounded(.up)))
            guard firstRow <= lastRow else { return }
            var next = 0
            var active: [Edge] = []
            var row = [Double](repeating: 0, count: width)
            var crossings: [(x: Double, winding: Int)] = []
            let weight = 1 / Double(subScanlines)
            for y in firstRow...lastRow {
                var lo = width, hi = -1
                for s in 0..<subScanlines {
                    let sy = Double(y) + (Double(s) + 0.5) * weight
                    while next < edges.count && edges[next].y0 <= sy {
                        active.append(edges[next])
                        next += 1
                    }
                    active.removeAll { $0.y1 <= sy }
                    crossings.removeAll(keepingCapacity: true)
                    for e in active where e.y0 <= sy {
                        crossings.append((e.x0 + (sy - e.y0) * (e.x1 - e.x0) / (e.y1 - e.y0), e.winding))
                    }
                    crossings.sort { $0.x < $1.x }
                    var winding = 0
                    for (i, cr) in crossings.enumerated() {
                        winding += cr.winding
                        if winding != 0, i + 1 < crossings.count {
                            let xa = max(0, cr.x), xb = min(Double(width), crossings[i + 1].x)
                            guard xb > xa else { continue }
                            let ia = Int(xa), ib = Int(xb)
                            lo = min(lo, ia)
                            hi = max(hi, min(ib, width - 1))
                            if ia == ib {
                                row[ia] += (xb - xa) * weight
                            } else {
                                row[ia] += (Double(ia + 1) - xa) * weight
                                for x in (ia + 1)..<ib { row[x] += weight }
                                if ib < width { row[ib] += (xb - Double(ib)) * weight }
                            }
                        }
                    }
                }
                if hi >= lo {
                    for x in lo...hi {
                        blend(x, y, c, alpha * min(1, row[x]))
                        row[x] = 0
                    }
                }
            }
        }

        /// A run with more points than pixel columns, cut down to at most four points a column: the first, the
        /// lowest, the highest and the last, in their order (M4 aggregation, Jugel et al., VLDB 2014). The polyline
        /// through them covers the same pixels in each column and joins the next column from the same point, so a
        /// dense series draws as it would in full, at a fraction of the segments.
        static func decimated(_ run: [(x: Double, y: Double)]) -> [(x: Double, y: Double)] {
            guard run.count > 64 else { return run }
            var out: [(x: Double, y: Double)] = []
            out.reserveCapacity(min(run.count, 4 * 1024))
            var start = 0
            while start < run.count {
                let column = run[start].x.rounded(.down)
                var end = start + 1, lo = start, hi = start
                while end < run.count && run[end].x.rounded(.down) == column {
                    if run[end].y < run[lo].y { lo = end }
                    if run[end].y > run[hi].y { hi = end }
                    end += 1
                }
                var last = -1
                for i in [start, min(lo, hi), max(lo, hi), end - 1] where i > last {
                    out.append(run[i])
                    last = i
                }
                start = end
            }
            return out
        }

        /// One series: its runs as antialiased polylines, a run of one point as a dot. Each pixel near a segment
        /// gets coverage `half width + 0.5 - distance` from its centre to the segment (clamped to 0...1); the
        /// line is blended once, at each pixel's largest coverage.
        mutating func line(_ runs: [[(x: Double, y: Double)]], _ c: Color) {
            let w = width, h = height
            var x0 = w, y0 = h, x1 = -1, y1 = -1
            coverage.withUnsafeMutableBufferPointer { cov in
                // The pixels that a shape reaching `reach` past the box (ax, ay)-(bx, by) can touch, or nil.
                func box(_ ax: Double, _ ay: Double, _ bx: Double, _ by: Double, _ reach: Double) -> (Int, Int, Int, Int)? {
                    let lx = max(0, Int((min(ax, bx) - reach).rounded(.down))), hx = min(w - 1, Int((max(ax, bx) + reach).rounded(.up)))
                    let ly = max(0, Int((min(ay, by) - reach).rounded(.down))), hy = min(h - 1, Int((max(ay, by) + reach).rounded(.up)))
                    guard lx <= hx, ly <= hy else { return nil }
                    x0 = min(x0, lx); x1 = max(x1, hx); y0 = min(y0, ly); y1 = max(y1, hy)
                    return (lx, hx, ly, hy)
                }
                let reach = lineHalfWidth + 0.5
                for run in runs.map(Self.decimated) {
                    if run.count == 1 {
                        let p = run[0], r = dotRadius + 0.5
                        guard let (lx, hx, ly, hy) = box(p.x, p.y, p.x, p.y, r) else { continue }
                        for y in ly...hy {
                            for x in lx...hx {
                                let ex = Double(x) + 0.5 - p.x, ey = Double(y) + 0.5 - p.y
                                let v = Float(max(0, min(1, r - (ex * ex + ey * ey).squareRoot())))
                                if v > cov[y * w + x] { cov[y * w + x] = v }
                            }
                        }
                        continue
                    }
                    for i in 1..<run.count {
                        let a = run[i - 1], b = run[i]
                        let dx = b.x - a.x, dy = b.y - a.y, len2 = dx * dx + dy * dy
                        let inv = len2 > 0 ? 1 / len2 : 0
                        guard let (lx, hx, ly, hy) = box(a.x, a.y, b.x, b.y, reach) else { continue }
                        for y in ly...hy {
                            let py = Double(y) + 0.5 - a.y
                            let row = y * w
                            // Only the columns near where the segment crosses this row's band [py - reach, py + reach].
                            var rx = lx, rhx = hx
                            if dy != 0 {
                                let ta = max(0, min(1, (py - reach) / dy)), tb = max(0, min(1, (py + reach) / dy))
                                let xa = a.x + min(ta, tb) * dx, xb = a.x + max(ta, tb) * dx
                                rx = max(lx, Int((min(xa, xb) - reach).rounded(.down)))
                                rhx = min(hx, Int((max(xa, xb) + reach).rounded(.up)))
                                if rx > rhx { continue }
                            }
                            for x in rx...rhx {
                                let px = Double(x) + 0.5 - a.x
                                let t = max(0, min(1, (px * dx + py * dy) * inv))
                                let ex = px - t * dx, ey = py - t * dy
                                let d2 = ex * ex + ey * ey
                                if d2 >= reach * reach { continue }
                                let v = Float(min(1, reach - d2.squareRoot()))
                                if v > cov[row + x] { cov[row + x] = v }
                            }
                        }
                    }
                }
            }
            guard x1 >= x0, y1 >= y0 else { return }
            for y in y0...y1 {
                for x in x0...x1 where coverage[y * width + x] > 0 {
                    blend(x, y, c, Double(coverage[y * width + x]))
                    coverage[y * width + x] = 0
                }
            }
        }
    }
}

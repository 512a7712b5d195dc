// Sweeps over any key of any algorithm's spec (docs/jobspec.md "Sweeps", `tessera submit --sweep`).
//
// A spec's top-level `sweep:` maps key paths (`seed`, `params.eta`, `params.target.scale`) to lists of values. Every
// combination is a *point*; the job runs the algorithm once per point, with the point's values set in the spec, as
// if each point were a job of its own: each point plans its shards (`shards:` is per point), and each of its shards
// runs with the point's spec and its index within the point, so a point's shards compute exactly what the same
// spec without the sweep computes. The merged result is a table, one row per point: the point's values and the
// scalar figures of that point's own merged result; with a swept `seed`, also each figure's mean and 95% interval
// over the seeds of every combination of the other keys (`across_seeds`).
//
// This is a wrapper around the algorithm (`SweptAlgorithm`), chosen by `AlgorithmCatalogue.resolve` and `prepared`
// whenever a spec has a sweep, so the coordinator, the worker and the algorithms know nothing of it.
//
// Order: the first key varies slowest. Point p's value of key k is values_k[(p / stride_k) % count_k], with stride_k
// the product of the counts of the keys after k.

import Foundation

public struct SweepAxis: Sendable, Hashable {
    /// The key path the values go to: `seed` or `params.…` (`params.sweep.beta[1]` style indices allowed).
    public var path: String
    /// The values, in order (an integer range `A..B` is expanded).
    public var values: [JSONValue]
    /// How the spec wrote them (a list, or the range text), kept for the canonical JSON.
    public var notation: JSONValue

    public init(path: String, values: [JSONValue], notation: JSONValue) {
        self.path = path
        self.values = values
        self.notation = notation
    }

    /// The most points (and values on one key) a sweep may have: each point is at least one shard, and a job has at
    /// most 100,000 shards.
    public static let maxPoints = 100_000

    /// Parses one key's values: a list, or an integer range "A..B" (both ends included). `error` makes a located
    /// error from a message.
    public static func parse(path: String, _ value: JSONValue, error: (String) -> SpecError) throws -> SweepAxis {
        guard path == "seed" || path.hasPrefix("params.") && path.count > "params.".count else {
            throw error("sweep: '\(path)' cannot be swept; sweep `seed` or a key under `params.` (params.eta, params.sweep.beta)")
        }
        let values: [JSONValue]
        switch value {
        case .array(let list):
            values = list
        case .string(let s):
            guard let r = integerRange(s) else {
                throw error("sweep.\(path) must be a list of values or an integer range like 1..8, not \"\(s)\"")
            }
            guard r.count <= maxPoints else {
                throw error("sweep.\(path): the range \(s) has \(r.count) values; at most \(maxPoints)")
            }
            values = r.map { .int($0) }
        case .number:
            values = [value]
        default:
            throw error("sweep.\(path) must be a list of values or an integer range like 1..8")
        }
        guard !values.isEmpty else { throw error("sweep.\(path) has no values") }
        guard values.count <= maxPoints else {
            throw error("sweep.\(path) has \(values.count) values; at most \(maxPoints)")
        }
        return SweepAxis(path: path, values: values, notation: value)
    }

    /// "A..B" with integers A <= B (either may be negative).
    static func integerRange(_ s: String) -> ClosedRange<Int>? {
        let t = s.trimmingCharacters(in: .whitespaces)
        guard let dots = t.range(of: ".."), dots.lowerBound != t.startIndex,
            let a = Int(t[..<dots.lowerBound].trimmingCharacters(in: .whitespaces)),
            let b = Int(t[dots.upperBound...].trimmingCharacters(in: .whitespaces)), a <= b
        else { return nil }
        return a...b
    }

    /// The values of `tessera submit --sweep PATH=VALUES`: `v1,v2,…` (each a YAML scalar), `A..B`, or a YAML flow
    /// list `[v1, v2]`.
    public static func parseOption(_ text: String, file: String) throws -> (path: String, value: JSONValue) {
        func fail(_ m: String) -> SpecError { SpecError(file: file, line: nil, path: "sweep", message: "--sweep \(text): \(m)") }
        guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
            throw fail("expected PATH=VALUES, e.g. params.eta=0,0.5,1 or seed=1..8")
        }
        let path = String(text[..<eq]).trimmingCharacters(in: .whitespaces)
        let rest = String(text[text.index(after: eq)...]).trimmingCharacters(in: .whitespaces)
        guard !rest.isEmpty else { throw fail("no values") }
        if integerRange(rest) != nil { return (path, .string(rest)) }
        if rest.hasPrefix("[") {
            do { return (path, try SpecYAML.load(rest, file: "--sweep \(path)").0) } catch let e as SpecError {
                throw fail("the list is not YAML: \(e.message)")
            }
        }
        var values: [JSONValue] = []
        for piece in rest.split(separator: ",", omittingEmptySubsequences: false) {
            let p = piece.trimmingCharacters(in: .whitespaces)
            guard !p.isEmpty else { throw fail("an empty value between commas") }
            do { values.append(try SpecYAML.load(p, file: "--sweep \(path)").0) } catch let e as SpecError {
                throw fail("'\(p)' is not a YAML value: \(e.message)")
            }
        }
        return (path, .array(values))
    }
}

/// A spec's sweep: its keys and how point indices map to values.
public struct Sweep: Sendable, Hashable {
    public var axes: [SweepAxis]

    public init(axes: [SweepAxis]) { self.axes = axes }

    public var isEmpty: Bool { axes.isEmpty }

    /// The number of points (the product of the value counts), or nil past `SweepAxis.maxPoints`.
    public var pointCount: Int? {
        var n = 1
        for a in axes {
            let (m, overflow) = n.multipliedReportingOverflow(by: a.values.count)
            guard !overflow, m <= SweepAxis.maxPoints else { return nil }
            n = m
        }
        return n
    }

    /// Point `p`'s value of each key, in key order.
    public func values(ofPoint p: Int) -> [JSONValue] {
        var rest = p
        var out = [JSONValue](repeating: .null, count: axes.count)
        for k in axes.indices.reversed() {
            let n = axes[k].values.count
            out[k] = axes[k].values[rest % n]
            rest /= n
        }
        return out
    }

    /// `params.eta=0.5 seed=3`, for messages.
    public func label(ofPoint p: Int) -> String {
        zip(axes, values(ofPoint: p)).map { "\($0.path)=\($1.render())" }.joined(separator: " ")
    }

    /// The canonical JSON: a list `[{"key": path, "values": notation}, …]` in key order. Not the mapping a spec
    /// writes: the stored spec is JSONB, which orders an object's keys by length, and the order of the keys decides
    /// which values point p has.
    public var json: JSONValue {
        .array(axes.map { .object(["key": .string($0.path), "values": $0.notation]) })
    }
}

extension JobSpec {
    /// The spec of sweep point `p`: this spec without its sweep, the point's values set at their paths. Errors in it
    /// point at the sweep's keys (their lines in the file) and name the point.
    public func pointSpec(_ p: Int) throws -> JobSpec { try pointSpec(p, base: unsweptJSON) }

    /// The canonical JSON without the sweep (what `pointSpec(_:base:)` starts from; build it once for many points).
    public var unsweptJSON: JSONValue {
        guard case .object(var top) = json else { fatalError("a spec's JSON is an object") }
        top["sweep"] = nil
        return .object(top)
    }

    public func pointSpec(_ p: Int, base: JSONValue) throws -> JobSpec {
        var value = base
        var src = source
        for (axis, v) in zip(sweep.axes, sweep.values(ofPoint: p)) {
            value = try SpecOverride.set(
                value, path: try SpecOverride.segments(axis.path, file: source.file), to: v, file: source.file,
                whole: axis.path)
            // An error about the swept key (or under it) is at the sweep's line, not the base value's.
            let line = source.lines["sweep.\(axis.path)"] ?? source.lines["sweep"]
            for key in src.lines.keys where key == axis.path || key.hasPrefix(axis.path + ".") || key.hasPrefix(axis.path + "[") {
                src.lines[key] = nil
            }
            if let line { src.lines[axis.path] = line }
            if let option = source.optionNames["sweep.\(axis.path)"] {
                src.overridden.append(axis.path)
                src.optionNames[axis.path] = option
            }
        }
        do {
            return try JobSpec.fromJSON(value, source: src)
        } catch let e as SpecError {
            throw SpecError(
                file: e.file, line: e.line, column: e.column, path: e.path,
                message: "sweep point \(p) (\(sweep.label(ofPoint: p))): \(e.message)")
        }
    }
}

/// An algorithm run once per sweep point (see the file's header). Slice: `{"point": p, "index": k, "shard":
/// inner slice, PATH: value…}` (`index`, the shard's index within its point, only when a point has more than one
/// shard; the swept values are there for labels). Summary: `{"point": p, "index": k, "of": n, "summary": inner}`.
public struct SweptAlgorithm: Algorithm {
    public let inner: any Algorithm

    public init(_ inner: any Algorithm) { self.inner = inner }

    public var kind: JobKind { inner.kind }
    public var name: String { inner.name }
    public var summary: String { inner.summary }

    /// The points, checked: at least one key, at most `SweepAxis.maxPoints` points.
    static func points(_ spec: JobSpec) throws -> Int {
        guard let n = spec.sweep.pointCount else {
            let counts = spec.sweep.axes.map { "\($0.values.count)" }.joined(separator: " × ")
            throw spec.source.error("sweep", "the sweep has more than \(SweepAxis.maxPoints) points (\(counts))")
        }
        return n
    }

    public func plan(_ spec: JobSpec) throws -> [ShardSlice] {
        let n = try Self.points(spec)
        var out: [ShardSlice] = []
        out.reserveCapacity(n)
        let unswept = spec.unsweptJSON
        for p in 0..<n {
            let ps = try spec.pointSpec(p, base: unswept)
            let slices: [ShardSlice]
            do { slices = try inner.plan(ps) } catch let e as SpecError {
                throw SpecError(
                    file: e.file, line: e.line, column: e.column, path: e.path,
                    message: "sweep point \(p) (\(spec.sweep.label(ofPoint: p))): \(e.message)")
            }
            guard !slices.isEmpty else { throw spec.source.error("sweep", "sweep point \(p) planned no shards") }
            let base = out.count
            let values = spec.sweep.values(ofPoint: p)
            for (k, s) in slices.enumerated() {
                if let problem = s.planError(index: k) {
                    throw spec.source.error("sweep", "sweep point \(p): \(inner.kind.rawValue)/\(inner.name) planned an invalid shard: \(problem)")
                }
                var o: JSONObject = ["point": .int(p)]
                if slices.count > 1 { o["index"] = .int(k) }
                for (axis, v) in zip(spec.sweep.axes, values) { o[axis.path] = v }
                o["shard"] = s.slice
                out.append(ShardSlice(slice: .object(o), totalSteps: s.totalSteps, dependsOn: s.dependsOn.map { $0 + base }))
                guard out.count <= SweepAxis.maxPoints else {
                    throw spec.source.error(
                        "sweep", "the sweep plans more than \(SweepAxis.maxPoints) shards (point \(p) of \(n), \(slices.count) shards each)")
                }
            }
        }
        return out
    }

    public func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput {
        try SweptPrepared(inner: inner, spec: task.spec).run(task, sink: sink)
    }

    public func prepare(_ spec: JobSpec) throws -> any PreparedAlgorithm {
        _ = try Self.points(spec)
        return SweptPrepared(inner: inner, spec: spec)
    }

    public func makeReducer(_ spec: JobSpec) throws -> any ShardReducer {
        SweepReducer(inner: inner, spec: spec, points: try Self.points(spec))
    }

    /// The base spec's inputs, and every point's when a swept key is under `params.model` (where job references live).
    public func jobInputs(_ spec: JobSpec) throws -> [JobInput] {
        guard spec.sweep.axes.contains(where: { $0.path.hasPrefix("params.model") }) else {
            var base = spec
            base.sweep = Sweep(axes: [])
            return try inner.jobInputs(base)
        }
        var all: [JobInput] = []
        for p in 0..<(try Self.points(spec)) {
            for i in try inner.jobInputs(try spec.pointSpec(p)) where !all.contains(i) { all.append(i) }
        }
        return all
    }
}

/// A swept slice, decoded.
struct SweptSlice {
    var point: Int
    var index: Int
    var shard: JSONValue
    /// The swept values, by path.
    var values: JSONObject

    init(_ slice: JSONValue) throws {
        guard let o = slice.objectValue, let p = o["point"]?.intValue, p >= 0, let shard = o["shard"] else {
            throw ShardError("slice: not a sweep point's slice (point, shard): \(slice.render())", permanent: true)
        }
        let k = o["index"]?.intValue ?? 0
        guard k >= 0 else { throw ShardError("slice: index \(k) is negative", permanent: true) }
        point = p
        index = k
        self.shard = shard
        values = o
    }
}

/// A swept summary, decoded.
struct SweptSummary {
    var point: Int
    var index: Int
    var of: Int
    var summary: JSONValue

    init(_ summary: JSONValue, what: String) throws {
        guard let o = summary.objectValue, let p = o["point"]?.intValue, let k = o["index"]?.intValue,
            let n = o["of"]?.intValue, let inner = o["summary"], p >= 0, n >= 1, (0..<n).contains(k)
        else { throw ShardError("\(what) is not a sweep point's summary (point, index, of, summary): \(summary.render())") }
        point = p
        index = k
        of = n
        self.summary = inner
    }

    static func json(point: Int, index: Int, of n: Int, summary: JSONValue) -> JSONValue {
        .object(["point": .int(point), "index": .int(index), "of": .int(n), "summary": summary])
    }
}

/// Runs one shard of a point: the inner algorithm, prepared for the point's spec, sees the task as the same spec's
/// unswept job would give it (its shard index within the point; its inputs' indices and summaries likewise).
struct SweptPrepared: PreparedAlgorithm {
    let inner: any Algorithm
    let spec: JobSpec

    func run(_ task: ShardTask, sink: any ShardSink) throws -> ShardOutput {
        let slice = try SweptSlice(task.slice)
        let ps: JobSpec
        do { ps = try spec.pointSpec(slice.point) } catch let e as SpecError { throw ShardError(e.description, permanent: true) }
        // The slice names the point's values as planned; they must be the ones the point index gives here.
        for (axis, v) in zip(spec.sweep.axes, spec.sweep.values(ofPoint: slice.point)) where slice.values[axis.path] != v {
            throw ShardError(
                "slice: sweep point \(slice.point) has \(axis.path)=\(v.render()), but the slice says \(slice.values[axis.path]?.render() ?? "nothing")",
                permanent: true)
        }
        // The point's shard count, for the summary (the reducer groups a point's shards by it).
        let count = try inner.plan(ps).count
        guard slice.index < count else {
            throw ShardError("slice: index \(slice.index) but sweep point \(slice.point) has \(count) shards", permanent: true)
        }
        let base = task.shardIndex - slice.index
        var t = task
        t.spec = ps
        t.shardIndex = slice.index
        t.slice = slice.shard
        t.inputs = try task.inputs.map { input in
            let s = try SweptSummary(input.summary, what: "the summary of input shard \(input.shardIndex)")
            return ShardInput(shardIndex: input.shardIndex - base, summary: s.summary, result: input.result)
        }
        let output = try inner.prepare(ps).run(t, sink: sink)
        return ShardOutput(
            summary: SweptSummary.json(point: slice.point, index: slice.index, of: count, summary: output.summary),
            result: output.result)
    }
}

/// Feeds each point's shards to the inner algorithm's reducer for that point's spec; when a point's last shard is
/// in, its result becomes a row. Holds one point's reducer and the table.
///
/// Result: `{"algorithm", "points", "shards_per_point" (when every point has the same count), "swept": [paths],
/// "columns": ["point", paths…, figures…], "rows": [[…], …]}`. The figures are the point results' numbers: top-level
/// numbers by key, numbers of nested objects as `a.b`, lists of at most 8 numbers as `a[i]`; booleans as 0/1; at
/// most `maxFigures` of them, in first-seen order; a point without a figure has null there.
struct SweepReducer: ShardReducer {
    static let maxFigures = 64

    let inner: any Algorithm
    let spec: JobSpec
    let points: Int
    private let unswept: JSONValue
    private var current: (point: Int, next: Int, of: Int, reducer: any ShardReducer)?
    private var done = 0
    private var figureIndex: [String: Int] = [:]
    private var figureNames: [String] = []
    private var rows: [[JSONValue]] = []
    private var perPoint: Set<Int> = []

    init(inner: any Algorithm, spec: JobSpec, points: Int) {
        self.inner = inner
        self.spec = spec
        self.points = points
        unswept = spec.unsweptJSON
    }

    mutating func add(_ output: ShardOutput) throws {
        let s = try SweptSummary(output.summary, what: "a shard's summary")
        if current == nil {
            guard s.point == done, s.index == 0 else {
                throw ShardError("expected sweep point \(done)'s first shard, got point \(s.point) shard \(s.index)")
            }
            let ps = try spec.pointSpec(s.point, base: unswept)
            current = (s.point, 0, s.of, try inner.makeReducer(ps))
        }
        guard var c = current, s.point == c.point, s.index == c.next, s.of == c.of else {
            throw ShardError("sweep point \(current!.point): expected shard \(current!.next) of \(current!.of), got point \(s.point) shard \(s.index) of \(s.of)")
        }
        try c.reducer.add(ShardOutput(summary: s.summary, result: output.result))
        c.next += 1
        if c.next == c.of {
            try addRow(point: c.point, result: try c.reducer.finish())
            perPoint.insert(c.of)
            current = nil
            done += 1
        } else {
            current = c
        }
    }

    private mutating func addRow(point p: Int, result: JSONValue) throws {
        var figures: [(String, Double)] = []
        Self.figures(of: result, prefix: "", into: &figures)
        var row: [JSONValue] = [.int(p)] + spec.sweep.values(ofPoint: p)
        var values = [JSONValue](repeating: .null, count: figureNames.count)
        for (name, v) in figures {
            if let i = figureIndex[name] {
                values[i] = .number(v)
            } else if figureNames.count < Self.maxFigures {
                figureIndex[name] = figureNames.count
                figureNames.append(name)
                values.append(.number(v))
            }
        }
        row += values
        rows.append(row)
    }

    /// The numbers of a point's result, named by path (see the type's comment).
    static func figures(of value: JSONValue, prefix: String, into out: inout [(String, Double)]) {
        guard case .object(let o) = value else { return }
        for (k, v) in o.pairs {
            let name = prefix.isEmpty ? k : "\(prefix).\(k)"
            switch v {
            case .number(let n) where n.value.isFinite: out.append((name, n.value))
            case .bool(let b): out.append((name, b ? 1 : 0))
            case .object: if prefix.isEmpty { figures(of: v, prefix: name, into: &out) }
            case .array(let items) where items.count <= 8 && items.allSatisfy({ $0.doubleValue?.isFinite == true }):
                for (i, x) in items.enumerated() { out.append(("\(name)[\(i)]", x.doubleValue!)) }
            default: continue
            }
        }
    }

    func finish() throws -> JSONValue {
        guard current == nil, done == points else {
            throw ShardError("the sweep has \(points) points; \(done) are complete")
        }
        let width = 1 + spec.sweep.axes.count + figureNames.count
        var o: JSONObject = [
            "algorithm": .string(inner.name),
            "points": .int(points),
        ]
        if perPoint.count == 1, let k = perPoint.first { o["shards_per_point"] = .int(k) }
        o["swept"] = .array(spec.sweep.axes.map { .string($0.path) })
        o["columns"] = .array((["point"] + spec.sweep.axes.map(\.path) + figureNames).map { .string($0) })
        o["rows"] = .array(rows.map { r in .array(r + [JSONValue](repeating: .null, count: width - r.count)) })
        if let seeds = acrossSeeds() { o["across_seeds"] = seeds }
        return .object(o)
    }

    /// With a swept `seed` of two or more values: the points grouped by their other swept values (in point order),
    /// and each figure's mean and Student-t 95% interval over the group's seeds (`MeanInterval`), as
    /// `{"by": [paths], "columns": [paths…, "seeds", figures…], "rows": [[values…, n, {"mean", "std", "n", "ci95"}…]]}`.
    /// A figure a point lacks is left out of its group's statistics; a group without it has null there.
    func acrossSeeds() -> JSONValue? {
        let axes = spec.sweep.axes
        guard let seedAxis = axes.firstIndex(where: { $0.path == "seed" }), axes[seedAxis].values.count >= 2 else {
            return nil
        }
        let others = axes.indices.filter { $0 != seedAxis }
        var groups: [[JSONValue]: [[JSONValue]]] = [:]
        var order: [[JSONValue]] = []
        for row in rows {
            let key = others.map { row[1 + $0] }
            if groups[key] == nil { order.append(key) }
            groups[key, default: []].append(row)
        }
        let out: [JSONValue] = order.map { key in
            let members = groups[key]!
            let stats: [JSONValue] = figureNames.indices.map { f in
                let column = 1 + axes.count + f
                let values = members.compactMap { column < $0.count ? $0[column].doubleValue : nil }
                return values.isEmpty ? .null : MeanInterval.json(values)
            }
            return .array(key + [.int(members.count)] + stats)
        }
        let by = others.map { JSONValue.string(axes[$0].path) }
        return .object([
            "by": .array(by),
            "columns": .array(by + [.string("seeds")] + figureNames.map { .string($0) }),
            "rows": .array(out),
        ])
    }
}

// The job spec: the YAML (or JSON) a researcher submits (ARCHITECTURE.md §Job spec, docs/jobspec.md).
//
// Parsing keeps the line of every key, so that any validation error, including an algorithm's own parameter checks,
// is reported as `file:line: message`. The stored form is canonical JSON (`JobSpec.json`), from which workers and the
// coordinator rebuild the same `JobSpec`; errors found then point at the stored spec's key path instead of a line.

import Foundation
import Yams

public enum JobKind: String, Sendable, CaseIterable, Codable {
    case sampling, rl, preference
}

/// A validation error located in the spec's source.
public struct SpecError: Error, Sendable, CustomStringConvertible, Equatable {
    public var file: String
    public var line: Int?
    /// 1-based; set when the error is about a place rather than a key (a YAML anchor or alias, a limit).
    public var column: Int?
    public var path: String
    public var message: String

    public init(file: String, line: Int?, column: Int? = nil, path: String, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message
    }

    /// `file:line: message` or `file:line:column: message` (or `file: message` when the error is about the document
    /// as a whole).
    public var description: String {
        if let line, let column { return "\(file):\(line):\(column): \(message)" }
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }
}

/// Where each key path of a spec came from (for error messages).
public struct SpecSource: Sendable, Hashable {
    public var file: String
    /// Key path ("params.target.means" or "params.sweep.beta[2]") → 1-based line.
    public var lines: [String: Int]
    /// Key paths set on the command line (`tessera submit --set PATH=VALUE`): errors at or under them name the
    /// option instead of a line of the file.
    public var overridden: [String] = []
    /// How an overridden path's option is named in errors, when not `--set PATH` (a swept key: `--sweep PATH`).
    public var optionNames: [String: String] = [:]

    public init(file: String, lines: [String: Int] = [:]) {
        self.file = file
        self.lines = lines
    }

    public func error(_ path: String, _ message: String) -> SpecError {
        if let o = overridden.last(where: { path == $0 || path.hasPrefix($0 + ".") || path.hasPrefix($0 + "[") }) {
            return SpecError(file: file, line: nil, path: path, message: "\(optionNames[o] ?? "--set \(o)"): \(message)")
        }
        // Fall back to the nearest enclosing key that has a line.
        var p = path
        while !p.isEmpty, lines[p] == nil {
            if let cut = p.lastIndex(where: { $0 == "." || $0 == "[" }) {
                p = String(p[..<cut])
            } else {
                p = ""
            }
        }
        return SpecError(file: file, line: lines[p] ?? lines[""], path: path, message: message)
    }
}

public struct JobSpec: Sendable, Hashable {
    public static let topLevelKeys: [String] = [
        "name", "kind", "algorithm", "seed", "shards", "priority", "max_attempts", "checkpoint_every", "params",
        "depends_on", "sweep", "files",
    ]

    public var name: String
    public var kind: JobKind
    public var algorithm: String
    public var seed: UInt64
    public var shards: Int
    public var priority: Int
    public var maxAttempts: Int
    public var checkpointEvery: Int?
    public var params: JSONObject
    public var dependsOn: [Int64]
    /// Keys swept over (Sweep.swift): the job runs once per combination of their values; empty for most jobs.
    public var sweep: Sweep = Sweep(axes: [])
    /// Files the job brings (`files:`, JobFiles.swift), in the order written; empty for most jobs.
    public var files: [JobFile] = []
    /// The contents of `files` by name, where they have been loaded (`loadingFiles`); never part of `json`.
    public var fileContents: [String: [UInt8]] = [:]
    public var source: SpecSource

    public var paramsReader: Params {
        Params(params, path: "params", source: source, files: files, fileContents: fileContents)
    }

    /// Canonical JSON: every top-level key, defaults filled in. This is what is stored and dispatched.
    public var json: JSONValue {
        var o = JSONObject()
        o["name"] = .string(name)
        o["kind"] = .string(kind.rawValue)
        o["algorithm"] = .string(algorithm)
        // Seeds above 2^53 do not fit a JSON number exactly: store them as a decimal string.
        o["seed"] = seed <= (1 << 53) ? .number(Double(seed)) : .string(String(seed))
        o["shards"] = .int(shards)
        o["priority"] = .int(priority)
        o["max_attempts"] = .int(maxAttempts)
        if let checkpointEvery { o["checkpoint_every"] = .int(checkpointEvery) }
        o["params"] = .object(params)
        if !dependsOn.isEmpty { o["depends_on"] = .array(dependsOn.map { .number(Double($0)) }) }
        if !sweep.isEmpty { o["sweep"] = sweep.json }
        if !files.isEmpty {
            var f = JSONObject()
            for file in files { f[file.name] = file.json }
            o["files"] = .object(f)
        }
        return .object(o)
    }

    // MARK: Parsing

    /// Parses YAML or JSON text. Throws `SpecError` with the line of the offending key.
    public static func parse(_ text: String, file: String) throws -> JobSpec {
        let (value, source) = try SpecYAML.load(text, file: file)
        return try fromJSON(value, source: source)
    }

    /// Parses the text, then applies `overrides` ("PATH=VALUE", as `tessera submit --set` takes them, in order):
    /// PATH is a key path like `params.model.from_job` or `params.sweep.beta[1]` (missing mappings on the way are
    /// created), VALUE is YAML (`7`, `[7, 9]`, `{type: linear}`, `ring`). Validation errors about an overridden key
    /// name the option.
    ///
    /// A job may be named by reference where a job id goes (`depends_on` entries, `params.model.from_job`):
    /// `"@last"` (the newest job) or `"@NAME"` (the newest job of that name). `resolve` turns a reference (without
    /// the `@`) into an id — `tessera submit` asks the coordinator — or throws a message; without it a reference is
    /// an error.
    ///
    /// `sweeps` ("PATH=VALUES", as `tessera submit --sweep` takes them) add keys to the spec's `sweep:` (or replace
    /// the values of a key it sweeps already), after the overrides.
    public static func parse(
        _ text: String, file: String, overrides: [String], sweeps: [String] = [],
        resolve: ((String) throws -> Int64)? = nil
    ) throws -> JobSpec {
        var (value, source) = try SpecYAML.load(text, file: file)
        for o in overrides {
            guard let eq = o.firstIndex(of: "="), eq != o.startIndex else {
                throw SpecError(file: file, line: nil, path: "", message: "--set \(o): expected PATH=VALUE, e.g. params.model.from_job=7")
            }
            let path = String(o[..<eq])
            let text = String(o[o.index(after: eq)...])
            let parsed: JSONValue
            do {
                parsed = text.isEmpty ? .string("") : try SpecYAML.load(text, file: "--set \(path)").0
            } catch let e as SpecError {
                throw SpecError(file: file, line: nil, path: path, message: "--set \(path): the value is not YAML: \(e.message)")
            }
            value = try SpecOverride.set(value, path: SpecOverride.segments(path, file: file), to: parsed, file: file, whole: path)
            source.overridden.append(path)
        }
        for text in sweeps {
            let (path, values) = try SweepAxis.parseOption(text, file: file)
            guard case .object(var top) = value else { break }
            var sweep: JSONObject
            switch top["sweep"] {
            case nil, .null?: sweep = JSONObject()
            case .object(let o)?: sweep = o
            default: throw source.error("sweep", "--sweep adds to a sweep written as a mapping of key paths to lists of values")
            }
            sweep[path] = values
            top["sweep"] = .object(sweep)
            value = .object(top)
            source.lines["sweep.\(path)"] = nil
            source.overridden.append("sweep.\(path)")
            source.optionNames["sweep.\(path)"] = "--sweep \(path)"
        }
        value = try resolveReferences(value, source: source, resolve: resolve)
        return try fromJSON(value, source: source)
    }

    /// What a reference resolver throws when the reference names no job (other errors, such as an unreachable
    /// coordinator, go through unchanged).
    public struct JobReferenceError: Error, Sendable {
        public var message: String
        public init(_ message: String) { self.message = message }
    }

    /// Replaces job references (`"@last"`, `"@NAME"`) in `depends_on` and `params.model.from_job` with job ids.
    static func resolveReferences(
        _ value: JSONValue, source: SpecSource, resolve: ((String) throws -> Int64)?
    ) throws -> JSONValue {
        guard var top = value.objectValue else { return value }
        func id(_ v: JSONValue, at path: String) throws -> JSONValue {
            guard let s = v.stringValue, s.hasPrefix("@") else { return v }
            let ref = String(s.dropFirst())
            guard !ref.isEmpty else { throw source.error(path, "'@' must be followed by last or a job name (\(path): \"@last\")") }
            guard let resolve else {
                throw source.error(path, "'\(s)' names a job by reference; only `tessera submit` (asking the coordinator) resolves it")
            }
            do {
                return .int(Int(try resolve(ref)))
            } catch let e as JobReferenceError {
                throw source.error(path, "'\(s)': \(e.message)")
            }
        }
        if let deps = top["depends_on"]?.arrayValue {
            top["depends_on"] = .array(try deps.enumerated().map { try id($0.element, at: "depends_on[\($0.offset)]") })
        }
        if var params = top["params"]?.objectValue, var model = params["model"]?.objectValue, let from = model["from_job"] {
            model["from_job"] = try id(from, at: "params.model.from_job")
            params["model"] = .object(model)
            top["params"] = .object(params)
        }
        return .object(top)
    }

    /// Rebuilds a spec from its canonical JSON (as stored or dispatched).
    public static func fromStored(_ json: JSONValue) throws -> JobSpec {
        try fromJSON(json, source: SpecSource(file: "<stored spec>"))
    }

    public static func fromStored(_ bytes: [UInt8]) throws -> JobSpec {
        try fromStored(try JSONValue.parse(bytes))
    }

    static func fromJSON(_ value: JSONValue, source: SpecSource) throws -> JobSpec {
        guard let top = value.objectValue else {
            throw source.error("", "a job spec must be a mapping with keys \(topLevelKeys.joined(separator: ", "))")
        }
        for key in top.keys where !topLevelKeys.contains(key) {
            throw source.error(key, "unknown key '\(key)'; allowed keys are \(topLevelKeys.joined(separator: ", "))")
        }
        let r = Params(top, path: "", source: source)
        let name = try r.string("name")
        guard !name.isEmpty, name.count <= 200 else { throw source.error("name", "name must be 1 to 200 characters") }
        let kindText = try r.string("kind")
        guard let kind = JobKind(rawValue: kindText) else {
            throw source.error(
                "kind",
                "unknown kind '\(kindText)'; expected one of \(JobKind.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        let algorithm = try r.string("algorithm")
        let seed = try r.seed("seed")
        let shards = try r.int("shards", default: 1, range: 1...100_000)
        let priority = try r.int("priority", default: 0, range: -1_000_000...1_000_000)
        let maxAttempts = try r.int("max_attempts", default: 3, range: 1...1000)
        let checkpointEvery = try r.optionalInt("checkpoint_every", range: 1...1_000_000_000)
        let params = try r.optionalObject("params") ?? JSONObject()
        var dependsOn: [Int64] = []
        if let deps = top["depends_on"] {
            guard let arr = deps.arrayValue else { throw source.error("depends_on", "depends_on must be a list of job ids") }
            for (i, d) in arr.enumerated() {
                guard let id = d.intValue, id > 0 else {
                    throw source.error("depends_on[\(i)]", "depends_on entries must be positive job ids")
                }
                dependsOn.append(Int64(id))
            }
        }
        var axes: [SweepAxis] = []
        if let sw = top["sweep"], !sw.isNull {
            // As written: a mapping of key paths to values. As stored (Sweep.json): a list of {key, values}.
            var pairs: [(String, JSONValue)] = []
            if let o = sw.objectValue {
                pairs = o.pairs.map { ($0.key, $0.value) }
            } else if let list = sw.arrayValue {
                for (i, item) in list.enumerated() {
                    guard let o = item.objectValue, o.keys.count == 2, let key = o["key"]?.stringValue, let values = o["values"] else {
                        throw source.error("sweep[\(i)]", "sweep[\(i)] must be {key: PATH, values: [...]}")
                    }
                    pairs.append((key, values))
                }
            } else {
                throw source.error("sweep", "sweep must be a mapping of key paths to lists of values, e.g. {params.eta: [0, 0.5, 1], seed: 1..4}")
            }
            guard !pairs.isEmpty else { throw source.error("sweep", "sweep has no keys") }
            for (path, v) in pairs {
                guard !axes.contains(where: { $0.path == path }) else { throw source.error("sweep", "sweep names \(path) twice") }
                axes.append(try SweepAxis.parse(path: path, v) { source.error("sweep.\(path)", $0) })
            }
        }
        var files: [JobFile] = []
        if let f = top["files"], !f.isNull { files = try JobFile.parseAll(f, source: source) }
        return JobSpec(
            name: name, kind: kind, algorithm: algorithm, seed: seed, shards: shards, priority: priority,
            maxAttempts: maxAttempts, checkpointEvery: checkpointEvery, params: params, dependsOn: dependsOn,
            sweep: Sweep(axes: axes), files: files, source: source
        )
    }

    public static func == (a: JobSpec, b: JobSpec) -> Bool { a.json == b.json }
    public func hash(into h: inout Hasher) { h.combine(json) }
}

// MARK: - Typed parameter reader

/// Reads one mapping of a spec with typed accessors whose errors carry the key's line.
public struct Params: Sendable {
    public let object: JSONObject
    public let path: String
    public let source: SpecSource
    /// The spec's files and their loaded contents, for `file(_:)` (JobFiles.swift).
    public let files: [JobFile]
    public let fileContents: [String: [UInt8]]

    public init(
        _ object: JSONObject, path: String, source: SpecSource, files: [JobFile] = [],
        fileContents: [String: [UInt8]] = [:]
    ) {
        self.object = object
        self.path = path
        self.source = source
        self.files = files
        self.fileContents = fileContents
    }

    public func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
    public func error(_ key: String, _ message: String) -> SpecError { source.error(keyPath(key), message) }
    public func has(_ key: String) -> Bool { object[key] != nil && !(object[key]!.isNull) }

    /// Rejects keys outside `allowed`, naming the allowed set.
    public func rejectUnknown(_ allowed: [String]) throws {
        for key in object.keys where !allowed.contains(key) {
            throw error(key, "unknown key '\(key)' in \(path.isEmpty ? "spec" : path); allowed: \(allowed.joined(separator: ", "))")
        }
    }

    private func required(_ key: String) throws -> JSONValue {
        guard let v = object[key], !v.isNull else {
            throw source.error(path, "missing required key '\(keyPath(key))'")
        }
        return v
    }

    public func string(_ key: String) throws -> String {
        guard let s = try required(key).stringValue else { throw error(key, "\(keyPath(key)) must be a string") }
        return s
    }

    public func string(_ key: String, default d: String, allowed: [String]? = nil) throws -> String {
        guard has(key) else { return d }
        let s = try string(key)
        if let allowed, !allowed.contains(s) {
            throw error(key, "\(keyPath(key)) must be one of \(allowed.joined(separator: ", ")), not '\(s)'")
        }
        return s
    }

    public func double(_ key: String) throws -> Double {
        guard let d = try required(key).doubleValue, d.isFinite else {
            throw error(key, "\(keyPath(key)) must be a number")
        }
        return d
    }

    public func double(_ key: String, default d: Double) throws -> Double {
        has(key) ? try double(key) : d
    }

    public func double(_ key: String, range: ClosedRange<Double>, default d: Double? = nil) throws -> Double {
        let v: Double
        if let d, !has(key) { v = d } else { v = try double(key) }
        guard range.contains(v) else {
            throw error(key, "\(keyPath(key)) must be in [\(range.lowerBound), \(range.upperBound)], not \(v)")
        }
        return v
    }

    public func int(_ key: String, default d: Int? = nil, range: ClosedRange<Int>) throws -> Int {
        guard has(key) else {
            if let d { return d }
            _ = try required(key)
            fatalError("unreachable")
        }
        guard let v = object[key]!.intValue else { throw error(key, "\(keyPath(key)) must be a whole number") }
        guard range.contains(v) else {
            throw error(key, "\(keyPath(key)) must be between \(range.lowerBound) and \(range.upperBound), not \(v)")
        }
        return v
    }

    public func optionalInt(_ key: String, range: ClosedRange<Int>) throws -> Int? {
        has(key) ? try int(key, range: range) : nil
    }

    public func bool(_ key: String, default d: Bool) throws -> Bool {
        guard has(key) else { return d }
        guard let b = object[key]!.boolValue else { throw error(key, "\(keyPath(key)) must be true or false") }
        return b
    }

    public func seed(_ key: String) throws -> UInt64 {
        let v = try required(key)
        if let i = v.intValue, i >= 0 { return UInt64(i) }
        if let s = v.stringValue, let u = UInt64(s) { return u }
        throw error(key, "\(keyPath(key)) must be a whole number from 0 to 2^64-1")
    }

    public func object(_ key: String) throws -> Params {
        guard let o = try required(key).objectValue else { throw error(key, "\(keyPath(key)) must be a mapping") }
        return Params(o, path: keyPath(key), source: source, files: files, fileContents: fileContents)
    }

    public func optionalObject(_ key: String) throws -> JSONObject? {
        guard has(key) else { return nil }
        guard let o = object[key]!.objectValue else { throw error(key, "\(keyPath(key)) must be a mapping") }
        return o
    }

    public func array(_ key: String) throws -> [JSONValue] {
        guard let a = try required(key).arrayValue else { throw error(key, "\(keyPath(key)) must be a list") }
        return a
    }

    public func doubles(_ key: String) throws -> [Double] {
        try array(key).enumerated().map { i, v in
            guard let d = v.doubleValue, d.isFinite else {
                throw source.error("\(keyPath(key))[\(i)]", "\(keyPath(key))[\(i)] must be a number")
            }
            return d
        }
    }

    public func matrix(_ key: String) throws -> [[Double]] {
        try array(key).enumerated().map { i, row in
            guard let r = row.arrayValue else {
                throw source.error("\(keyPath(key))[\(i)]", "\(keyPath(key))[\(i)] must be a list of numbers")
            }
            return try r.enumerated().map { j, v in
                guard let d = v.doubleValue, d.isFinite else {
                    throw source.error("\(keyPath(key))[\(i)]", "\(keyPath(key))[\(i)][\(j)] must be a number")
                }
                return d
            }
        }
    }
}

// MARK: - YAML → JSON with line numbers

enum SpecYAML {
    static func load(_ text: String, file: String) throws -> (JSONValue, SpecSource) {
        var source = SpecSource(file: file)
        // Anchors, aliases, size, node count and depth: refused on the event stream, before any node exists.
        try SpecYAMLLimits.check(text, file: file)
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let e as YamlError {
            throw yamlError(e, file: file, text: text)
        }
        guard let node else {
            throw SpecError(file: file, line: nil, path: "", message: "the spec is empty")
        }
        source.lines[""] = node.mark?.line ?? 1
        let value = try convert(node, path: "", source: &source)
        return (value, source)
    }

    private static func yamlError(_ e: YamlError, file: String, text: String) -> SpecError {
        switch e {
        case .duplicatedKeysInMapping(let duplicates, let context):
            // Yams marks the mapping; point at the key's second occurrence instead.
            let key = duplicates.sorted().first ?? ""
            var seen = 0
            var line = context.mark.line
            for (i, l) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = l.drop(while: { $0 == " " || $0 == "-" || $0 == "{" || $0 == "," })
                if trimmed.hasPrefix(key + ":") || trimmed.hasPrefix("\"\(key)\":") {
                    seen += 1
                    if seen == 2 {
                        line = i + 1
                        break
                    }
                }
            }
            return SpecError(file: file, line: line, path: key, message: "duplicate key '\(key)'")
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
            .composer(_, let problem, let mark, _):
            return SpecError(file: file, line: mark.line, path: "", message: "YAML syntax error: \(problem)")
        case .reader(let problem, _, _, _):
            return SpecError(file: file, line: nil, path: "", message: "cannot read the spec: \(problem)")
        default:
            return SpecError(file: file, line: nil, path: "", message: "YAML error: \(e)")
        }
    }

    private static func convert(_ node: Node, path: String, source: inout SpecSource) throws -> JSONValue {
        switch node {
        case .scalar(let s):
            if s.style != .plain { return .string(s.string) }
            // Plain scalars resolve as YAML 1.2 core-schema values: null, bool, int, float, else string.
            if let i = Int64(s.string) { return .number(Double(i)) }
            if let u = UInt64(s.string) {  // seeds up to 2^64-1
                return u <= (1 << 53) ? .number(Double(u)) : .string(s.string)
            }
            if node.null != nil { return .null }
            if let b = node.bool { return .bool(b) }
            if let d = node.float {
                guard d.isFinite else {
                    throw source.error(path, "\(path) must be a finite number, not '\(s.string)'")
                }
                return .number(d)
            }
            return .string(s.string)
        case .sequence(let seq):
            var items: [JSONValue] = []
            for (i, child) in seq.enumerated() {
                let p = "\(path)[\(i)]"
                if let m = child.mark { source.lines[p] = m.line }
                items.append(try convert(child, path: p, source: &source))
            }
            return .array(items)
        case .mapping(let map):
            var obj = JSONObject()
            for (k, v) in map {
                guard let key = k.scalar?.string else {
                    throw SpecError(file: source.file, line: k.mark?.line, path: path, message: "keys must be strings")
                }
                let p = path.isEmpty ? key : "\(path).\(key)"
                if let m = k.mark { source.lines[p] = m.line }
                if obj[key] != nil {
                    throw SpecError(file: source.file, line: k.mark?.line, path: p, message: "duplicate key '\(key)'")
                }
                obj[key] = try convert(v, path: p, source: &source)
            }
            return .object(obj)
        case .alias:
            throw SpecError(file: source.file, line: node.mark?.line, path: path, message: "YAML aliases are not supported in job specs")
        }
    }
}

/// `--set PATH=VALUE` on the parsed spec.
enum SpecOverride {
    enum Segment { case key(String), index(Int) }

    static func segments(_ path: String, file: String) throws -> [Segment] {
        func bad() -> SpecError {
            SpecError(file: file, line: nil, path: path, message: "--set \(path): not a key path (like params.model.from_job or params.sweep.beta[1])")
        }
        var out: [Segment] = []
        for part in path.split(separator: ".", omittingEmptySubsequences: false) {
            var rest = Substring(part)
            let key = rest.prefix { $0 != "[" }
            guard !key.isEmpty else { throw bad() }
            out.append(.key(String(key)))
            rest = rest.dropFirst(key.count)
            while !rest.isEmpty {
                guard rest.first == "[", let close = rest.firstIndex(of: "]"),
                      let i = Int(rest[rest.index(after: rest.startIndex)..<close]), i >= 0 else { throw bad() }
                out.append(.index(i))
                rest = rest[rest.index(after: close)...]
            }
        }
        return out
    }

    static func set(_ node: JSONValue, path: [Segment], to value: JSONValue, file: String, whole: String) throws -> JSONValue {
        guard let first = path.first else { return value }
        let rest = Array(path.dropFirst())
        switch first {
        case .key(let k):
            var o: JSONObject
            switch node {
            case .object(let existing): o = existing
            case .null: o = JSONObject()
            default:
                throw SpecError(file: file, line: nil, path: whole, message: "--set \(whole): '\(k)' is inside a value that is not a mapping")
            }
            o[k] = try set(o[k] ?? .null, path: rest, to: value, file: file, whole: whole)
            return .object(o)
        case .index(let i):
            guard case .array(var a) = node, i < a.count else {
                throw SpecError(file: file, line: nil, path: whole, message: "--set \(whole): there is no list element [\(i)] to set")
            }
            a[i] = try set(a[i], path: rest, to: value, file: file, whole: whole)
            return .array(a)
        }
    }
}

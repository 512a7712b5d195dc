// Files a job brings with it (`files:` in the spec, docs/jobspec.md §files): a preference data set, a reward table,
// a reference policy. The spec names each file by a short name; params refer to files by that name
// (`params.data.file: pairs`).
//
//  - As written: `files: {pairs: data/pairs.jsonl}`, a path relative to the spec file.
//  - As stored and dispatched (canonical): `files: {pairs: {path, sha256, size}}`. `tessera submit` reads each file,
//    checks it with the algorithm (every malformed line is reported with its line number, and nothing is uploaded
//    or stored for a bad file), uploads it to the coordinator's content-addressed store (`blob.upload`,
//    protocol/SPEC.md §7) and submits the spec with the sha256 and size filled in. The coordinator checks the blobs
//    are there and checks the contents again; a worker fetches them by sha256 (verified) before it prepares the job.
//
// The contents are not part of the spec's canonical JSON (the sha256 is): `JobSpec.fileContents` carries them where
// they have been loaded, and `Params.file(_:)` gives an algorithm a file named by a param.

import TesseraJSON

/// One file of a job, as the spec names it.
public struct JobFile: Sendable, Hashable {
    /// The name params use ("pairs"): 1 to 64 characters, `a-z 0-9 _ -`, starting with a letter.
    public var name: String
    /// The path as written in the spec (relative to the spec file), for messages and provenance.
    public var path: String
    /// Lower-case hex sha256 of the contents; nil until `tessera submit` has read the file.
    public var sha256: String?
    /// Bytes; nil until read.
    public var size: Int64?

    public init(name: String, path: String, sha256: String? = nil, size: Int64? = nil) {
        self.name = name
        self.path = path
        self.sha256 = sha256
        self.size = size
    }

    /// True once the sha256 and size are known (as every stored spec has them).
    public var isResolved: Bool { sha256 != nil && size != nil }

    /// At most this many files per job.
    public static let maxFiles = 16
    /// At most this many bytes per file (the coordinator and each worker hold a file in memory while they use it).
    public static let maxBytes: Int64 = 64 << 20

    static func validName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, s.unicodeScalars.count <= 64, ("a"..."z").contains(first) else {
            return false
        }
        return s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// True for 64 lower-case hex digits.
    public static func validSHA256Text(_ s: String) -> Bool { validSHA256(s) }

    static func validSHA256(_ s: String) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// The canonical form: `{path, sha256, size}` once resolved, else the path as written.
    var json: JSONValue {
        guard let sha256, let size else { return .string(path) }
        return .object(["path": .string(path), "sha256": .string(sha256), "size": .number(Double(size))])
    }

    /// Reads `files:` (either form) from a spec.
    static func parseAll(_ value: JSONValue, source: SpecSource) throws -> [JobFile] {
        guard let o = value.objectValue else {
            throw source.error("files", "files must be a mapping of names to paths, e.g. {pairs: data/pairs.jsonl}")
        }
        guard o.keys.count <= maxFiles else {
            throw source.error("files", "a job may bring at most \(maxFiles) files, not \(o.keys.count)")
        }
        var files: [JobFile] = []
        for (name, v) in o.pairs {
            let at = "files.\(name)"
            guard validName(name) else {
                throw source.error(at, "file name '\(name)' must be 1 to 64 characters of a-z, 0-9, _ and -, starting with a letter")
            }
            if let path = v.stringValue {
                guard !path.isEmpty, path.utf8.count <= 4096, !path.contains("\0") else {
                    throw source.error(at, "\(at) must be the path of a file (relative to the spec file)")
                }
                files.append(JobFile(name: name, path: path))
            } else if let f = v.objectValue {
                let p = Params(f, path: at, source: source)
                try p.rejectUnknown(["path", "sha256", "size"])
                let path = try p.string("path")
                let sha = try p.string("sha256")
                guard validSHA256(sha) else { throw p.error("sha256", "\(at).sha256 must be 64 lower-case hex digits") }
                guard let size = f["size"]?.intValue, size >= 0, Int64(size) <= maxBytes else {
                    throw p.error("size", "\(at).size must be a byte count from 0 to \(maxBytes)")
                }
                files.append(JobFile(name: name, path: path, sha256: sha, size: Int64(size)))
            } else {
                throw source.error(at, "\(at) must be the path of a file (relative to the spec file)")
            }
        }
        return files
    }
}

/// The malformed parts of a job file, collected so that every one is reported at once (with its line number) rather
/// than the first only.
public struct JobFileProblems: Sendable {
    public let file: JobFile
    public private(set) var problems: [(line: Int, message: String)] = []
    /// Problems beyond this many are counted, not listed.
    public static let listed = 50
    private var unlisted = 0

    public init(_ file: JobFile) { self.file = file }

    public var isEmpty: Bool { problems.isEmpty }

    public mutating func add(line: Int, _ message: String) {
        if problems.count < Self.listed { problems.append((line, message)) } else { unlisted += 1 }
    }

    /// Throws one `SpecError` listing every problem as `path:line: message` (the first as the error's own line), if
    /// there are any.
    public func check() throws {
        guard let first = problems.first else { return }
        var message = first.message
        for p in problems.dropFirst() { message += "\n\(file.path):\(p.line): \(p.message)" }
        let total = problems.count + unlisted
        if unlisted > 0 { message += "\n\(file.path): … and \(unlisted) more malformed lines" }
        if total > 1 { message += "\n\(file.path): \(total) malformed lines (files.\(file.name)); nothing was uploaded or stored" }
        throw SpecError(file: file.path, line: first.line, path: "files.\(file.name)", message: message)
    }
}

extension JobSpec {
    /// This spec with the files' sha256, size and contents set by `read` (name, path → bytes), as `tessera submit`
    /// does with the files on disk and the coordinator with its store. Files already resolved must match what `read`
    /// gives.
    public func loadingFiles(_ read: (JobFile) throws -> [UInt8], sha256: ([UInt8]) -> String) throws -> JobSpec {
        var spec = self
        for (i, f) in files.enumerated() {
            let bytes = try read(f)
            guard Int64(bytes.count) <= JobFile.maxBytes else {
                throw source.error("files.\(f.name)", "\(f.path) is \(bytes.count) bytes; a job file may be at most \(JobFile.maxBytes) bytes (64 MiB)")
            }
            let digest = sha256(bytes)
            if let want = f.sha256, want != digest || f.size != Int64(bytes.count) {
                throw source.error("files.\(f.name)", "\(f.path): the contents (sha256 \(digest), \(bytes.count) bytes) are not the file the spec names (sha256 \(want), \(f.size ?? -1) bytes)")
            }
            spec.files[i].sha256 = digest
            spec.files[i].size = Int64(bytes.count)
            spec.fileContents[f.name] = bytes
        }
        return spec
    }

    /// The file named `name`, if the spec has one.
    public func file(named name: String) -> JobFile? { files.first { $0.name == name } }
}

extension Params {
    /// The file a param names (`params.data.file: pairs` → the spec's `files.pairs`) and its contents. Errors: the
    /// param is not a string, names no file of the spec, or the contents have not been loaded here.
    public func file(_ key: String) throws -> (file: JobFile, bytes: [UInt8]) {
        let name = try string(key)
        guard let f = files.first(where: { $0.name == name }) else {
            let known = files.map(\.name)
            throw error(key, known.isEmpty
                ? "\(keyPath(key)) names the file '\(name)', but the spec has no files: (add files: {\(name): PATH})"
                : "\(keyPath(key)) names the file '\(name)'; the spec's files are \(known.joined(separator: ", "))")
        }
        guard let bytes = fileContents[name] else {
            throw error(key, "the contents of files.\(name) (\(f.path)) are not loaded here; submit the spec with tessera submit, which reads and uploads them")
        }
        return (f, bytes)
    }
}

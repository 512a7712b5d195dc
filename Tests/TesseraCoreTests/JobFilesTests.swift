// `files:` in a job spec (JobFiles.swift): the written and stored forms, loading and checking contents, names and
// limits, and every malformed line of a file listed in one error.

import TesseraCore
import Testing

@Suite("Job files")
struct JobFilesTests {
    static let base = "name: f\nkind: preference\nalgorithm: dpo\nseed: 1\n"
    static func digest(_ b: [UInt8]) -> String {
        // Not a real hash: distinct contents give distinct 64-hex strings, which is all these tests need.
        var h: UInt64 = 1469598103934665603
        for x in b { h = (h ^ UInt64(x)) &* 1099511628211 }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 64 - hex.count) + hex
    }

    @Test("the written form names paths; loading fills sha256 and size; the stored form round-trips")
    func forms() throws {
        let spec = try JobSpec.parse(Self.base + "files: {pairs: data/p.jsonl, ref: ref.safetensors}\n", file: "s.yaml")
        #expect(spec.files.map(\.name) == ["pairs", "ref"])
        #expect(spec.files.allSatisfy { !$0.isResolved })
        #expect(spec.json["files"]?["pairs"]?.stringValue == "data/p.jsonl")
        let contents: [String: [UInt8]] = ["data/p.jsonl": Array("abc".utf8), "ref.safetensors": [1, 2, 3, 4]]
        let loaded = try spec.loadingFiles({ contents[$0.path]! }, sha256: Self.digest)
        #expect(loaded.fileContents["ref"] == [1, 2, 3, 4])
        let stored = loaded.json["files"]?["ref"]
        #expect(stored?["size"]?.intValue == 4 && stored?["sha256"]?.stringValue == Self.digest([1, 2, 3, 4]))
        #expect(stored?["path"]?.stringValue == "ref.safetensors")
        let back = try JobSpec.fromStored(loaded.json)
        #expect(back == loaded && back.files == loaded.files && back.fileContents.isEmpty)
        // Contents that are not the ones a stored spec names are refused.
        let error = try #require(throws: SpecError.self) {
            try back.loadingFiles({ _ in [9] }, sha256: Self.digest)
        }
        #expect(error.message.contains("are not the file the spec names"))
        // The same contents load.
        #expect(try back.loadingFiles({ contents[$0.path]! }, sha256: Self.digest).fileContents["pairs"] == Array("abc".utf8))
    }

    @Test("names, forms and limits are checked with the key's line")
    func validation() throws {
        func error(_ files: String) -> String? {
            do {
                _ = try JobSpec.parse(Self.base + files, file: "s.yaml")
                return nil
            } catch let e as SpecError { return e.description } catch { return "\(error)" }
        }
        #expect(error("files: {Pairs: a}\n")?.contains("s.yaml:5: file name 'Pairs' must be") == true)
        #expect(error("files: [a]\n")?.contains("files must be a mapping") == true)
        #expect(error("files: {a: 3}\n")?.contains("must be the path of a file") == true)
        #expect(error("files: {a: {path: x, sha256: ABC, size: 1}}\n")?.contains("64 lower-case hex") == true)
        let many = (0...JobFile.maxFiles).map { "f\($0): x\($0)" }.joined(separator: ", ")
        #expect(error("files: {\(many)}\n")?.contains("at most \(JobFile.maxFiles) files") == true)
        #expect(error("files: {a: data/a.jsonl}\n") == nil)
    }

    @Test("a param naming a file gets its contents; an unknown name lists the spec's files")
    func params() throws {
        let spec = try JobSpec.parse(Self.base + "files: {pairs: p.jsonl}\nparams: {data: {file: pairs}, other: nope}\n", file: "s.yaml")
            .loadingFiles({ _ in [7] }, sha256: Self.digest)
        let data = try spec.paramsReader.object("data")
        let (file, bytes) = try data.file("file")
        #expect(file.path == "p.jsonl" && bytes == [7])
        let e = try #require(throws: SpecError.self) { try spec.paramsReader.file("other") }
        #expect(e.message.contains("names the file 'nope'; the spec's files are pairs"))
    }

    @Test("JobFileProblems lists every problem, the first as the error's own line, and counts what it does not list")
    func problems() throws {
        var p = JobFileProblems(JobFile(name: "pairs", path: "p.jsonl"))
        #expect(p.isEmpty)
        try p.check()
        for line in [3, 5, 8] { p.add(line: line, "bad \(line)") }
        let e = try #require(throws: SpecError.self) { try p.check() }
        #expect(e.description.hasPrefix("p.jsonl:3: bad 3\np.jsonl:5: bad 5\np.jsonl:8: bad 8\n"))
        #expect(e.description.contains("3 malformed lines (files.pairs); nothing was uploaded or stored"))
        var q = JobFileProblems(JobFile(name: "pairs", path: "p.jsonl"))
        for line in 1...(JobFileProblems.listed + 7) { q.add(line: line, "bad") }
        let e2 = try #require(throws: SpecError.self) { try q.check() }
        #expect(e2.description.contains("… and 7 more malformed lines"))
        #expect(e2.description.contains("\(JobFileProblems.listed + 7) malformed lines"))
    }
}

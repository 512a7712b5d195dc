import Foundation
import Testing
import TesseraCore
import TesseraWorkloads

/// Every spec in examples/ is accepted as `tessera submit --dry-run` would: parsed, resolved and planned.
@Suite struct ExamplesTests {
    static let directory: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.appendingPathComponent("examples").path
    }()

    static let files: [String] = {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".json") }.sorted()
    }()

    @Test func thereAreExamples() {
        #expect(Self.files.count >= 12)
        #expect(Self.files.contains("sampling-ddim-ring.yaml"))
    }

    @Test(arguments: files) func exampleValidates(_ file: String) throws {
        let path = "\(Self.directory)/\(file)"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        // References to other jobs ("@ddpm-train-ring") stand for job 1 here; `tessera submit` asks the coordinator.
        // Files the spec brings are read relative to it, as `tessera submit` reads them (the digest is not checked
        // here: nothing names one yet).
        let spec = try JobSpec.parse(text, file: path, overrides: [], resolve: { _ in 1 }).loadingFiles(
            { f in
                guard let data = FileManager.default.contents(atPath: "\(Self.directory)/\(f.path)") else {
                    throw SpecError(file: path, line: nil, path: "files.\(f.name)", message: "no file \(f.path) next to the example")
                }
                return [UInt8](data)
            }, sha256: { _ in String(repeating: "0", count: 64) })
        let (algorithm, slices) = try Workloads.catalogue.validate(spec)
        #expect(algorithm.name == spec.algorithm)
        // An explicit shard count is honoured; a sweep may leave it at 1 and get one shard per point.
        if spec.shards > 1 { #expect(slices.count == spec.shards) } else { #expect(!slices.isEmpty) }
    }
}

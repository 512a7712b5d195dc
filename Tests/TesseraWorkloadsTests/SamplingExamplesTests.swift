// The issue-4 sampling examples pass what `tessera submit --dry-run` checks (parse, resolve, plan), and plan the
// shard count they ask for.

import Foundation
import TesseraCore
import TesseraWorkloads
import Testing

@Suite("Sampling: examples/ specs validate")
struct SamplingExamplesTests {
    static let root: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url
    }()

    @Test(
        "each example plans its shards",
        arguments: [
            ("sampling-cfg-ring.yaml", "ddim", 2),
            ("sampling-langevin-data-init.yaml", "langevin", 2),
            ("sampling-langevin-annealed.yaml", "langevin", 2),
            ("sampling-langevin-mala.yaml", "langevin", 4),
            ("sampling-smc-correction.yaml", "smc", 2),
            ("sampling-smc-discriminator.yaml", "smc", 2),
        ])
    func validates(file: String, algorithm: String, shards: Int) throws {
        let path = Self.root.appendingPathComponent("examples/\(file)").path
        let spec = try JobSpec.parse(String(contentsOfFile: path, encoding: .utf8), file: path)
        let (resolved, slices) = try Workloads.catalogue.validate(spec)
        #expect(resolved.name == algorithm)
        #expect(slices.count == shards)
    }

    @Test("the catalogue lists the new sampling algorithms")
    func catalogue() {
        let names = Workloads.catalogue.capabilities
        for name in ["sampling/ddpm", "sampling/ddim", "sampling/langevin", "sampling/smc"] {
            #expect(names.contains(name), "\(names)")
        }
    }
}

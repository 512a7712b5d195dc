// Preference-data shards feeding training shards (`data.generation_shards`, DPODataShards.swift): the data shards
// label exactly the annotator's pairs, in order, and a training shard fed by them trains bitwise as one that drew its
// pairs itself; a β sweep with a fixed data seed labels its data once for every point.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("dpo: preference-data shards feeding training shards")
struct DPODataShardsTests {
    static func yaml(_ data: String, extra: String = "") -> String {
        """
        name: dpo-data-shards
        kind: preference
        algorithm: dpo
        seed: 9
        params:
          problem: {contexts: 6, vocab: 5, length: 2}
          policy: {hidden: [8]}
          data: {source: annotator, pairs: 1000\(data)}
          steps: 20
          log_every: 5
        \(extra)
        """
    }

    @Test("K data shards label the annotator's pairs 0..<N in order; the trained shard is bitwise the unsharded one")
    func dataShardsAreTheAnnotatorsPairs() throws {
        let plain = try ToyLMFixtures.spec(Self.yaml(""))
        let (plainOutput, plainSink) = try ToyLMFixtures.runShard(plain)
        for k in [1, 3, 7] {
            let spec = try ToyLMFixtures.spec(Self.yaml(", generation_shards: \(k)"))
            let (outputs, sinks, slices) = try ToyLMFixtures.runWithDependencies(spec)
            #expect(slices.count == k + 1)
            #expect(slices[k].dependsOn == Array(0..<k))
            // The data shards' pairs, concatenated, are the annotator's pairs 0..<1000 of the point's seed.
            let config = try DPO().configure(spec)
            let problem = ToyLMProblem(config.training.problem)
            let annotator = BradleyTerryAnnotator(problem: problem, proposal: .reference, seed: 9, labelNoise: 0)
            let inputs = (0..<k).map { ShardInput(shardIndex: $0, summary: outputs[$0].summary, result: outputs[$0].result) }
            let pairs = try DPODataShards.pairs(inputs, seed: 9, settings: config.settings, problem: problem)
            #expect(pairs == (0..<1000).map { annotator.pair($0) })
            // The training shard: the same metric rows, summary and network as drawing the pairs itself.
            #expect(sinks[k].rows == plainSink.rows, "K = \(k): metric rows")
            let trained = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(try #require(sinks[k].checkpoints.last?.bytes)))
            let reference = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(try #require(plainSink.checkpoints.last?.bytes)))
            #expect(trained.model == reference.model && trained.optimizer == reference.optimizer, "K = \(k): network")
            let merged = try Workloads.catalogue.resolve(spec).merge(spec, outputs: outputs)
            #expect(merged == (try Workloads.catalogue.resolve(plain).merge(plain, outputs: [try #require(plainOutput)])))
        }
    }

    @Test("a β sweep with a fixed data.seed labels once for every point; a seed sweep labels once per seed")
    func sweepsShareTheirData() throws {
        let shared = try ToyLMFixtures.spec(
            Self.yaml(", seed: 4, generation_shards: 2", extra: "  sweep: {beta: [0.1, 0.5, 2.0]}"))
        let slices = try Workloads.catalogue.resolve(shared).plan(shared)
        #expect(slices.count == 2 + 3)
        #expect(slices[2...].allSatisfy { $0.dependsOn == [0, 1] })
        let (outputs, sinks, _) = try ToyLMFixtures.runWithDependencies(shared)
        // Each point equals its unsharded run.
        let plain = try ToyLMFixtures.spec(Self.yaml(", seed: 4", extra: "  sweep: {beta: [0.1, 0.5, 2.0]}"))
        for point in 0..<3 {
            let (_, sink) = try ToyLMFixtures.runShard(plain, index: point)
            #expect(sinks[2 + point].rows == sink.rows, "point \(point)")
        }
        _ = try Workloads.catalogue.resolve(shared).merge(shared, outputs: outputs)

        let bySeed = try ToyLMFixtures.spec(
            Self.yaml(", generation_shards: 2", extra: "  sweep: {beta: [0.1, 0.5], seed: [1, 2]}"))
        let s2 = try Workloads.catalogue.resolve(bySeed).plan(bySeed)
        #expect(s2.count == 2 * 2 + 4)
        #expect(s2[4].dependsOn == [0, 1] && s2[5].dependsOn == [2, 3] && s2[6].dependsOn == [0, 1] && s2[7].dependsOn == [2, 3])
    }

    @Test("a training shard refuses data of another seed or part; generation_shards is validated at its line")
    func validation() throws {
        let spec = try ToyLMFixtures.spec(Self.yaml(", generation_shards: 2"))
        let (outputs, _, slices) = try ToyLMFixtures.runWithDependencies(spec)
        let swapped = [1, 0].map { ShardInput(shardIndex: $0, summary: outputs[$0].summary, result: outputs[$0].result) }
        let task = ShardTask(
            spec: spec, shardIndex: 2, attempt: 1, slice: slices[2].slice, totalSteps: slices[2].totalSteps, resume: nil,
            inputs: swapped)
        #expect(throws: ShardError.self) { try Workloads.catalogue.resolve(spec).run(task, sink: RecordingSink()) }

        #expect(ToyLMFixtures.validationError(Self.yaml(", generation_shards: 0"), file: "d.yaml")?.contains("d.yaml:") == true)
        #expect(ToyLMFixtures.validationError(Self.yaml(", generation_shards: 1001"), file: "d.yaml") != nil)
        let population = Self.yaml("").replacingOccurrences(
            of: "{source: annotator, pairs: 1000}", with: "{source: population, generation_shards: 2}")
        #expect(ToyLMFixtures.validationError(population, file: "d.yaml")?.contains("generation_shards") == true)
        let wrpo = Self.yaml(", generation_shards: 2").replacingOccurrences(of: "algorithm: dpo", with: "algorithm: wrpo")
        #expect(ToyLMFixtures.validationError(wrpo, file: "d.yaml")?.contains("generation_shards") == true)
    }
}

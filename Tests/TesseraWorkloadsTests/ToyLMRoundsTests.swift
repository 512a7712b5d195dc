// Round-synchronous distributed rollouts (`params.rollout_shards`, ToyLMRounds.swift): the plan's dependency
// chain, and the claim that makes the rounds worth having -- the learners compute exactly what one shard computes,
// so the final policy, its optimiser state, the value head and every metric row are bitwise those of the
// single-shard run, for any number of rollout shards. The shards run here in one process, each task given the
// outputs of the shards its slice depends on, as a worker would receive them; the integration test
// (RoundRolloutTests) runs the same through the coordinator and worker processes, with a worker killed.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("Round-synchronous rollouts on the toy LM")
struct ToyLMRoundsTests {
    static func yaml(_ algorithm: String, _ params: String) -> String {
        """
        name: rounds-test
        kind: rl
        algorithm: \(algorithm)
        seed: 11
        params:
        \(params)
        """
    }

    static func checkpoint(_ bytes: [UInt8]?) throws -> TrainingCheckpoint<Double> {
        try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(try #require(bytes)))
    }

    /// Runs `params` once as one shard and once with each `rolloutShards`, and checks the rounds against the shard.
    static func expectRoundsMatchOneShard(
        _ algorithm: String, _ params: String, rolloutShards: [Int], sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let single = try ToyLMFixtures.spec(yaml(algorithm, params))
        let (output, sink) = try ToyLMFixtures.runShard(single)
        let reference = try checkpoint(sink.checkpoints.last?.bytes)
        let singleResult = try Workloads.catalogue.resolve(single).merge(single, outputs: [try #require(output)])
        for w in rolloutShards {
            let spec = try ToyLMFixtures.spec(yaml(algorithm, params + "\n  rollout_shards: \(w)"))
            let (outputs, sinks, slices) = try ToyLMFixtures.runWithDependencies(spec)
            let steps = reference.step
            #expect(slices.count == steps * (w + 1), sourceLocation: sourceLocation)
            let last = try checkpoint(outputs.last?.result)
            // The version the last learner publishes is the single shard's final state, bit for bit.
            #expect(last.step == steps, sourceLocation: sourceLocation)
            #expect(last.model == reference.model, "W = \(w): the final network", sourceLocation: sourceLocation)
            #expect(last.optimizer == reference.optimizer, "W = \(w): the Adam state", sourceLocation: sourceLocation)
            #expect(last.extraTensors == reference.extraTensors, "W = \(w): reference logits and rule state", sourceLocation: sourceLocation)
            // The learners' metric rows, in round order, are the single shard's rows.
            let learnerRows = stride(from: w, to: slices.count, by: w + 1).flatMap { sinks[$0].rows }
            #expect(learnerRows == sink.rows, "W = \(w): metric rows", sourceLocation: sourceLocation)
            // The merged result is the single shard's, plus what the rounds were.
            let merged = try Workloads.catalogue.resolve(spec).merge(spec, outputs: outputs)
            guard case .object(var o) = merged, case .object(let rounds)? = o["rounds"] else {
                Issue.record("W = \(w): no rounds in \(merged.render())", sourceLocation: sourceLocation)
                continue
            }
            #expect(rounds["rollout_shards"] == .int(w) && rounds["shards"] == .int(slices.count), sourceLocation: sourceLocation)
            o["rounds"] = nil
            #expect(JSONValue.object(o) == singleResult, "W = \(w): merged result", sourceLocation: sourceLocation)
        }
    }

    @Test("grpo: the final policy, Adam state and metric rows with 1, 2 or 4 rollout shards are bitwise one shard's")
    func grpoRoundsAreBitwiseOneShard() throws {
        try Self.expectRoundsMatchOneShard(
            "grpo",
            """
              problem: {contexts: 6, vocab: 5, length: 2}
              policy: {hidden: [8]}
              beta: 0.3
              num_generations: 4
              num_iterations: 2
              scale_rewards: none
              steps: 5
              log_every: 1
            """, rolloutShards: [1, 2, 4])
    }

    @Test("ppo: the final policy, value head and metric rows with 1, 3 rollout shards are bitwise one shard's")
    func ppoRoundsAreBitwiseOneShard() throws {
        try Self.expectRoundsMatchOneShard(
            "ppo",
            """
              problem: {contexts: 5, vocab: 6, length: 1}
              policy: {hidden: [8]}
              beta: 0.5
              num_generations: 3
              num_ppo_epochs: 2
              steps: 4
              log_every: 2
            """, rolloutShards: [1, 3])
    }

    @Test("a sweep plans the rounds of each point after the other, and merges each point's last learner")
    func sweepOfRounds() throws {
        let params = """
              problem: {contexts: 4, vocab: 4, length: 1}
              policy: {hidden: [4]}
              sweep: {beta: [0.5, 1.0]}
              num_generations: 2
              steps: 3
            """
        let spec = try ToyLMFixtures.spec(Self.yaml("grpo", params + "\n  rollout_shards: 2"))
        let (outputs, _, slices) = try ToyLMFixtures.runWithDependencies(spec)
        #expect(slices.count == 2 * 3 * 3)
        // Point 1's first round depends on nothing of point 0.
        #expect(slices[9].dependsOn.isEmpty && slices[11].dependsOn == [9, 10])
        #expect(slices[12].dependsOn == [11] && slices[14].dependsOn == [11, 12, 13])
        let unrounded = try ToyLMFixtures.spec(Self.yaml("grpo", params))
        let (single, _) = try ToyLMFixtures.runJob(unrounded)
        guard case .object(var o) = try Workloads.catalogue.resolve(spec).merge(spec, outputs: outputs) else {
            Issue.record("no object result")
            return
        }
        o["rounds"] = nil
        #expect(JSONValue.object(o) == single)
    }

    @Test("a learner retried after it wrote its checkpoint, or stopped before its step, gives the same output")
    func retriedLearnerIsTheSame() throws {
        let spec = try ToyLMFixtures.spec(
            Self.yaml(
                "grpo",
                """
                  problem: {contexts: 4, vocab: 4, length: 1}
                  policy: {hidden: [4]}
                  num_generations: 4
                  steps: 3
                  rollout_shards: 2
                """))
        let (outputs, _, slices) = try ToyLMFixtures.runWithDependencies(spec)
        let algorithm = try Workloads.catalogue.resolve(spec)
        let learner = 5  // round 1's learner: depends on learner 0 and rollouts 3, 4
        let inputs = slices[learner].dependsOn.map {
            ShardInput(shardIndex: $0, summary: outputs[$0].summary, result: outputs[$0].result)
        }
        func task(resume: (step: Int64, bytes: [UInt8])?) -> ShardTask {
            ShardTask(
                spec: spec, shardIndex: learner, attempt: 2, slice: slices[learner].slice, totalSteps: 1,
                resume: resume, inputs: inputs)
        }
        let own = try #require(outputs[learner].result)
        #expect(try algorithm.run(task(resume: (2, own)), sink: RecordingSink()) == outputs[learner])
        #expect(throws: ShardStopped.self) { try algorithm.run(task(resume: nil), sink: RecordingSink(stopAfter: 0)) }
        #expect(try algorithm.run(task(resume: nil), sink: RecordingSink()) == outputs[learner])
        // A learner given another round's rollouts refuses them.
        var swapped = inputs
        swapped[1] = ShardInput(shardIndex: 0, summary: outputs[0].summary, result: outputs[0].result)
        let wrong = ShardTask(
            spec: spec, shardIndex: learner, attempt: 1, slice: slices[learner].slice, totalSteps: 1, resume: nil,
            inputs: swapped)
        #expect(throws: ShardError.self) { try algorithm.run(wrong, sink: RecordingSink()) }
    }

    @Test("rollout_shards is validated with the line of the key at fault")
    func validation() throws {
        func error(_ params: String) -> String? {
            ToyLMFixtures.validationError(Self.yaml("ppo", params), file: "r.yaml")
        }
        #expect(error("  rollout_shards: 0")?.contains("r.yaml:6") == true)
        #expect(
            error("  problem: {contexts: 2, vocab: 4, length: 1}\n  num_generations: 2\n  rollout_shards: 5")?
                .contains("more than the 4 samples") == true)
        #expect(error("  steps: 60000\n  rollout_shards: 1")?.contains("the limit is 100000") == true)
        #expect(error("  steps: 10\n  rollout_shards: 2") == nil)
    }
}

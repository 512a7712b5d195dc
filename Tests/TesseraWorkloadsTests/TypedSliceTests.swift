// The typed slices and summaries (TesseraCore/TypedAlgorithm.swift): every algorithm's slice and summary decode and
// re-encode to the same bytes, keep the key layout the hand-written JSON had (stored as JSONB, read by protocol
// fixtures and integration tests), and a malformed slice fails as a ShardError that names the field.

import TesseraCore
import TesseraWorkloads
import Testing

@Suite("Typed slices and summaries")
struct TypedSliceTests {
    static let target = "{means: [[4], [-4]], stds: [0.5, 0.5], weights: [0.8, 0.2]}"

    /// One cheap job per algorithm of the catalogue, with the summary keys (in order) its shard 0 must have.
    static let jobs: [(yaml: String, keys: [String])] = {
        let stats = ["finite", "mean_sq_norm", "mode_weight_0", "mode_weight_1", "n", "nan_count", "out_of_range"]
        let toy = [
            "point", "beta", "seed", "steps", "kl_to_ref", "expected_reward", "frontier_distance",
            "beta_point_distance", "kl_to_optimum", "objective_gap", "objective", "optimal_objective", "frontier",
        ]
        let gaussian = [
            "point", "beta", "seed", "steps", "mean", "std", "kl_to_prior", "reward_mean", "optimal_mean",
            "optimal_std", "mean_error", "std_ratio_error", "objective", "optimal_objective", "objective_gap",
        ]
        let critic = [
            "point", "seed", "steps", "w1_max", "w1_mean", "q_error_max", "policy_agreement", "w1", "mean",
            "exact_mean", "greedy_policy", "optimal_policy",
        ]
        let head = "kind: sampling\nseed: 7\nshards: 2\nparams:\n  target: \(target)\n"
        let sampling = head + "  samples: 8192\n"
        return [
            ("kind: rl\nalgorithm: noop\nseed: 1\nshards: 2\nparams: {rounds: 2, metrics: 2}\n",
             ["index", "metrics", "result_bytes", "round", "value"]),
            ("algorithm: ddpm\n" + sampling + "  sampling_steps: 2\n", stats + ["start", "end"]),
            ("algorithm: ddim\n" + sampling + "  sampling_steps: 2\n  eta: 0.5\n", stats + ["start", "end"]),
            ("algorithm: langevin\n" + sampling + "  method: mala\n  steps: 2\n", stats + ["accept_rate", "start", "end"]),
            ("algorithm: smc\n" + head + "  proposal: {means: [[4], [-4]], stds: [0.5, 0.5]}\n  populations: 2\n"
                + "  sampling_steps: 2\n",
             stats + ["ess", "resample_count", "population_start", "population_end"]),
            ("kind: rl\nalgorithm: rloo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n  steps: 2\n"
                + "  sweep: {seed: [1, 18446744073709551615]}\n", toy),
            ("kind: preference\nalgorithm: dpo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  steps: 2\n  data: {pairs: 16}\n", toy),
            ("kind: sampling\nalgorithm: ddpm-train\nseed: 1\nparams:\n  target: \(target)\n  steps: 2\n  batch: 8\n"
                + "  eval_samples: 16\n  network: {hidden: [8]}\n",
             ["steps", "loss", "grad_norm", "lr", "excess", "excess_buckets", "eval_loss", "eval_loss_exact", "parameters"]),
            ("kind: rl\nalgorithm: grpo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n  steps: 2\n"
                + "  num_generations: 2\n  scale_rewards: batch\n", toy),
            ("kind: rl\nalgorithm: ppo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n  steps: 2\n", toy),
            ("kind: rl\nalgorithm: find\nseed: 3\nparams:\n  target: {means: [[0.5]], stds: [0.4]}\n  steps: 2\n"
                + "  sampling_steps: 2\n  batch_size: 4\n  sweep: {seed: [1, 18446744073709551615]}\n", gaussian),
            ("kind: rl\nalgorithm: implicit-diffusion\nseed: 3\nparams:\n  steps: 2\n  particles: 4\n", gaussian),
            ("kind: rl\nalgorithm: ddpo\nseed: 3\nparams:\n  target: {means: [[0.5]], stds: [0.4]}\n  steps: 2\n"
                + "  sampling_steps: 2\n  batch_size: 4\n  eval_samples: 8\n  hidden: [4]\n"
                + "  sweep: {seed: [1, 18446744073709551615]}\n",
             ["point", "beta", "seed", "steps", "eval_samples", "reward_mean", "reward_std", "kl_path", "objective",
              "objective_se", "optimal_objective", "objective_gap", "relative_gap", "reference_mean",
              "reference_variance", "mode_weights", "tilted_weights", "mode_weight_error"]),
            ("kind: rl\nalgorithm: qr-dqn\nseed: 3\nparams:\n  steps: 2\n  num_quantiles: 4\n  batch_size: 8\n"
                + "  sweep: {seed: [1, 18446744073709551615]}\n", critic),
            ("kind: rl\nalgorithm: c51\nseed: 3\nparams:\n  steps: 2\n  batch_size: 8\n", critic),
            ("kind: preference\nalgorithm: wrpo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  steps: 2\n  data: {pairs: 16}\n", toy),
            ("kind: preference\nalgorithm: fdpg\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  steps: 2\n  target: {type: gdc, constraint: {contains_token: 1}}\n  n_samples_per_context: 4\n", toy),
            ("kind: preference\nalgorithm: d2o\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  steps: 2\n  anchors: sampled\n  num_anchors: 2\n", toy + ["d2o"]),
            ("kind: preference\nalgorithm: iterative-dpo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  rounds: 2\n  steps_per_round: 1\n  label_budget: 4\n  candidates_per_round: 8\n",
             toy + ["labels", "labels_by_round", "kl_by_round"]),
            ("kind: preference\nalgorithm: simpo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  steps: 2\n  data: {source: population}\n", toy + ["optimum_kl"]),
            ("kind: preference\nalgorithm: simpo\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  steps: 2\n  data: {pairs: 16}\n", toy),
            ("kind: preference\nalgorithm: kto\nseed: 3\nparams:\n  problem: {contexts: 2, vocab: 3, length: 1}\n"
                + "  steps: 2\n  sweep: {seed: [1, 18446744073709551615]}\n", toy + ["optimum_kl"]),
            ("kind: preference\nalgorithm: reward-model\nseed: 3\nparams:\n  steps: 2\n  data: {pairs: 64}\n"
                + "  batch_size: 8\n  network: {hidden: [4]}\n  eval: {samples: 16, grid_points: 8}\n"
                + "  sweep: {seed: [1, 18446744073709551615]}\n",
             ["point", "seed", "steps", "loss", "accuracy", "rmse", "tv", "parameters"]),
            ("kind: preference\nalgorithm: reward-model\nseed: 3\nparams:\n  steps: 2\n  data: {pairs: 64}\n"
                + "  batch_size: 8\n  network: {hidden: [4]}\n  eval: {samples: 16, grid_points: 8}\n"
                + "  annotator_2: {means: [[1, 0]], stds: [1.2]}\n",
             ["point", "seed", "steps", "loss", "accuracy", "rmse", "tv", "misspecification_gap", "rmse_annotator_1",
              "rmse_annotator_2", "parameters"]),
        ]
    }()

    static func spec(_ yaml: String) throws -> JobSpec { try JobSpec.parse("name: typed\n" + yaml, file: "typed.yaml") }

    @Test("every algorithm of the catalogue is typed")
    func everyAlgorithmIsTyped() {
        for algorithm in Workloads.catalogue.algorithms {
            #expect(algorithm is any TypedAlgorithm, "\(algorithm.kind.rawValue)/\(algorithm.name)")
        }
        let covered = Set(Self.jobs.map { try! Self.spec($0.yaml).algorithm })
        #expect(covered == Set(Workloads.catalogue.algorithms.map(\.name)))
    }

    @Test("slices and summaries decode and re-encode to the same bytes, in the layout they always had")
    func roundTrip() throws {
        for (yaml, keys) in Self.jobs {
            let spec = try Self.spec(yaml)
            let (algorithm, slices) = try Workloads.catalogue.validate(spec)
            let typed = try #require(algorithm as? any TypedAlgorithm)
            for slice in slices { try Self.expectRoundTrip(typed, slice: slice.slice) }
            let sink = RecordingSink()
            let task = ShardTask(
                spec: spec, shardIndex: 0, attempt: 1, slice: slices[0].slice, totalSteps: slices[0].totalSteps,
                resume: nil)
            let output = try algorithm.run(task, sink: sink)
            #expect(output.summary.objectValue?.keys == keys, "\(spec.algorithm)")
            try Self.expectRoundTrip(typed, summary: output.summary)
        }
    }

    static func expectRoundTrip<A: TypedAlgorithm>(_ a: A, slice: JSONValue) throws {
        // As stored and dispatched: through text.
        let decoded = try TypedCoding.decodeExactly(A.Slice.self, from: try JSONValue.parse(slice.render()), "slice")
        #expect(try TypedCoding.encode(decoded, "slice").render() == slice.render(), "\(a.name)")
    }

    static func expectRoundTrip<A: TypedAlgorithm>(_ a: A, summary: JSONValue) throws {
        let decoded = try TypedCoding.decode(A.Summary.self, from: try JSONValue.parse(summary.render()), "summary")
        #expect(try TypedCoding.encode(decoded, "summary").render() == summary.render(), "\(a.name)")
    }

    @Test("a malformed slice is a ShardError that names the field")
    func malformedSlices() throws {
        func failure(_ yaml: String, _ slice: JSONValue) throws -> String {
            let spec = try Self.spec(yaml)
            let algorithm = try Workloads.catalogue.resolve(spec)
            let task = ShardTask(spec: spec, shardIndex: 0, attempt: 1, slice: slice, totalSteps: 1, resume: nil)
            do {
                _ = try algorithm.run(task, sink: RecordingSink())
                return "ran"
            } catch let e as ShardError {
                return e.message
            }
        }
        let noop = Self.jobs[0].yaml, ddim = Self.jobs[2].yaml, smc = Self.jobs[4].yaml, rloo = Self.jobs[5].yaml
        #expect(try failure(noop, .object(["index": .string("a")])) == "slice: index: expected a whole number, found \"a\"")
        #expect(try failure(noop, .object(["index": .int(0), "extra": .int(1)])).hasPrefix("slice: unknown key 'extra'"))
        #expect(try failure(ddim, .object(["start": .int(0)])) == "slice: end: missing")
        #expect(try failure(ddim, .object(["start": .int(4096), "end": .int(4096)])).hasPrefix("slice: end: the range"))
        #expect(try failure(smc, .object(["population_start": .number(0.5), "population_end": .int(1)]))
            == "slice: population_start: expected a whole number that fits Int, found 0.5")
        #expect(try failure(rloo, .object(["point": .int(0), "beta": .number(0.05), "seed": .string("x")]))
            .hasPrefix("slice: seed: "))
        #expect(try failure(rloo, .array([])) == "slice: expected an object, found []")
        let rm = Self.jobs[Self.jobs.count - 2].yaml
        #expect(try failure(rm, .object(["point": .int(0)])) == "slice: seed: missing")
        #expect(try failure(rm, .object(["point": .int(1), "seed": .int(2)])).hasPrefix("slice {\"point\": 1, \"seed\": 2} is not a shard"))
    }

    @Test("a malformed stored summary fails the merge, naming the shard and the field")
    func malformedSummary() throws {
        let spec = try Self.spec(Self.jobs[0].yaml)
        var reducer = try Noop(kind: .rl).makeReducer(spec)
        let bad = ShardOutput(summary: .object(["index": .int(0), "metrics": .int(2)]), result: nil)
        #expect {
            try reducer.add(bad)
        } throws: { ($0 as? ShardError)?.message == "shard 0's summary: result_bytes: missing" }
    }
}

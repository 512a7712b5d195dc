// Round-synchronous distributed rollouts for the toy LM's on-policy algorithms (`params.rollout_shards: W` of grpo
// and ppo; WORKLOADS.md §4 (c), issue 12).
//
// Without `rollout_shards` a sweep point is one shard that generates and learns in a loop. With it, each training
// step k = r + 1 of the point becomes a round r of W + 1 shards, chained by shard dependencies:
//   rollout shard (r, w), w < W   depends on learner r - 1 (none in round 0). It rebuilds policy version r (the
//                                 learner's checkpoint, or the seed's initial network in round 0) and draws samples
//                                 [w N / W, (w + 1) N / W) of the step's N = M G, sample i with Philox(point seed;
//                                 index i, step k, stream 5) exactly as the single shard draws it. Its result blob:
//                                 the responses, little-endian UInt32.
//   learner shard r               depends on learner r - 1 and the round's W rollout shards. It restores version r
//                                 (network, Adam moments, the rule's own state such as PPO's value head) from learner
//                                 r - 1's result, runs the algorithm's step k on the gathered batch, and publishes
//                                 version r + 1: its result blob (and its checkpoint) is the training checkpoint of
//                                 step k, the same file a single shard writes at step k.
// A sample is a pure function of (seed, k, i, policy version), and a checkpoint restores a version bit for bit, so
// every round computes exactly what the single-shard loop computes: the final policy is bitwise the single shard's,
// whatever W, however many workers run the rounds and whichever of them is killed (a re-run shard recomputes the
// same bytes). Planned per sweep point, point after point: R = steps rounds, steps x (W + 1) shards per point.

import Foundation
import Synchronization
import TesseraCompute
import TesseraCore

/// The shard slice of an on-policy toy-LM job: a sweep point, and with `rollout_shards` the round and role.
/// JSON: the point's keys (`point`, `beta`, `seed`), then `round`, `role` ("rollout" or "learner") and, for a
/// rollout, `part` (w of W).
public struct OnPolicySlice: Codable, Sendable, Hashable {
    public var point: ToyLMSweepPoint
    /// Nil: the point's whole training in one shard.
    public var round: Int?
    /// The rollout part w; nil for the learner (and for a whole-training shard).
    public var part: Int?

    public init(point: ToyLMSweepPoint, round: Int? = nil, part: Int? = nil) {
        self.point = point
        self.round = round
        self.part = part
    }

    enum CodingKeys: String, CodingKey { case round, role, part }

    public func encode(to encoder: any Encoder) throws {
        try point.encode(to: encoder)
        guard let round else { return }
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(round, forKey: .round)
        try c.encode(part == nil ? "learner" : "rollout", forKey: .role)
        if let part { try c.encode(part, forKey: .part) }
    }

    public init(from decoder: any Decoder) throws {
        point = try ToyLMSweepPoint(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        round = try c.decodeIfPresent(Int.self, forKey: .round)
        let role = try c.decodeIfPresent(String.self, forKey: .role)
        part = try c.decodeIfPresent(Int.self, forKey: .part)
        switch (round, role, part) {
        case (nil, nil, nil), (.some, "learner", nil), (.some, "rollout", .some): break
        default:
            throw DecodingError.dataCorruptedError(
                forKey: .role, in: c,
                debugDescription: "round, role and part must be absent, a learner's (round, role: learner) or a rollout's (round, role: rollout, part)")
        }
    }
}

/// What a rollout shard reports: which samples of which round it drew, and their mean reward.
public struct RolloutSummary: Codable, Sendable, Equatable {
    public var point: ToyLMSweepPoint
    public var round: Int
    public var part: Int
    /// Its samples are [first, first + samples) of the step's batch.
    public var first: Int
    public var samples: Int
    /// Mean r(x, y) over its samples (for status; the learner logs the step's metrics).
    public var rewardMean: Double

    enum CodingKeys: String, CodingKey {
        case round, role, part, first, samples, rewardMean = "reward_mean"
    }

    public func encode(to encoder: any Encoder) throws {
        try point.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(round, forKey: .round)
        try c.encode("rollout", forKey: .role)
        try c.encode(part, forKey: .part)
        try c.encode(first, forKey: .first)
        try c.encode(samples, forKey: .samples)
        try c.encode(rewardMean, forKey: .rewardMean)
    }

    public init(from decoder: any Decoder) throws {
        point = try ToyLMSweepPoint(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        round = try c.decode(Int.self, forKey: .round)
        part = try c.decode(Int.self, forKey: .part)
        first = try c.decode(Int.self, forKey: .first)
        samples = try c.decode(Int.self, forKey: .samples)
        rewardMean = try c.decode(Double.self, forKey: .rewardMean)
    }

    init(point: ToyLMSweepPoint, round: Int, part: Int, first: Int, samples: Int, rewardMean: Double) {
        self.point = point
        self.round = round
        self.part = part
        self.first = first
        self.samples = samples
        self.rewardMean = rewardMean
    }
}

/// What a learner before the last round reports: the version it published and its exact metrics (the frontier
/// distances, a search over beta, are left to the last learner). JSON: the point's keys, `round`, `role: learner`,
/// `steps`, `kl_to_ref`, `expected_reward`, `kl_to_optimum`, `objective_gap`.
public struct LearnerVersion: Codable, Sendable, Equatable {
    public var point: ToyLMSweepPoint
    public var round: Int
    public var steps: Int
    public var klToReference: Double
    public var expectedReward: Double
    public var klToOptimum: Double
    public var objectiveGap: Double

    enum CodingKeys: String, CodingKey {
        case round, role, steps, klToReference = "kl_to_ref", expectedReward = "expected_reward"
        case klToOptimum = "kl_to_optimum", objectiveGap = "objective_gap"
    }

    init(point: ToyLMSweepPoint, round: Int, steps: Int, exact: ToyLMExactMetrics) {
        self.point = point
        self.round = round
        self.steps = steps
        klToReference = exact.klToReference
        expectedReward = exact.expectedReward
        klToOptimum = exact.klToOptimum
        objectiveGap = exact.objectiveGap
    }

    public func encode(to encoder: any Encoder) throws {
        try point.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(round, forKey: .round)
        try c.encode("learner", forKey: .role)
        try c.encode(steps, forKey: .steps)
        try c.encode(klToReference, forKey: .klToReference)
        try c.encode(expectedReward, forKey: .expectedReward)
        try c.encode(klToOptimum, forKey: .klToOptimum)
        try c.encode(objectiveGap, forKey: .objectiveGap)
    }

    public init(from decoder: any Decoder) throws {
        point = try ToyLMSweepPoint(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        round = try c.decode(Int.self, forKey: .round)
        steps = try c.decode(Int.self, forKey: .steps)
        klToReference = try c.decode(Double.self, forKey: .klToReference)
        expectedReward = try c.decode(Double.self, forKey: .expectedReward)
        klToOptimum = try c.decode(Double.self, forKey: .klToOptimum)
        objectiveGap = try c.decode(Double.self, forKey: .objectiveGap)
    }
}

/// The summary of an on-policy toy-LM shard: a training state (a whole-training shard, or the last learner of a
/// point, which adds `round` and `role: learner` to the keys of `ToyLMShardSummary`), an earlier learner's version,
/// or a rollout's report.
public enum OnPolicySummary: Codable, Sendable, Equatable {
    case training(ToyLMShardSummary, round: Int?)
    case version(LearnerVersion)
    case rollout(RolloutSummary)

    enum CodingKeys: String, CodingKey { case round, role, frontierDistance = "frontier_distance" }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .rollout(let r): try r.encode(to: encoder)
        case .version(let v): try v.encode(to: encoder)
        case .training(let s, let round):
            try s.encode(to: encoder)
            if let round {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(round, forKey: .round)
                try c.encode("learner", forKey: .role)
            }
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decodeIfPresent(String.self, forKey: .role) {
        case "rollout": self = .rollout(try RolloutSummary(from: decoder))
        case "learner" where c.contains(.frontierDistance):
            self = .training(try ToyLMShardSummary(from: decoder), round: try c.decode(Int.self, forKey: .round))
        case "learner": self = .version(try LearnerVersion(from: decoder))
        case nil: self = .training(try ToyLMShardSummary(from: decoder), round: nil)
        case let other?:
            throw DecodingError.dataCorruptedError(forKey: .role, in: c, debugDescription: "unknown role \(other)")
        }
    }
}

/// A step rule that can take its batch from outside (the rollout shards) instead of drawing it.
protocol ToyLMRoundRule: ToyLMStepRule {
    /// G, responses per context.
    var numGenerations: Int { get }
    /// The responses of the step's batch, [M G], drawn elsewhere with the same keys; nil: the rule draws them.
    var givenResponses: [Int]? { get set }
}

extension ToyLMRollout {
    /// The batch of `step`: drawn from `policy`, or, when `given` holds the responses the rollout shards drew for
    /// this policy and step, scored from them (log pi_old and r computed here, from the same policy).
    init(policy: ToyLMPolicy, point: ToyLMSweepPoint, step: Int, groupSize G: Int, given: [Int]?) {
        if let given {
            self.init(policy: policy, responses: given, groupSize: G)
        } else {
            self.init(policy: policy, point: point, step: step, groupSize: G)
        }
    }
}

/// `params.rollout_shards` and the plan, run and merge of a job that has it.
struct ToyLMRounds: Sendable {
    /// W, rollout shards per round.
    var rolloutShards: Int
    /// The job's problem, built by its first shard on a worker and reused by the rest (a worker prepares a job's
    /// config once and keeps it): a round's shards are short, and building the tables (M P V reference logits, M K
    /// rewards and log-probs) is a good part of one.
    let problems = ProblemCache()

    init(rolloutShards: Int) { self.rolloutShards = rolloutShards }

    static let key = "rollout_shards"
    /// Shards a job may plan (`shards` of a spec has the same limit).
    static let maxShards = 100_000

    /// `params.rollout_shards` if given (1 to 64), checked against the plan's size and the batch.
    static func parse(_ p: Params, config: ToyLMTrainingConfig, numGenerations G: Int) throws -> ToyLMRounds? {
        guard p.has(key) else { return nil }
        let w = try p.int(key, default: 1, range: 1...64)
        let n = config.problem.contexts * G
        guard w <= n else {
            throw p.error(key, "params.rollout_shards is \(w), more than the \(n) samples of a step (contexts x num_generations)")
        }
        let shards = config.points.count * config.steps * (w + 1)
        guard shards <= maxShards else {
            throw p.error(
                key,
                "params.rollout_shards: \(w) plans \(config.points.count) point(s) x \(config.steps) rounds x \(w + 1) = \(shards) shards; the limit is \(maxShards) (lower steps, rollout_shards or the sweep)")
        }
        return ToyLMRounds(rolloutShards: w)
    }

    /// The plan of an on-policy job: one shard per sweep point, or with `rounds` the rounds of each point.
    static func plan(_ config: ToyLMTrainingConfig, rounds: ToyLMRounds?) -> [TypedShardSlice<OnPolicySlice>] {
        guard let rounds else {
            return config.slices.map { TypedShardSlice(OnPolicySlice(point: $0.slice), totalSteps: $0.totalSteps) }
        }
        return rounds.slices(config)
    }

    /// `run` of an on-policy job's shard: a whole training (`ToyLMTrainer`), or a round's rollout or learner.
    static func shard<Rule: ToyLMRoundRule>(
        rule: Rule, config: ToyLMTrainingConfig, rounds: ToyLMRounds?, slice: OnPolicySlice, task: ShardTask,
        sink: any ShardSink
    ) throws -> TypedShardOutput<OnPolicySummary> {
        switch (rounds, slice.round) {
        case (nil, nil):
            let output = try ToyLMTrainer.shard(rule: { _ in rule }, config: config, slice: slice.point, task: task, sink: sink)
            return TypedShardOutput(summary: .training(output.summary, round: nil), result: output.result)
        case (let rounds?, .some):
            return try rounds.run(rule: rule, config: config, slice: slice, task: task, sink: sink)
        case (nil, .some):
            throw ShardError("slice \(slice.point.slice.render()) names a round, but this job has no params.rollout_shards", permanent: true)
        case (.some, nil):
            throw ShardError("slice \(slice.point.slice.render()) names no round of this params.rollout_shards job", permanent: true)
        }
    }

    /// `makeReducer` of an on-policy job: the sweep merge of the final training summaries, plus, for a rounds
    /// job, `"rounds": {"rounds", "rollout_shards", "shards"}`.
    static func reducer(algorithm: String, config: ToyLMTrainingConfig, rounds: ToyLMRounds?) -> SummaryReducer<OnPolicySummary> {
        SummaryReducer { summaries in
            let merged = try ToyLMSweepMerge.merge(
                algorithm: algorithm, config: config, summaries: finalSummaries(summaries, steps: config.steps))
            guard let rounds, case .object(var o) = merged else { return merged }
            o["rounds"] = .object([
                "rounds": .int(config.steps), "rollout_shards": .int(rounds.rolloutShards),
                "shards": .int(summaries.count),
            ])
            return .object(o)
        }
    }

    /// Shards per sweep point.
    func shardsPerPoint(_ config: ToyLMTrainingConfig) -> Int { config.steps * (rolloutShards + 1) }

    /// Index of round r's learner among a point's shards (its rollouts are the W before it).
    func learnerIndex(round r: Int) -> Int { r * (rolloutShards + 1) + rolloutShards }

    /// The plan: per point, per round, the W rollouts and then the learner.
    func slices(_ config: ToyLMTrainingConfig) -> [TypedShardSlice<OnPolicySlice>] {
        var out: [TypedShardSlice<OnPolicySlice>] = []
        let W = rolloutShards
        for point in config.points {
            let base = out.count
            for r in 0..<config.steps {
                let previous = r > 0 ? [base + learnerIndex(round: r - 1)] : []
                for w in 0..<W {
                    out.append(TypedShardSlice(OnPolicySlice(point: point, round: r, part: w), totalSteps: 1, dependsOn: previous))
                }
                let rollouts = (0..<W).map { base + r * (W + 1) + $0 }
                out.append(TypedShardSlice(OnPolicySlice(point: point, round: r), totalSteps: 1, dependsOn: previous + rollouts))
            }
        }
        return out
    }

    /// Samples [first, end) of rollout part w of a batch of n.
    func range(part w: Int, of n: Int) -> Range<Int> { (w * n / rolloutShards)..<((w + 1) * n / rolloutShards) }

    /// Runs one shard of a rounds job: a rollout or a learner.
    func run<Rule: ToyLMRoundRule>(
        rule: Rule, config: ToyLMTrainingConfig, slice: OnPolicySlice, task: ShardTask, sink: any ShardSink
    ) throws -> TypedShardOutput<OnPolicySummary> {
        guard let round = slice.round, (0..<config.steps).contains(round) else {
            throw ShardError("slice \(slice.point.slice.render()) has no round of this \(config.steps)-round job", permanent: true)
        }
        let point = try config.point(slice.point)
        let problem = problems.problem(config.problem)
        let n = problem.contexts * rule.numGenerations
        let previous = round > 0 ? try task.inputs.first.map { try Self.checkpointBytes($0, round: round - 1) } : nil
        if round > 0, previous == nil {
            throw ShardError("round \(round) has no input from learner \(round - 1)", permanent: true)
        }

        if let part = slice.part {
            guard (0..<rolloutShards).contains(part) else {
                throw ShardError("rollout part \(part) is not one of \(rolloutShards)", permanent: true)
            }
            var policy: ToyLMPolicy
            if let previous {
                let checkpoint = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(previous))
                policy = try ToyLMPolicy(problem: problem, model: checkpoint.model)
            } else {
                policy = try ToyLMPolicy(problem: problem, hidden: config.hidden, activation: config.activation, seed: point.seed)
            }
            if sink.shouldStop { throw ShardStopped() }
            try policy.evaluate()
            let samples = range(part: part, of: n)
            var bytes = [UInt8]()
            bytes.reserveCapacity(samples.count * 4)
            var rewardSum = 0.0
            for i in samples {
                let x = i / rule.numGenerations
                let y = ToyLMRollout.draw(policy: policy, point: point, step: round + 1, index: i, context: x)
                rewardSum += problem.reward[x * problem.responses + y]
                withUnsafeBytes(of: UInt32(y).littleEndian) { bytes.append(contentsOf: $0) }
            }
            sink.progress(step: 1)
            let summary = RolloutSummary(
                point: point, round: round, part: part, first: samples.lowerBound, samples: samples.count,
                rewardMean: samples.isEmpty ? 0 : rewardSum / Double(samples.count))
            return TypedShardOutput(summary: .rollout(summary), result: bytes)
        }

        // The learner: gather the round's batch in part order.
        let rolloutInputs = task.inputs.dropFirst(round > 0 ? 1 : 0)
        guard rolloutInputs.count == rolloutShards else {
            throw ShardError("learner \(round) has \(rolloutInputs.count) rollout inputs, not \(rolloutShards)", permanent: true)
        }
        var responses: [Int] = []
        responses.reserveCapacity(n)
        for (w, input) in rolloutInputs.enumerated() {
            responses += try Self.responses(input, round: round, part: w, expected: range(part: w, of: n), problem: problem)
        }
        var rule = rule
        rule.givenResponses = responses
        // A retried learner that already wrote its checkpoint resumes from it (nothing left to do); otherwise it
        // resumes from the previous version.
        let own = task.resume.flatMap { $0.step == Int64(round + 1) ? $0 : nil }
        let resume = own ?? previous.map { (step: Int64(round), bytes: $0) }
        let capture = CheckpointCapture(sink)
        let state = try ToyLMTrainer.train(
            rule: rule, config: config, params: task.spec.params, point: point, resume: resume, sink: capture,
            stopAfter: round + 1, problem: problem)
        guard let checkpoint = capture.last ?? own?.bytes else {
            throw ShardError("learner \(round) wrote no checkpoint")
        }
        let summary: OnPolicySummary =
            round == config.steps - 1
            ? .training(ToyLMTrainer.summary(problem: problem, point: point, exact: state.exact, steps: state.steps), round: round)
            : .version(LearnerVersion(point: point, round: round, steps: state.steps, exact: state.exact))
        sink.progress(step: 1)
        return TypedShardOutput(summary: summary, result: checkpoint)
    }

    /// The checkpoint of version `round + 1` that learner `round`'s output carries.
    static func checkpointBytes(_ input: ShardInput, round: Int) throws -> [UInt8] {
        let summary = try TypedCoding.decode(OnPolicySummary.self, from: input.summary, "the summary of input shard \(input.shardIndex)")
        let r: Int? =
            switch summary {
            case .training(_, let r): r
            case .version(let v): v.round
            case .rollout: nil
            }
        guard r == round, let bytes = input.result else {
            throw ShardError("input shard \(input.shardIndex) is not learner \(round) with a checkpoint", permanent: true)
        }
        return bytes
    }

    /// The responses rollout `part` of `round` drew, checked against the samples it was to draw.
    static func responses(
        _ input: ShardInput, round: Int, part: Int, expected: Range<Int>, problem: ToyLMProblem
    ) throws -> [Int] {
        let what = "input shard \(input.shardIndex)"
        let summary = try TypedCoding.decode(OnPolicySummary.self, from: input.summary, "the summary of \(what)")
        guard case .rollout(let r) = summary, r.round == round, r.part == part, r.first == expected.lowerBound,
            r.samples == expected.count
        else {
            throw ShardError("\(what) is not rollout \(part) of round \(round) (samples \(expected))", permanent: true)
        }
        guard let bytes = input.result, bytes.count == 4 * expected.count else {
            throw ShardError("\(what) carries \(input.result?.count ?? 0) bytes, not \(expected.count) responses", permanent: true)
        }
        var out = [Int](repeating: 0, count: expected.count)
        for j in out.indices {
            var v: UInt32 = 0
            for b in 0..<4 { v |= UInt32(bytes[4 * j + b]) << (8 * b) }
            guard Int(v) < problem.responses else {
                throw ShardError("\(what): response \(v) of sample \(expected.lowerBound + j) is not one of \(problem.responses)", permanent: true)
            }
            out[j] = Int(v)
        }
        return out
    }

    /// The training summaries the merge reads: every whole-training shard's, and each point's last learner's.
    static func finalSummaries(_ summaries: [OnPolicySummary], steps: Int) -> [ToyLMShardSummary] {
        summaries.compactMap {
            guard case .training(let s, let round) = $0, round == nil || round == steps - 1 else { return nil }
            return s
        }
    }
}

/// One job's `ToyLMProblem`, built on first use.
final class ProblemCache: Sendable {
    private let built = Mutex<ToyLMProblem?>(nil)

    func problem(_ spec: ToyLMSpec) -> ToyLMProblem {
        built.withLock { p in
            if let p, p.spec == spec { return p }
            let made = ToyLMProblem(spec)
            p = made
            return made
        }
    }
}

/// Forwards to a shard's sink and keeps the last checkpoint written (the learner's result).
private final class CheckpointCapture: ShardSink, @unchecked Sendable {
    let inner: any ShardSink
    private(set) var last: [UInt8]?

    init(_ inner: any ShardSink) { self.inner = inner }

    func metric(_ name: String, step: Int64, value: Double) { inner.metric(name, step: step, value: value) }
    func progress(step: Int64) {}
    func blob(_ kind: ShardBlobKind, step: Int64, bytes: [UInt8]) throws {
        if kind == .checkpoint { last = bytes }
        try inner.blob(kind, step: step, bytes: bytes)
    }
    var shouldStop: Bool { inner.shouldStop }
    func fetchBlob(sha256: String) throws -> [UInt8] { try inner.fetchBlob(sha256: sha256) }
    func fetchJobBlob(jobID: Int64, shard: Int, kind: ShardBlobKind, step: Int64?) throws -> (step: Int64, sha256: String, bytes: [UInt8]) {
        try inner.fetchJobBlob(jobID: jobID, shard: shard, kind: kind, step: step)
    }
    func log(_ message: String, level: ShardLogLevel) { inner.log(message, level: level) }
}

// Running one toy-LM training shard: the loop every algorithm shares (WORKLOADS.md §2-§4, §7).
//
// An algorithm supplies only its step (`ToyLMStepRule`); this file owns the rest: building the problem and the
// policy, the optimiser, streaming metrics and progress, honouring `shouldStop` between steps, checkpoints, and
// resuming from one. A shard's trajectory is a pure function of its spec and sweep point: step k draws its
// randomness from Philox(point seed; index, step k, stream), and a checkpoint holds everything else (network,
// Adam moments and step count), bit for bit. So a run stopped after any checkpoint and resumed from it, on any
// worker, produces the same parameters, checkpoints, metrics and summary as an uninterrupted run.
//
// Checkpoint (safetensors, WORKLOADS.md §7, `TrainingCheckpoint<Double>`): `layers.<l>.weight|bias` (F64, PyTorch
// names), `optim.<name>.exp_avg|exp_avg_sq`, `optim.step`, `ref.logits` (the frozen reference logits, [M P, V] F64),
// metadata format, algo, config (the job's params and this shard's point, JSON), seed (the point seed),
// rng_counter (= step: step k + 1 draws with Philox step k + 1), step, metrics_last, problem (the problem spec JSON).
//
// Metric rows, at every `log_every`-th step and the last: the algorithm's own (TRL names; they describe the batch of
// that step, drawn from the policy before its update) and the exact ones (`exact/kl_to_optimum`,
// `exact/objective_gap`, `exact/kl_to_ref`, `exact/expected_reward`: the policy after the step's update). A fresh
// start also writes the exact rows of step 0 (the reference policy).

import Foundation
import TesseraCompute
import TesseraCore

/// What one training algorithm contributes: its step, and any state it keeps across steps besides the policy and
/// its optimiser (`Auxiliary`: PPO's value head).
protocol ToyLMStepRule: Sendable {
    associatedtype Auxiliary: ToyLMAuxiliaryState
    /// The `algo` name written into checkpoints.
    var name: String { get }
    /// Optimiser updates per training step (sizes the learning-rate schedule).
    var updatesPerStep: Int { get }
    /// The auxiliary state of a fresh shard; `optimizer` is the policy's AdamW setting.
    func makeAuxiliary(problem: ToyLMProblem, optimizer: AdamConfiguration) throws -> Auxiliary
    /// Training step number `step` (1-based) at the sweep point: evaluate the policy, compute gradients, update
    /// through `optimizer` (`updatesPerStep` times), and return the step's metrics in a fixed order.
    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer,
        auxiliary: inout Auxiliary
    ) throws -> [(String, Double)]
}

/// A rule's state besides the policy, saved bit for bit in its checkpoints as extra tensors.
protocol ToyLMAuxiliaryState: Sendable {
    /// The tensors to save (names outside `layers.`, `optim.` and `ref.`).
    var tensors: [SafeTensor] { get throws }
    /// Restores the state `tensors` saved (from a resume checkpoint's extra tensors).
    mutating func restore(from tensors: [SafeTensor]) throws
}

/// No state besides the policy: nothing more in the checkpoint.
struct ToyLMNoAuxiliaryState: ToyLMAuxiliaryState {
    var tensors: [SafeTensor] { [] }
    mutating func restore(from tensors: [SafeTensor]) throws {}
}

/// A rule whose whole state is the policy and its optimiser.
protocol ToyLMPolicyStepRule: ToyLMStepRule where Auxiliary == ToyLMNoAuxiliaryState {
    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer
    ) throws -> [(String, Double)]
}

extension ToyLMPolicyStepRule {
    func makeAuxiliary(problem: ToyLMProblem, optimizer: AdamConfiguration) -> ToyLMNoAuxiliaryState {
        ToyLMNoAuxiliaryState()
    }

    func step(
        _ step: Int, point: ToyLMSweepPoint, policy: inout ToyLMPolicy, optimizer: inout ToyLMOptimizer,
        auxiliary: inout ToyLMNoAuxiliaryState
    ) throws -> [(String, Double)] {
        try self.step(step, point: point, policy: &policy, optimizer: &optimizer)
    }
}

/// Adam(W) plus gradient clipping, applied to the policy's network.
public struct ToyLMOptimizer: Sendable {
    public var adam: Adam<Double>
    public let maxGradNorm: Double?

    /// Clips (if configured) and updates; returns the gradient norm before clipping and the learning rate used.
    @discardableResult
    public mutating func update(_ policy: inout ToyLMPolicy) -> (gradNorm: Double, learningRate: Double) {
        let norm = maxGradNorm.map { policy.model.clipGradientNorm(maxNorm: $0) } ?? policy.model.gradientNorm()
        let lr = adam.nextLearningRate
        adam.update(&policy.model)
        return (norm, lr)
    }
}

/// The final state of a shard, as its summary reports it: `{"point", "beta", "seed", "steps", "kl_to_ref",
/// "expected_reward", "frontier_distance", "beta_point_distance", "kl_to_optimum", "objective_gap", "objective",
/// "optimal_objective", "frontier": {"kl_to_ref", "expected_reward"}}`.
public struct ToyLMShardSummary: Codable, Sendable, Equatable {
    public var point: ToyLMSweepPoint
    public var steps: Int
    public var exact: ToyLMExactMetrics
    /// The analytic frontier point of the shard's beta.
    public var frontier: ToyLMFrontierPoint
    /// Distance from (kl_to_ref, expected_reward) to the frontier curve.
    public var frontierDistance: Double
    /// Distance to the frontier point of the shard's own beta.
    public var betaPointDistance: Double

    init(
        point: ToyLMSweepPoint, steps: Int, exact: ToyLMExactMetrics, frontier: ToyLMFrontierPoint,
        frontierDistance: Double, betaPointDistance: Double
    ) {
        self.point = point
        self.steps = steps
        self.exact = exact
        self.frontier = frontier
        self.frontierDistance = frontierDistance
        self.betaPointDistance = betaPointDistance
    }

    enum CodingKeys: String, CodingKey {
        case steps, klToReference = "kl_to_ref", expectedReward = "expected_reward"
        case frontierDistance = "frontier_distance", betaPointDistance = "beta_point_distance"
        case klToOptimum = "kl_to_optimum", objectiveGap = "objective_gap", objective
        case optimalObjective = "optimal_objective", frontier
    }

    // The point's keys come first, at the top level.
    public func encode(to encoder: any Encoder) throws {
        try point.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(steps, forKey: .steps)
        try c.encode(exact.klToReference, forKey: .klToReference)
        try c.encode(exact.expectedReward, forKey: .expectedReward)
        try c.encode(frontierDistance, forKey: .frontierDistance)
        try c.encode(betaPointDistance, forKey: .betaPointDistance)
        try c.encode(exact.klToOptimum, forKey: .klToOptimum)
        try c.encode(exact.objectiveGap, forKey: .objectiveGap)
        try c.encode(exact.objective, forKey: .objective)
        try c.encode(exact.optimalObjective, forKey: .optimalObjective)
        try c.encode(frontier, forKey: .frontier)
    }

    public init(from decoder: any Decoder) throws {
        point = try ToyLMSweepPoint(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        steps = try c.decode(Int.self, forKey: .steps)
        exact = ToyLMExactMetrics(
            klToOptimum: try c.decode(Double.self, forKey: .klToOptimum),
            objectiveGap: try c.decode(Double.self, forKey: .objectiveGap),
            klToReference: try c.decode(Double.self, forKey: .klToReference),
            expectedReward: try c.decode(Double.self, forKey: .expectedReward),
            objective: try c.decode(Double.self, forKey: .objective),
            optimalObjective: try c.decode(Double.self, forKey: .optimalObjective))
        frontierDistance = try c.decode(Double.self, forKey: .frontierDistance)
        betaPointDistance = try c.decode(Double.self, forKey: .betaPointDistance)
        frontier = try c.decode(ToyLMFrontierPoint.self, forKey: .frontier)
    }
}

enum ToyLMTrainer {
    /// `run` of a toy-LM `TypedAlgorithm`: the dispatched sweep point trained with `rule`.
    static func shard(
        rule: (ToyLMSweepPoint) -> some ToyLMStepRule, config: ToyLMTrainingConfig, slice: ToyLMSweepPoint,
        task: ShardTask, sink: any ShardSink
    ) throws -> TypedShardOutput<ToyLMShardSummary> {
        let point = try config.point(slice)
        return TypedShardOutput(
            summary: try run(
                rule: rule(point), config: config, params: task.spec.params, point: point, resume: task.resume,
                sink: sink))
    }

    /// `makeReducer` of a toy-LM `TypedAlgorithm`: the sweep merge of `ToyLMSweepMerge`.
    static func reducer(algorithm: String, config: ToyLMTrainingConfig) -> SummaryReducer<ToyLMShardSummary> {
        SummaryReducer { try ToyLMSweepMerge.merge(algorithm: algorithm, config: config, summaries: $0) }
    }

    /// Runs one shard of `config` at `point` with `rule`, resuming from `resume` if given.
    static func run(
        rule: some ToyLMStepRule, config: ToyLMTrainingConfig, params: JSONObject, point: ToyLMSweepPoint,
        resume: (step: Int64, bytes: [UInt8])?, sink: any ShardSink
    ) throws -> ToyLMShardSummary {
        try runKeepingState(
            rule: rule, config: config, params: params, point: point, resume: resume, sink: sink
        ).summary
    }

    /// `run`, also returning what an algorithm with its own summary reads: the rule's auxiliary state and the final
    /// policy's log pi(y|x), [M, K], both after the last step.
    static func runKeepingState<Rule: ToyLMStepRule>(
        rule: Rule, config: ToyLMTrainingConfig, params: JSONObject, point: ToyLMSweepPoint,
        resume: (step: Int64, bytes: [UInt8])?, sink: any ShardSink
    ) throws -> (summary: ToyLMShardSummary, auxiliary: Rule.Auxiliary, logProb: [Double]) {
        let trained = try train(rule: rule, config: config, params: params, point: point, resume: resume, sink: sink)
        return (
            summary(problem: trained.problem, point: point, exact: trained.exact, steps: trained.steps),
            trained.auxiliary, trained.logProb
        )
    }

    /// A shard's summary of the state it reached: its exact metrics and the distances to the frontier (the curve's
    /// distance is a 1-D search over beta, hundreds of passes over the M K table: done once per shard).
    static func summary(problem: ToyLMProblem, point: ToyLMSweepPoint, exact: ToyLMExactMetrics, steps: Int) -> ToyLMShardSummary {
        let frontier = problem.frontierPoint(beta: point.beta)
        let reached = ToyLMFrontierPoint(klToReference: exact.klToReference, expectedReward: exact.expectedReward)
        return ToyLMShardSummary(
            point: point, steps: steps, exact: exact, frontier: frontier,
            frontierDistance: problem.frontierDistance(reached), betaPointDistance: reached.distance(to: frontier))
    }

    /// The training of `runKeepingState`: the exact metrics of the state reached, its step, the rule's auxiliary
    /// state and log pi(y|x). `stopAfter`: train only up to that step (a learner of `ToyLMRounds` runs one step)
    /// and checkpoint there; logging and the learning-rate schedule still follow the whole run.
    static func train<Rule: ToyLMStepRule>(
        rule: Rule, config: ToyLMTrainingConfig, params: JSONObject, point: ToyLMSweepPoint,
        resume: (step: Int64, bytes: [UInt8])?, sink: any ShardSink, stopAfter: Int? = nil, problem built: ToyLMProblem? = nil
    ) throws -> (problem: ToyLMProblem, exact: ToyLMExactMetrics, steps: Int, auxiliary: Rule.Auxiliary, logProb: [Double]) {
        let lastStep = stopAfter.map { min($0, config.steps) } ?? config.steps
        let problem = built ?? ToyLMProblem(config.problem)  // `built`: the same problem, made once per job
        let configText = JSONValue.object(["params": .object(params), "point": point.slice]).render()
        var policy: ToyLMPolicy
        var optimizer: ToyLMOptimizer
        var auxiliary = try rule.makeAuxiliary(problem: problem, optimizer: config.optimizer)
        var start = 0
        if let resume {
            let checkpoint: TrainingCheckpoint<Double>
            do {
                checkpoint = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(resume.bytes))
            } catch {
                throw ShardError("the resume checkpoint (step \(resume.step)) cannot be read: \(error)")
            }
            try verify(checkpoint, rule: rule, configText: configText, problem: problem, config: config)
            policy = try ToyLMPolicy(problem: problem, model: checkpoint.model)
            optimizer = ToyLMOptimizer(adam: checkpoint.optimizer, maxGradNorm: config.maxGradNorm)
            try auxiliary.restore(from: checkpoint.extraTensors)
            start = checkpoint.step
            sink.log("\(rule.name) β=\(point.beta) seed \(point.seed): resumed from the checkpoint at step \(start) of \(config.steps) (policy, Adam state and \(rule.name) state restored)")
        } else {
            policy = try ToyLMPolicy(
                problem: problem, hidden: config.hidden, activation: config.activation, seed: point.seed)
            optimizer = ToyLMOptimizer(
                adam: try Adam(configuration: config.optimizer, parameterCount: policy.model.parameterCount),
                maxGradNorm: config.maxGradNorm)
            try policy.evaluate()
            for (name, value) in problem.exactMetrics(logProb: policy.logProb, beta: point.beta).named {
                sink.metric(name, step: 0, value: value)
            }
            sink.log("\(rule.name) β=\(point.beta) seed \(point.seed): training from the reference policy, \(config.steps) steps")
        }
        sink.progress(step: Int64(start))

        var step = start
        while step < lastStep {
            if sink.shouldStop { throw ShardStopped() }
            step += 1
            let metrics = try rule.step(
                step, point: point, policy: &policy, optimizer: &optimizer, auxiliary: &auxiliary)
            let log = step % config.logEvery == 0 || step == config.steps
            let save = step == lastStep || config.checkpointEvery.map { step % $0 == 0 } == true
            if log || save {
                try policy.evaluate()
                let rows = metrics + problem.exactMetrics(logProb: policy.logProb, beta: point.beta).named
                if log {
                    for (name, value) in rows { sink.metric(name, step: Int64(step), value: value) }
                }
                if save {
                    var last = JSONObject()
                    for (name, value) in rows { last[name] = .number(value) }
                    let checkpoint = TrainingCheckpoint(
                        model: policy.model, optimizer: optimizer.adam, seed: point.seed, rngCounter: UInt64(step),
                        step: step, algo: rule.name, config: configText, metricsLast: JSONValue.object(last).render(),
                        extraTensors: [
                            try SafeTensor(
                                name: "ref.logits", float64: problem.referenceLogits,
                                shape: [problem.contexts * problem.prefixes, problem.vocabulary])
                        ] + (try auxiliary.tensors),
                        extraMetadata: ["problem": config.problem.json.render()])
                    try sink.blob(.checkpoint, step: Int64(step), bytes: try checkpoint.safeTensorsFile().serialize())
                }
            }
            sink.progress(step: Int64(step))
        }

        try policy.evaluate()
        let exact = problem.exactMetrics(logProb: policy.logProb, beta: point.beta)
        if step == config.steps {
            sink.log("\(rule.name) β=\(point.beta) seed \(point.seed): trained, KL to reference \(exact.klToReference), expected reward \(exact.expectedReward)")
        }
        return (problem, exact, step, auxiliary, policy.logProb)
    }

    /// A checkpoint resumes this shard only if it was written by the same algorithm, configuration and problem.
    static func verify(
        _ c: TrainingCheckpoint<Double>, rule: some ToyLMStepRule, configText: String, problem: ToyLMProblem,
        config: ToyLMTrainingConfig
    ) throws {
        func mismatch(_ what: String) -> ToyLMError {
            ToyLMError(.checkpointMismatch, "the resume checkpoint at step \(c.step) \(what)")
        }
        guard c.algo == rule.name else { throw mismatch("was written by \(c.algo), not \(rule.name)") }
        guard c.config == configText else { throw mismatch("belongs to another configuration or sweep point") }
        let reference = try? c.extraTensors.first(where: { $0.name == "ref.logits" })?.float64Values()
        guard reference == problem.referenceLogits else {
            throw mismatch("has other reference logits than this problem")
        }
        guard c.optimizer.configuration == config.optimizer else { throw mismatch("has another optimiser setting") }
        guard c.step >= 0, c.step <= config.steps, c.rngCounter == UInt64(c.step),
            c.optimizer.step == c.step * rule.updatesPerStep
        else { throw mismatch("is not a resumable state of a \(config.steps)-step run") }
    }
}

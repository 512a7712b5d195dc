// Bring your own toy problem (`params.problem.file`, ToyLMProblemFile.swift): a safetensors job file's reward table
// and reference logits replace the derived ones, the exact checks run on the problem as brought (DPO on the
// population loss reaches its Gibbs optimum pi_ref e^{r/beta} / Z, computed here from the tensors this test wrote),
// the problem's JSON names the file, and a bad file is refused with what is wrong.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("A toy problem brought in a file")
struct ToyLMProblemFileTests {
    static let M = 3, V = 5

    /// A reward table and reference logits of the test's own (no Philox, no code under test).
    static func tables() -> (reward: [Double], logits: [Double]) {
        var reward = [Double](), logits = [Double]()
        for x in 0..<M {
            for y in 0..<V {
                reward.append(sin(Double(3 * x + y + 1)) * 1.5)
                logits.append(cos(Double(7 * x + 2 * y)) * 0.8)
            }
        }
        return (reward, logits)
    }

    static func file(_ tensors: [SafeTensor]) throws -> [UInt8] { try SafeTensorsFile(tensors: tensors).serialize() }

    static func spec(_ bytes: [UInt8], problem: String = "{file: world}", extra: String = "") throws -> JobSpec {
        try JobSpec.parse(
            """
            name: byo
            kind: preference
            algorithm: dpo
            seed: 9
            files: {world: world.safetensors}
            params:
              problem: \(problem)
              beta: 0.4
              policy: {hidden: []}
              data: {source: population}
              steps: 1500
              learning_rate: 0.05
              log_every: 1500
            \(extra)
            """, file: "byo.yaml"
        ).loadingFiles({ _ in bytes }, sha256: { _ in String(repeating: "e", count: 64) })
    }

    @Test("DPO on a brought problem reaches its Gibbs optimum, and the problem's JSON names the file")
    func reachesTheBroughtOptimum() throws {
        let (reward, logits) = Self.tables()
        let bytes = try Self.file([
            try SafeTensor(name: "reward", float64: reward, shape: [Self.M, Self.V]),
            try SafeTensor(name: "reference_logits", float32: logits.map(Float.init), shape: [Self.M, Self.V]),
        ])
        let spec = try Self.spec(bytes)
        let config = try DPO().configure(spec)
        // The sizes come from the tensors: 3 contexts, vocab 5, length 1.
        #expect(config.training.problem.contexts == 3 && config.training.problem.vocabulary == 5)
        let json = config.training.problem.json
        #expect(json["file"]?["sha256"]?.stringValue == String(repeating: "e", count: 64))
        #expect(json["file"]?["tensors"]?.arrayValue?.compactMap(\.stringValue) == ["reference_logits", "reward"])
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        let checkpoint = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(try #require(sink.checkpoints.last).bytes))
        #expect(checkpoint.extraMetadata["problem"]?.contains("world.safetensors") == true)
        var policy = try ToyLMPolicy(problem: ToyLMProblem(config.training.problem), model: checkpoint.model)
        try policy.evaluate()
        let beta = 0.4
        var worst = 0.0
        for x in 0..<Self.M {
            // pi_ref from the F32 logits as written (F32 -> F64 is exact), then the Gibbs tilt, normalised here.
            let ref = (0..<Self.V).map { Double(Float(logits[x * Self.V + $0])) }
            let tilted = (0..<Self.V).map { ref[$0] + reward[x * Self.V + $0] / beta }
            let top = tilted.max()!
            let z = tilted.map { exp($0 - top) }.reduce(0, +)
            var kl = 0.0
            for y in 0..<Self.V {
                let lp = policy.logProb[x * Self.V + y]
                kl += exp(lp) * (lp - (tilted[y] - top - log(z)))
            }
            worst = max(worst, kl)
        }
        let reported = try #require(output?.summary["kl_to_optimum"]?.doubleValue)
        print("DPO (population) on a brought 3 x 5 problem, beta 0.4, 1500 steps: worst KL(pi || Gibbs) = \(worst); reported kl_to_optimum \(reported)")
        #expect(worst < 1e-4)  // WORKLOADS.md §3 P1's bound for the population loss
        #expect(reported < 1e-4)
    }

    @Test("a bad problem file is refused with what is wrong")
    func badFiles() throws {
        let (reward, logits) = Self.tables()
        func error(_ bytes: [UInt8], problem: String = "{file: world}") -> String {
            do {
                _ = try Workloads.catalogue.validate(try Self.spec(bytes, problem: problem))
                return "accepted"
            } catch { return "\(error)" }
        }
        let good = try SafeTensor(name: "reward", float64: reward, shape: [Self.M, Self.V])
        #expect(error(Array("not safetensors".utf8)).contains("not a safetensors file"))
        #expect(error(try Self.file([try SafeTensor(name: "rewards", float64: reward, shape: [Self.M, Self.V])])).contains("unknown tensor 'rewards'"))
        var nan = reward
        nan[4] = .nan
        #expect(error(try Self.file([try SafeTensor(name: "reward", float64: nan, shape: [Self.M, Self.V])])).contains("non-finite value (nan) at flat index 4"))
        #expect(error(try Self.file([try SafeTensor(name: "reward", int64: reward.map { Int64($0) }, shape: [Self.M, Self.V])])).contains("must be F64 or F32"))
        // Sizes that disagree with the keys given, or with each other.
        #expect(error(try Self.file([good]), problem: "{file: world, contexts: 4}").contains("tensor 'reward' is [3, 5]; the problem (contexts 4, vocab 5, length 1) needs [4, 5]"))
        #expect(error(try Self.file([good]), problem: "{file: world, vocab: 2}").contains("not vocab^length"))
        #expect(error(try Self.file([good, try SafeTensor(name: "reference_logits", float64: Array(logits.prefix(10)), shape: [2, Self.V])])).contains("tensor 'reference_logits' is [2, 5]"))
        #expect(error(try Self.file([good]), problem: "{file: other}").contains("names the file 'other'; the spec's files are world"))
        #expect(error(try Self.file([try SafeTensor(name: "features", float64: reward, shape: [Self.M, Self.V])])).contains("needs params.problem.context_type: features"))
        // A reward of 25 responses with vocab 5 is length 2.
        let long = try Self.file([try SafeTensor(name: "reward", float64: (0..<(3 * 25)).map { sin(Double($0)) }, shape: [3, 25])])
        #expect(error(long, problem: "{file: world, vocab: 5}") == "accepted")
        #expect(try DPO().configure(try Self.spec(long, problem: "{file: world, vocab: 5}")).training.problem.length == 2)
    }
}

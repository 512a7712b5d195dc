// DPO on preference pairs from a job file (`files:` + `data: {source: file}`, ToyLMPairsFile.swift): every malformed
// line is reported with its line number, and on a file's pairs DPO reaches the file's own optimum — the Bradley–Terry
// maximum-likelihood scores s of each context's counts, tilted into pi_ref e^{s/beta} / Z — which this test computes
// with its own solver (Hunter's MM iteration for Bradley–Terry), not with the code under test.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("DPO on pairs from a job file")
struct DPOFileTests {
    static func yaml(_ params: String, files: String = "files: {pairs: data/pairs.jsonl}") -> String {
        """
        name: dpo-file
        kind: preference
        algorithm: dpo
        seed: 5
        \(files)
        params:
        \(params)
        """
    }

    /// The spec with `data/pairs.jsonl` = `text` loaded (the digest is not checked here: no expected one).
    static func spec(_ params: String, pairs text: String) throws -> JobSpec {
        try JobSpec.parse(yaml(params), file: "dpo-file.yaml").loadingFiles(
            { _ in Array(text.utf8) }, sha256: { _ in String(repeating: "0", count: 64) })
    }

    static let problem = "  problem: {contexts: 3, vocab: 4, length: 1}"

    @Test("every malformed line is reported, with its line number")
    func malformedLines() throws {
        let text = """
            {"context": 0, "chosen": [1], "rejected": [2]}
            {"context": 0, "chosen": [1], "rejected":
            {"context": 3, "chosen": [1], "rejected": [2]}
            {"context": 1, "chosen": [4], "rejected": [2]}
            {"context": 1, "chosen": [2], "rejected": [2]}
            {"context": 1, "chosen": [2], "rejected": [3], "weight": 2}

            {"context": 2, "chosen": [1, 0], "rejected": [3]}
            [1, 2]
            {"context": 2, "chosen": [0], "rejected": [3]}
            """
        let spec = try Self.spec(Self.problem + "\n  data: {source: file, file: pairs}", pairs: text)
        let error = try #require(throws: SpecError.self) { try Workloads.catalogue.validate(spec) }
        let message = error.description
        print(message)
        #expect(error.file == "data/pairs.jsonl" && error.line == 2 && error.path == "files.pairs")
        for (line, words) in [
            (2, "not a JSON object"), (3, "'context' must be a context index from 0 to 2"),
            (4, "'chosen'[0] is 4; a token id is an integer from 0 to 3"), (5, "'chosen' and 'rejected' are the same response"),
            (6, "unknown key 'weight'"), (8, "'chosen' has 2 tokens"), (9, "each line must be a JSON object"),
        ] {
            #expect(message.contains("data/pairs.jsonl:\(line): \(words)"), "line \(line)")
        }
        #expect(!message.contains(":1:") && !message.contains(":7:") && !message.contains(":10:"))
        #expect(message.contains("7 malformed lines"))
    }

    @Test("a param naming no file, an empty file, and a file for an algorithm that takes none are errors")
    func references() throws {
        let missing = try Self.spec(Self.problem + "\n  data: {source: file, file: prefs}", pairs: "")
        let e1 = try #require(throws: SpecError.self) { try Workloads.catalogue.validate(missing) }
        #expect(e1.message.contains("names the file 'prefs'; the spec's files are pairs"))
        let empty = try Self.spec(Self.problem + "\n  data: {source: file, file: pairs}", pairs: "\n\n")
        let e2 = try #require(throws: SpecError.self) { try Workloads.catalogue.validate(empty) }
        #expect(e2.message.contains("no pairs"))
        // Parsed but never loaded (a spec read without its files): the param says so instead of training on nothing.
        let unloaded = try JobSpec.parse(Self.yaml(Self.problem + "\n  data: {source: file, file: pairs}"), file: "x.yaml")
        let e3 = try #require(throws: SpecError.self) { try Workloads.catalogue.validate(unloaded) }
        #expect(e3.message.contains("are not loaded here"))
        let batch = try Self.spec(
            Self.problem + "\n  data: {source: file, file: pairs}\n  batch_size: 3",
            pairs: "{\"context\": 0, \"chosen\": [1], \"rejected\": [2]}\n")
        let e4 = try #require(throws: SpecError.self) { try Workloads.catalogue.validate(batch) }
        #expect(e4.message.contains("more than the 1 pairs"))
    }

    /// Hunter's MM algorithm for the Bradley–Terry MLE of one context: wins[i][j] = times i was chosen over j.
    /// Returns log-strengths centred to mean 0.
    static func bradleyTerryMLE(_ wins: [[Double]]) -> [Double] {
        let K = wins.count
        var p = [Double](repeating: 1, count: K)
        for _ in 0..<20_000 {
            var next = p
            for i in 0..<K {
                let w = (0..<K).reduce(0.0) { $0 + wins[i][$1] }
                var d = 0.0
                for j in 0..<K where j != i { d += (wins[i][j] + wins[j][i]) / (p[i] + p[j]) }
                next[i] = w / d
            }
            let g = exp(next.map { log($0) }.reduce(0, +) / Double(K))
            p = next.map { $0 / g }
        }
        return p.map { log($0) }
    }

    @Test("on a file's pairs, DPO reaches the file's own optimum: pi_ref e^{s/beta} / Z with s the Bradley-Terry MLE")
    func reachesTheFileOptimum() throws {
        let M = 3, K = 4, beta = 0.5
        // Every ordered pair of every context, 1 to 4 times: a strongly connected comparison graph, so the MLE
        // exists and is unique; the counts are uneven so that it is not the uniform policy.
        var wins = [[[Double]]](repeating: [[Double]](repeating: [Double](repeating: 0, count: K), count: K), count: M)
        var lines: [String] = []
        for x in 0..<M {
            for i in 0..<K {
                for j in 0..<K where i != j {
                    let n = 1 + (x * 7 + i * 3 + j * 5 + (i > j ? 2 : 0)) % 4
                    wins[x][i][j] += Double(n)
                    for _ in 0..<n { lines.append("{\"context\": \(x), \"chosen\": [\(i)], \"rejected\": [\(j)]}") }
                }
            }
        }
        let spec = try Self.spec(
            Self.problem + """

              beta: \(beta)
              policy: {hidden: []}
              data: {source: file, file: pairs}
              steps: 1500
              learning_rate: 0.05
              log_every: 1500
            """, pairs: lines.joined(separator: "\n") + "\n")
        let (output, sink) = try ToyLMFixtures.runShard(spec)
        #expect(output != nil)
        let final = try #require(sink.checkpoints.last)
        #expect(final.step == 1500)
        let checkpoint = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(final.bytes))
        let config = try DPO().configure(spec)
        let problem = ToyLMProblem(config.training.problem)
        var policy = try ToyLMPolicy(problem: problem, model: checkpoint.model)
        try policy.evaluate()
        var worst = 0.0
        for x in 0..<M {
            let s = Self.bradleyTerryMLE(wins[x])
            // pi*(y) ∝ pi_ref(y) e^{s(y)/beta}, normalised here.
            let logits = (0..<K).map { problem.referenceLogProb[x * K + $0] + s[$0] / beta }
            let top = logits.max()!
            let z = logits.map { exp($0 - top) }.reduce(0, +)
            let target = logits.map { exp($0 - top) / z }
            var kl = 0.0
            for y in 0..<K {
                let lp = policy.logProb[x * K + y]
                kl += exp(lp) * (lp - log(target[y]))
            }
            worst = max(worst, kl)
        }
        print("DPO on a file of \(lines.count) pairs, beta \(beta), 1500 steps: worst KL(pi || pi_file*) over contexts = \(worst)")
        // The bound of the population check (WORKLOADS.md §3 P1: KL < 1e-4); what remains is optimisation error.
        #expect(worst < 1e-4)
        // The file's optimum is not the problem's own Gibbs policy (its counts are not the annotator's): the summary's
        // distance to that one stays large, so the check above could not pass by reaching the wrong optimum.
        #expect(try #require(output?.summary["kl_to_optimum"]?.doubleValue) > 1e-2)
    }

    @Test("hinge on consistent pairs (one ranking per context) drives the loss to 0: every pair's margin is at least 1")
    func hingeReachesEveryMargin() throws {
        let M = 3, K = 5, beta = 0.5
        // Context x ranks response y by (3y + x) mod 5 (higher wins); every ordered pair that agrees is in the file
        // once, so the labels are noiseless and consistent: the hinge loss can reach 0, and reaches it exactly when
        // beta (u(y_w) - u(y_l)) >= 1 on every pair.
        func rank(_ x: Int, _ y: Int) -> Int { (3 * y + x) % K }
        var lines: [String] = [], pairs: [(Int, Int, Int)] = []
        for x in 0..<M {
            for i in 0..<K {
                for j in 0..<K where rank(x, i) > rank(x, j) {
                    lines.append("{\"context\": \(x), \"chosen\": [\(i)], \"rejected\": [\(j)]}")
                    pairs.append((x, i, j))
                }
            }
        }
        let spec = try Self.spec(
            "  problem: {contexts: \(M), vocab: \(K), length: 1}" + """

              loss: hinge
              beta: \(beta)
              policy: {hidden: []}
              data: {source: file, file: pairs}
              steps: 1000
              learning_rate: 0.05
              log_every: 1000
            """, pairs: lines.joined(separator: "\n"))
        let (_, sink) = try ToyLMFixtures.runShard(spec)
        let checkpoint = try TrainingCheckpoint<Double>(file: SafeTensorsFile.parse(try #require(sink.checkpoints.last).bytes))
        let problem = ToyLMProblem(try DPO().configure(spec).training.problem)
        var policy = try ToyLMPolicy(problem: problem, model: checkpoint.model)
        try policy.evaluate()
        func u(_ x: Int, _ y: Int) -> Double { policy.logProb[x * K + y] - problem.referenceLogProb[x * K + y] }
        let margins = pairs.map { beta * (u($0.0, $0.1) - u($0.0, $0.2)) }
        print("hinge on \(pairs.count) consistent pairs, 1000 steps: smallest margin \(margins.min()!), final loss \(sink.last("loss")!)")
        #expect(margins.min()! >= 1)
        #expect(sink.last("loss") == 0)
        // The share of pairs with a positive margin, a sum of 30 weights of 1/30: 1 up to that sum's rounding.
        #expect(try #require(sink.last("rewards/accuracies")) > 1 - 1e-12)
    }
}

// `tessera-bench parity export DIR`: the inputs of the diffusers parity run (issue 4, WORKLOADS.md §6
// "Sampling parity"). Writes DIR/parity_inputs.safetensors with the 8-mode ring, Tessera's x_T for samples
// 0..<N (Philox stream 0, exactly what a sampling shard starts from), the per-step noise of every stochastic case
// (Philox stream 1, step k + 1, as a shard draws it) and Tessera's own outputs. ops/parity/diffusers_parity.py feeds
// the same x_T and noise to diffusers' schedulers and writes the fixture the Swift test compares against.

import ArgumentParser
import Foundation
import TesseraCompute
import TesseraWorkloads

struct Parity: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parity",
        abstract: "Cross-implementation parity with diffusers (inputs for ops/parity/diffusers_parity.py).",
        subcommands: [ParityExport.self]
    )
}

/// The parity cases: (name, sampler, S). Changing them means regenerating the fixture (docs/sampling.md).
enum ParityCases {
    static let seed: UInt64 = 7
    static let samples = 32
    static let cases: [(name: String, sampler: SamplerKind, steps: Int)] = [
        ("ddim_eta0_s50", .ddim(eta: 0), 50),
        ("ddim_eta0_s10", .ddim(eta: 0), 10),
        ("ddim_eta0.5_s50", .ddim(eta: 0.5), 50),
        ("ddim_eta1_s20", .ddim(eta: 1), 20),
        ("ddpm_s50", .ddpm, 50),
        ("ddpm_s100", .ddpm, 100),
    ]

    static func ring() throws -> GaussianMixture {
        try GaussianMixture(
            weights: nil,
            means: [
                [2, 0], [1.414, 1.414], [0, 2], [-1.414, 1.414], [-2, 0], [-1.414, -1.414], [0, -2], [1.414, -1.414],
            ],
            stds: [Double](repeating: 0.2, count: 8))
    }
}

struct ParityExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write DIR/parity_inputs.safetensors (x_T, step noise, Tessera's outputs).")

    @Argument(help: "Output directory (created if missing).") var dir: String

    func run() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let target = try ParityCases.ring()
        let schedule = try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 1000)
        let n = ParityCases.samples, d = target.dimension, K = target.componentCount
        var tensors: [SafeTensor] = [
            try SafeTensor(name: "target.weights", float64: target.weights, shape: [K]),
            try SafeTensor(name: "target.means", float64: target.means.flatMap { $0 }, shape: [K, d]),
            try SafeTensor(name: "target.stds", float64: target.stds, shape: [K]),
        ]
        var cases: [String] = []
        var xT: [Double] = []
        for (name, sampler, steps) in ParityCases.cases {
            let config = try SamplingConfig(
                target: target, schedule: schedule, sampler: sampler, samplingSteps: steps, seed: ParityCases.seed,
                samples: n)
            xT = samplingInitialNoise(config: config, firstIndex: 0, count: n)
            // Step noise of reverse step k for sample i: Philox(seed; i, k + 1, stream 1), as the engine draws it.
            var noise = [Double](repeating: 0, count: steps * n * d)
            for k in 0..<steps {
                for i in 0..<n {
                    var s = PhiloxStream(seed: ParityCases.seed, index: UInt32(i), step: UInt32(k + 1), stream: .stepNoise)
                    let z = s.normals(d)
                    for c in 0..<d { noise[(k * n + i) * d + c] = z[c] }
                }
            }
            var out = xT
            runSamplingChain(config: config, x: &out, firstIndex: 0)
            let stochastic: Bool
            switch sampler {
            case .ddim(let eta):
                stochastic = eta > 0
                cases.append("{\"name\":\"\(name)\",\"scheduler\":\"ddim\",\"eta\":\(eta),\"steps\":\(steps)}")
            case .ddpm:
                stochastic = true
                cases.append("{\"name\":\"\(name)\",\"scheduler\":\"ddpm\",\"steps\":\(steps)}")
            }
            if stochastic { tensors.append(try SafeTensor(name: "noise.\(name)", float64: noise, shape: [steps, n, d])) }
            tensors.append(try SafeTensor(name: "tessera.\(name)", float64: out, shape: [n, d]))
            tensors.append(
                try SafeTensor(
                    name: "tessera.timesteps.\(name)", int64: samplingTimesteps(config: config).map { Int64($0) },
                    shape: [steps]))
        }
        tensors.append(try SafeTensor(name: "x_T", float64: xT, shape: [n, d]))
        let file = SafeTensorsFile(
            tensors: tensors,
            metadata: [
                "format": "tessera.parity.inputs/1", "seed": String(ParityCases.seed), "samples": String(n),
                "beta_start": "0.0001", "beta_end": "0.02", "train_steps": "1000",
                "cases": "[" + cases.joined(separator: ",") + "]",
            ])
        let path = (dir as NSString).appendingPathComponent("parity_inputs.safetensors")
        try file.write(toPath: path)
        print("wrote \(path): \(n) samples, \(ParityCases.cases.count) cases")
    }
}

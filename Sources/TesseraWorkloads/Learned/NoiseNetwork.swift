// The learned noise predictor of WORKLOADS.md §1 S2: eps_theta(x, t) = MLP([x, temb(t)]), SiLU, with the sinusoidal
// time embedding temb(t) = [sin(t w_j), cos(t w_j)], w_j = 10000^(-j/(D/2)), D = 32 by default, t the integer
// schedule index 0..<T. The sampler calls it through `SamplingNoiseModel` in place of the exact eps*.

import TesseraCompute
import TesseraCore

/// A noise predictor the sampler can use instead of the exact eps*(x, t) of the target (S2).
/// Not `Sendable`: an instance keeps scratch buffers, so each compute thread uses its own.
public protocol SamplingNoiseModel {
    /// Writes eps(x_j, t) for the `count` rows of `x` (row-major [count, d], d the target's dimension) into `eps`
    /// (same layout). `t` is the schedule index 0..<T of the step.
    func predictNoise(_ x: UnsafePointer<Double>, count: Int, t: Int, into eps: UnsafeMutablePointer<Double>)
}

/// The shape of the S2 network: input [x (d), temb(t) (D)], hidden widths, output d.
public struct DenoiserArchitecture: Sendable, Equatable {
    /// d, the data dimension.
    public var dimension: Int
    /// Hidden layer widths, e.g. [128, 128, 128].
    public var hidden: [Int]
    /// D, the sinusoidal time-embedding width (even).
    public var timeEmbedding: Int

    public init(dimension: Int, hidden: [Int], timeEmbedding: Int) {
        self.dimension = dimension
        self.hidden = hidden
        self.timeEmbedding = timeEmbedding
    }

    /// MLP sizes: [d + D, hidden..., d].
    public var sizes: [Int] { [dimension + timeEmbedding] + hidden + [dimension] }
    public var inputSize: Int { dimension + timeEmbedding }

    /// temb(t) for t = 0..<T as Float rows [T, D] (computed in Double by `Tensor.timeEmbedding`, then rounded).
    func embeddingTable(timesteps: Int) -> [Float] {
        try! Tensor<Float>.timeEmbedding((0..<timesteps).map(Double.init), dimension: timeEmbedding).scalars
    }
}

/// eps_theta as a `SamplingNoiseModel`: inference-mode forward passes in chunks, float32 inside, Double outside.
public final class NetworkNoiseModel: SamplingNoiseModel {
    public let network: MLP<Float>
    public let architecture: DenoiserArchitecture
    public let timesteps: Int
    let table: [Float]
    let chunk: Int
    var workspace: MLPWorkspace<Float>
    var input: [Float]

    /// `timesteps` = T of the schedule the network was trained on (t must be < T).
    public init(network: MLP<Float>, architecture: DenoiserArchitecture, timesteps: Int, chunk: Int = 2048) throws {
        guard network.sizes == architecture.sizes, network.activation == .silu else {
            throw ShardError(
                "noise network has sizes \(network.sizes) / \(network.activation.rawValue); expected \(architecture.sizes) / silu")
        }
        guard architecture.timeEmbedding > 0, architecture.timeEmbedding % 2 == 0, timesteps >= 1, chunk >= 1 else {
            throw ShardError("noise network: time embedding \(architecture.timeEmbedding), T \(timesteps)")
        }
        self.network = network
        self.architecture = architecture
        self.timesteps = timesteps
        self.chunk = chunk
        self.table = architecture.embeddingTable(timesteps: timesteps)
        self.workspace = network.makeWorkspace(batchCapacity: chunk)
        self.input = [Float](repeating: 0, count: chunk * architecture.inputSize)
    }

    public func predictNoise(_ x: UnsafePointer<Double>, count: Int, t: Int, into eps: UnsafeMutablePointer<Double>) {
        precondition(t >= 0 && t < timesteps, "timestep \(t) outside the network's schedule 0..<\(timesteps)")
        let d = architecture.dimension
        let D = architecture.timeEmbedding
        let width = d + D
        var start = 0
        while start < count {
            let m = min(chunk, count - start)
            input.withUnsafeMutableBufferPointer { inp in
                table.withUnsafeBufferPointer { tab in
                    let temb = tab.baseAddress! + t * D
                    for j in 0..<m {
                        let row = inp.baseAddress! + j * width
                        let xs = x + (start + j) * d
                        for c in 0..<d { row[c] = Float(xs[c]) }
                        (row + d).update(from: temb, count: D)
                    }
                }
            }
            input.withUnsafeBufferPointer { inp in
                try! network.forward(
                    UnsafeBufferPointer(rebasing: inp[0..<(m * width)]), batch: m, workspace: &workspace,
                    training: false)
            }
            workspace.withOutput { out in
                let dest = eps + start * d
                for i in 0..<(m * d) { dest[i] = Double(out[i]) }
            }
            start += m
        }
    }
}

// Every algorithm this build knows, for workers (what they can run) and the coordinator (plan and merge).
// Adding an algorithm: implement `TypedAlgorithm` (TesseraCore/TypedAlgorithm.swift, docs/extending.md) and list it
// here.

import TesseraCore

public enum Workloads {
    public static let catalogue = AlgorithmCatalogue([
        // kind: sampling
        DiffusionSampling(.ddpm),
        DiffusionSampling(.ddim),
        DenoiserTraining(),
        LangevinSampling(),
        SMCSampling(),
        // kind: rl (RL/)
        RLOO(),
        GRPO(),
        PPO(),
        FIND(),
        ImplicitDiffusion(),
        DDPO(),
        QRDQN(),
        C51(),
        // kind: preference (Preference/)
        DPO(),
        WRPO(),
        FDPG(),
        RewardModel(),
        D2O(),
        IterativeDPO(),
        SimPO(),
        KTO(),
        // Every kind: the benchmark / test shard (Noop.swift).
        Noop(kind: .sampling),
        Noop(kind: .rl),
        Noop(kind: .preference),
    ])
}

// tessera-bench: measurements, not tests. One subcommand per area, one file each; add new ones to `subcommands`.
import ArgumentParser

@main
struct TesseraBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera-bench",
        abstract: "Benchmarks for the Tessera runtime (figures for docs/performance.md, never pass/fail).",
        subcommands: [
            ComputeBench.self, Interop.self, SamplingBench.self, Parity.self, DispatchBench.self, CheckpointBench.self,
            SweepBench.self,
        ]
    )
}

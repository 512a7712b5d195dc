// swift-tools-version:6.1
// Tessera: a distributed experiment runner for generative-model research.
// Module layout follows ../shared/design/STYLE.md §2: C libraries sit behind thin `.systemLibrary` targets that only
// their Swift wrappers import; the compute runtime has no ZeroMQ or PostgreSQL in it; executables pick implementations.
import Foundation
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

#if arch(x86_64)
let avx512Settings: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "skylake-avx512", "-O"])]
let avx2Settings: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell", "-O"])]
#else
let avx512Settings: [SwiftSetting] = []
let avx2Settings: [SwiftSetting] = []
#endif
// The compute runtime and the algorithms are optimised in debug builds too, like the kernels: at -Onone their loops
// (Philox, data generation, samplers, the MLP's glue around the kernels) are unspecialised, unoptimised Swift, which
// every test and example that trains or samples pays for. Optimisation does not change a result: Swift neither contracts a*b+c into an fma nor
// reorders floating-point sums without being asked, and the recorded-digest tests check the bits.
let optimisedSettings: [SwiftSetting] = [.unsafeFlags(["-O"])]

let package = Package(
    name: "tessera",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tessera", targets: ["tessera"]),
        .executable(name: "tessera-bench", targets: ["tessera-bench"]),
        .library(name: "TesseraCompute", targets: ["TesseraCompute"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Instrumentation API (counters, gauges, histograms) in the coordinator; exported by the HTTP service.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The HTTP service (JSON API, /metrics, dashboard) on --http.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
    ],
    targets: [
        // C system libraries: one-line shims, imported only by their wrappers.
        .systemLibrary(name: "CZeroMQ", path: "Sources/CZeroMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CLibPQ", path: "Sources/CLibPQ", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", providers: [.apt(["libopenblas-dev"])]),

        // Thin Swift wrappers over the C libraries.
        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"], swiftSettings: swiftSettings),
        .target(name: "LibPQ", dependencies: ["CLibPQ"], swiftSettings: swiftSettings),

        // Compute runtime: tensors on OpenBLAS, MLPs, Adam, Philox, safetensors. No ZeroMQ, no PostgreSQL.
        .target(
            name: "TesseraCompute",
            dependencies: ["COpenBLAS", "TesseraKernels", "TesseraAVX512", "TesseraAVX2", "TesseraJSON"],
            swiftSettings: swiftSettings + optimisedSettings
        ),
        // Inlinable SIMD kernels (exp, SiLU), compiled by each module that calls them for that module's target.
        .target(name: "TesseraKernels", swiftSettings: swiftSettings),
        // Tessera's AVX-512 gemm and activation passes, compiled for that ISA only and entered only after
        // TesseraCompute checked the CPU. Always optimised: the debug build would otherwise run every MLP in the tests
        // 50x slower.
        .target(name: "TesseraAVX512", dependencies: ["TesseraKernels"], swiftSettings: swiftSettings + avx512Settings),
        // The same gemm and passes for AVX2 + FMA CPUs without AVX-512 (`-target-cpu haswell`), entered only after
        // the same check; always optimised, like TesseraAVX512.
        .target(name: "TesseraAVX2", dependencies: ["TesseraKernels"], swiftSettings: swiftSettings + avx2Settings),

        // Tessera's one JSON codec: JSONValue (exact doubles and integers, ordered objects), a strict mode for
        // safetensors headers, and the Codable bridge. A leaf: the standard library only.
        .target(name: "TesseraJSON", swiftSettings: swiftSettings),
        // Leaf types, job specs, the algorithm plug-in protocol (re-exports TesseraJSON). Pure Swift.
        .target(
            name: "TesseraCore",
            dependencies: ["TesseraModel", "TesseraJSON", .product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        // The shared vocabulary (ShardRef, MetricPoint, BlobKind): a leaf every other layer may import.
        .target(name: "TesseraModel", swiftSettings: swiftSettings),
        // Wire protocol v1 (protocol/SPEC.md): messages and codec. Pure Swift.
        .target(name: "TesseraProtocol", dependencies: ["TesseraModel"], swiftSettings: swiftSettings),
        // The algorithm catalogue: plan / run / merge for every job kind.
        .target(
            name: "TesseraWorkloads", dependencies: ["TesseraCore", "TesseraCompute"],
            swiftSettings: swiftSettings + optimisedSettings
        ),
        // PostgreSQL job store and migrator.
        .target(
            name: "TesseraStore",
            dependencies: ["TesseraCore", "TesseraModel", "LibPQ", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // The coordinator's decisions as a pure state machine (no sockets, no database, no clock reads).
        .target(name: "TesseraCoordinatorCore", dependencies: ["TesseraModel", "TesseraProtocol"], swiftSettings: swiftSettings),
        .target(
            name: "TesseraCoordinator",
            dependencies: [
                "TesseraCore", "TesseraProtocol", "TesseraStore", "TesseraWorkloads", "ZeroMQ", "TesseraCoordinatorCore",
                "TesseraModel", "LibPQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The coordinator's HTTP service: read-only JSON API, Prometheus /metrics and the dashboard (Hummingbird).
        .target(
            name: "TesseraHTTP",
            dependencies: [
                "TesseraCoordinator", "TesseraCore", "TesseraModel", "TesseraProtocol", "TesseraJSON", "TesseraCoordinatorCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The worker's protocol rules as a pure state machine (no sockets, no threads, no clock reads).
        .target(name: "TesseraWorkerCore", dependencies: ["TesseraModel", "TesseraProtocol"], swiftSettings: swiftSettings),
        .target(
            name: "TesseraWorker",
            dependencies: [
                "TesseraCore", "TesseraProtocol", "TesseraWorkloads", "TesseraCompute", "ZeroMQ", "TesseraWorkerCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "tessera",
            dependencies: [
                "TesseraCore", "TesseraProtocol", "TesseraStore", "TesseraWorkloads", "TesseraCoordinator",
                "TesseraWorker", "TesseraCompute", "ZeroMQ", "LibPQ", "TesseraHTTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "tessera-bench",
            dependencies: [
                "TesseraCompute", "TesseraWorkloads", "TesseraCore", "TesseraProtocol", "ZeroMQ", "TesseraWorkerCore",
                "TesseraModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),

        // Test support: only test targets may depend on it.
        .target(name: "TesseraTesting", dependencies: ["LibPQ", "TesseraStore", "TesseraModel"], swiftSettings: swiftSettings),

        .testTarget(
            name: "TesseraComputeTests", dependencies: ["TesseraCompute", "TesseraKernels", "TesseraAVX512", "TesseraAVX2"],
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "TesseraJSONTests", dependencies: ["TesseraJSON"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraCoreTests", dependencies: ["TesseraCore", "TesseraWorkloads"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraProtocolTests", dependencies: ["TesseraProtocol"], swiftSettings: swiftSettings),
        .testTarget(
            name: "TesseraCoordinatorCoreTests",
            dependencies: ["TesseraCoordinatorCore", "TesseraModel", "TesseraProtocol", "TesseraWorkerCore", "TesseraTesting"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "TesseraWorkerCoreTests", dependencies: ["TesseraWorkerCore", "TesseraModel", "TesseraProtocol"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "TesseraWorkerTests",
            dependencies: ["TesseraWorker", "TesseraWorkerCore", "TesseraModel", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "TesseraCLITests",
            dependencies: ["tessera", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings),
        .testTarget(name: "ZeroMQTests", dependencies: ["ZeroMQ"], swiftSettings: swiftSettings),
        .testTarget(name: "LibPQTests", dependencies: ["LibPQ", "CLibPQ", "TesseraTesting"], swiftSettings: swiftSettings),
        .testTarget(
            name: "TesseraStoreTests",
            dependencies: ["TesseraStore", "TesseraTesting", "TesseraCore", "TesseraModel", "TesseraCoordinatorCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TesseraWorkloadsTests",
            dependencies: ["TesseraWorkloads", "TesseraCompute", "TesseraCore", .product(name: "Crypto", package: "swift-crypto")],
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["TesseraTesting", "TesseraCore", "TesseraCompute", "LibPQ", "ZeroMQ", "TesseraProtocol"],
            swiftSettings: swiftSettings
        ),
    ]
)

// ops/test's second pass on the portable kernels (TESSERA_PORTABLE_KERNELS_BUILD=1, in .build-portable, with
// -DTESSERA_PORTABLE_KERNELS) runs only the compute and workload tests. The package is cut down to what those two
// test targets need, so the pass does not compile the rest a second time (the HTTP service's swift-nio stack alone
// took minutes).
if ProcessInfo.processInfo.environment["TESSERA_PORTABLE_KERNELS_BUILD"] == "1" {
    var keep: Set<String> = []
    var pending = ["TesseraComputeTests", "TesseraWorkloadsTests"]
    while let name = pending.popLast() {
        guard keep.insert(name).inserted, let target = package.targets.first(where: { $0.name == name }) else { continue }
        for dependency in target.dependencies {
            switch dependency {
            case .targetItem(let n, _), .byNameItem(let n, _): pending.append(n)
            default: break
            }
        }
    }
    package.targets = package.targets.filter { keep.contains($0.name) }
    package.products = package.products.filter { $0.name == "TesseraCompute" }
    let unused = ["hummingbird", "swift-prometheus", "swift-metrics", "swift-argument-parser", "swift-service-lifecycle"]
    package.dependencies = package.dependencies.filter { d in
        guard case .sourceControl(_, let location, _) = d.kind else { return true }
        return !unused.contains { location.hasSuffix("/" + $0) }
    }
}

// Daemon subcommands: migrate, coordinator, worker, keygen.

import ArgumentParser
import Dispatch
import Foundation
import ServiceLifecycle
import UnixSignals
import LibPQ
import Logging
import TesseraCompute
import TesseraCoordinator
import TesseraCore
import TesseraStore
import TesseraWorker
import TesseraWorkloads

struct DatabaseOptions: ParsableArguments {
    @Option(name: .long, help: "libpq conninfo or postgres:// URL (default: $TESSERA_DATABASE_URL).")
    var databaseURL: String?

    func url() throws -> String {
        guard let u = databaseURL ?? Env.get("TESSERA_DATABASE_URL") else {
            throw CLIError("no database: pass --database-url URL or set TESSERA_DATABASE_URL")
        }
        return u
    }
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring the database schema up to date (or down to a version).",
        discussion: "Migrations are the numbered SQL files of migrations/, built into the executable; each runs in its own transaction."
    )
    @OptionGroup var db: DatabaseOptions
    @Option(help: "Directory of NNNN_name.up.sql/.down.sql files (default: the migrations built into this executable).")
    var dir: String?
    @Option(help: "Migrate down to this version (0 removes everything).") var down: Int?
    @Flag(help: "Only print the current and latest versions.") var status = false

    func run() throws {
        try runCLI {
            let migrator = try dir.map { try Migrator(directory: $0) } ?? Migrator.builtIn()
            let directory = migrator.directory
            let conn = try PGConnection(try db.url())
            defer { conn.close() }
            let current = try migrator.currentVersion(conn)
            if status {
                printOut("schema version \(current), latest \(migrator.latestVersion) (\(directory))")
                return
            }
            if let down {
                let done = try migrator.migrateDown(conn, to: down)
                for m in done { printOut("reverted \(m.fileStem)") }
            } else {
                let done = try migrator.migrateUp(conn)
                for m in done { printOut("applied \(m.fileStem)") }
            }
            printOut("schema version \(try migrator.currentVersion(conn))")
        }
    }
}

/// Loopback-only unless keys are configured (ARCHITECTURE.md §Processes).
func checkBindIsSafe(_ endpoint: String, keysDir: String?) throws {
    let lower = endpoint.lowercased()
    if lower.hasPrefix("ipc://") || lower.hasPrefix("inproc://") { return }
    guard lower.hasPrefix("tcp://") else { throw CLIError("unsupported endpoint \(endpoint): use tcp://HOST:PORT") }
    let hostPort = String(lower.dropFirst(6))
    let host: String
    if hostPort.hasPrefix("[") {
        host = String(hostPort.dropFirst().prefix { $0 != "]" })
    } else {
        host = String(hostPort.prefix { $0 != ":" })
    }
    let loopback = host == "localhost" || host.hasPrefix("127.") || host == "::1"
    if loopback { return }
    if keysDir == nil {
        throw CLIError(
            "refusing to serve unauthenticated peers on \(endpoint): without keys the coordinator binds only to "
                + "loopback (tcp://127.0.0.1:PORT). Authenticated binds need CURVE keys (--keys-dir), which this "
                + "version does not support yet; reach a loopback coordinator through an SSH tunnel (deploy/README.md)."
        )
    }
    throw CLIError(
        "--keys-dir is given, but CURVE authentication is not built into this version yet; bind to loopback "
            + "(tcp://127.0.0.1:PORT) and reach it through an SSH tunnel or a private network namespace"
    )
}

struct CoordinatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run the coordinator: scheduler, ZeroMQ ROUTER, PostgreSQL writes, checkpoint store.",
        discussion: "SIGTERM or Ctrl-C: stop accepting, finish writes, exit 0. Workers keep their shards and re-register with the next coordinator."
    )
    @OptionGroup var db: DatabaseOptions
    @Option(help: "ZeroMQ endpoint to bind (default: $TESSERA_COORDINATOR or tcp://127.0.0.1:5555).") var bind: String?
    @Option(help: "HOST:PORT for the HTTP status endpoint (default: $TESSERA_HTTP; not served by this version).") var http: String?
    @Option(help: "Checkpoint store directory (default: $TESSERA_DATA_DIR or ./tessera-data).") var dataDir: String?
    @Option(help: "CURVE keys directory (default: $TESSERA_KEYS_DIR).") var keysDir: String?
    @Option(help: "Heartbeat interval in seconds.") var heartbeat: Double = 1.0
    @Option(help: "Missed heartbeats before a worker is declared lost.") var liveness: Int = 3
    @Option(help: "Write the bound endpoint to this file once listening (useful with --bind tcp://127.0.0.1:*).")
    var endpointFile: String?
    @OptionGroup var log: LogOptions

    func run() async throws {
        try await runCLI {
            let logger = log.bootstrap(label: "tessera.coordinator")
            let endpoint = bind ?? Env.get("TESSERA_COORDINATOR") ?? "tcp://127.0.0.1:5555"
            try checkBindIsSafe(endpoint, keysDir: keysDir ?? Env.get("TESSERA_KEYS_DIR"))
            if let h = http ?? Env.get("TESSERA_HTTP") {
                logger.warning("the HTTP status endpoint is not served by this version", metadata: ["http": "\(h)"])
            }
            var config = CoordinatorConfiguration(
                bind: endpoint, databaseURL: try db.url(),
                dataDir: dataDir ?? Env.get("TESSERA_DATA_DIR") ?? "tessera-data"
            )
            config.heartbeatInterval = heartbeat
            config.liveness = liveness
            config.endpointFile = endpointFile
            let coordinator = Coordinator(config: config, catalogue: Workloads.catalogue, logger: logger)
            // SIGTERM / SIGINT: graceful shutdown through the ServiceGroup (finish the batch being committed, tell
            // the workers, exit 0).
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: [.init(service: coordinator)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        }
    }
}

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a worker daemon with N compute slots.",
        discussion: "SIGTERM or Ctrl-C: drain (take no new shards, let running ones finish for --drain-timeout seconds, hand back the rest), exit 0."
    )
    @Option(help: "Coordinator endpoint (default: $TESSERA_COORDINATOR or tcp://127.0.0.1:5555).") var coordinator: String?
    @Option(help: "Compute slots (shards run at once).") var slots: Int = 1
    @Option(help: "Worker name (default: HOST-PID).") var name: String?
    @Option(help: "CURVE keys directory (default: $TESSERA_KEYS_DIR).") var keysDir: String?
    @Option(help: "OpenBLAS threads per slot.") var blasThreads: Int = 1
    @Option(
        help: ArgumentHelp(
            "Float gemm: auto or openblas (default: $TESSERA_GEMM or auto).",
            discussion: "auto runs Tessera's own AVX-512 kernels on CPUs that have AVX-512 (same bits on every such host), OpenBLAS elsewhere; openblas forces OpenBLAS and the portable kernels. Workers of one job should agree (docs/operations.md)."))
    var gemm: String?
    @Option(help: "Seconds running shards may take to finish on SIGTERM.") var drainTimeout: Double = 30
    @Option(help: "Heartbeat interval in seconds.") var heartbeat: Double = 1.0
    @OptionGroup var log: LogOptions

    func validate() throws {
        guard (1...256).contains(slots) else { throw ValidationError("--slots must be between 1 and 256") }
        guard (1...64).contains(blasThreads) else { throw ValidationError("--blas-threads must be between 1 and 64") }
        _ = try gemmChoice()
    }

    /// --gemm, else TESSERA_GEMM, else auto; anything else is an error naming where it came from.
    func gemmChoice() throws -> GemmChoice {
        let (value, source) = gemm.map { ($0, "--gemm") } ?? Env.get("TESSERA_GEMM").map { ($0, "TESSERA_GEMM") } ?? ("auto", "")
        guard let choice = GemmChoice(rawValue: value.lowercased()) else {
            throw ValidationError("\(source) must be auto or openblas, not '\(value)'")
        }
        return choice
    }

    func run() async throws {
        try await runCLI {
            let logger = log.bootstrap(label: "tessera.worker")
            if keysDir ?? Env.get("TESSERA_KEYS_DIR") != nil {
                throw CLIError("CURVE authentication is not built into this version yet; connect over loopback without --keys-dir")
            }
            let host = ProcessInfo.processInfo.hostName
            var config = WorkerConfiguration(
                coordinator: coordinator ?? Env.get("TESSERA_COORDINATOR") ?? "tcp://127.0.0.1:5555", slots: slots,
                name: name ?? "\(host)-\(getpid())", host: host
            )
            config.blasThreads = blasThreads
            config.gemm = try gemmChoice()
            config.drainTimeout = drainTimeout
            config.heartbeatInterval = heartbeat
            let worker = try WorkerDaemon(config: config, catalogue: Workloads.catalogue, logger: logger)
            // SIGTERM / SIGINT: drain (graceful shutdown); if that outlasts the drain timeout plus the time to send
            // the last messages, the group cancels and the worker stops at once.
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: [.init(service: worker)], gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger).withMaximumShutdown(seconds: drainTimeout + 15))
            try await group.run()
        }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create CURVE key pairs for authenticated, encrypted ZeroMQ (not available in this version)."
    )
    @Option(help: "Directory to write keys into.") var keysDir: String?

    func run() throws {
        try runCLI {
            throw CLIError("CURVE keys are not supported by this version yet; run coordinator and workers over loopback or a private network")
        }
    }
}

extension ServiceGroupConfiguration {
    func withMaximumShutdown(seconds: Double) -> ServiceGroupConfiguration {
        var c = self
        c.maximumGracefulShutdownDuration = .milliseconds(Int64(seconds * 1000))
        return c
    }
}
